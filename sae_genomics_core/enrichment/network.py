"""Protein–protein network enrichment: more edges inside a gene set than its genes' degrees explain?

Statistic: the number of STRING edges with both ends in a unit's gene set S (never "any edge counts"),
for all units at once as row sums of (M A) ∘ M / 2.

Null: degree-matched label permutation. Background genes fall into degree classes (degrees within a
factor `degree_ratio` = 1.25, at least `min_bin_genes` = 5 genes per class, genes without edges apart);
a null set draws, from every class, as many distinct genes as S has there. This conditions on S's degree
profile and, through the class × class edge counts, on degree correlations (rich club).

p-value (default, `method="adaptive"`): the null mean and variance of the edge count are exact and
closed-form (falling-factorial inclusion probabilities × edge / two-path / edge-pair counts per class,
see `_BinNull`); the upper tail of the negative binomial with that mean and variance (Poisson when not
overdispersed) is the p-value of every set where it is at least `refine_below` (0.05). That tail matches
a Monte Carlo of the null down to p ≈ 0.01 but is too small further out (12 observed edges: 3.3e-7 vs
6.7e-6 by 600k draws), so every set with a tail below `refine_below` gets a sequential Monte Carlo
p-value of the same null instead (Besag & Clifford 1991): null sets are drawn until `min_exceedances`
(h = 20) of them have at least the observed edges, p = h / draws, or until `max_permutations`
(R = 100,000) draws, p = (1 + exceedances) / (1 + R). That p-value is exact (P(p ≤ α) ≤ α for every α),
and a reported p falls below `refine_below` only through it, so P(p ≤ α) ≤ α for every α < refine_below,
down to the floor 1 / (R + 1) ≈ 1e-5; a set whose draws hit the cap may have a smaller true p still.
Draws are seeded per (seed, unit), so a set's p-value does not depend on the other sets; the draws are
compiled with numba (a set's classes get a local adjacency bitmap), ~1–3 million null sets a second. `p_value_method` says which p each set got ("moments" or
"monte_carlo"), `null_draws` how many null sets were drawn for it.

Other methods: `"moments"` (the tail alone, fast, too small below 0.01; for comparison),
`"permutation"` (the same null by a fixed number of draws `n_permutations` for every set, numpy) and
`"chung_lu"` (configuration-model null: Σ over pairs of min(1, d_i d_j / 2E), Poisson tail).

Why: top genes lean towards hubs, so the null must hold for sets chosen by degree. Chung–Lu + Poisson
does not (edge counts are overdispersed and hubs form a rich club), nor do coarse degree classes (sets
pick the highest-degree genes of a class: 16 equal-size classes gave 94% of ∝ degree sets p < 0.05 on
the biobtree subset). Calibration (random sets drawn uniformly, ∝ degree, ∝ degree² on STRING extracts
and a synthetic rich-club graph; the far tail against large Monte Carlo runs) and power on planted
modules are measured by benchmarks/bench_network_calibration.py; figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numba
import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats

METHODS = ("adaptive", "moments", "permutation", "chung_lu")
MAX_PERMUTATIONS = 100_000  # the sequential Monte Carlo's cap: its p-values reach down to 1 / (cap + 1)
_DEFAULTS: dict[str, Any] = {
    "method": "adaptive",
    "degree_ratio": 1.25,  # degrees within this factor share a class (the moments cost classes³ per unit)
    "min_bin_genes": 5,  # a smaller class would leave too few genes to permute
    "n_permutations": 1000,  # method="permutation" only
    # method="adaptive": tails below this get a sequential Monte Carlo p (the tail is valid above ~0.01)
    "refine_below": 0.05,
    "max_permutations": MAX_PERMUTATIONS,
    "min_exceedances": 20,  # its stop: p = h / draws once h null sets reach the observed count (±22%)
}
_PRODUCT_BUDGET = 20_000_000  # non-zeros of one (members @ adjacency) block
_PAIR_BUDGET = 4_000_000  # (unit, class pair) or (permutation, gene pair) entries in one block
_LOCAL_BITS = 1 << 30  # a set's classes get their own adjacency bitmap up to this many bits (128 MiB)
RESULT_SCHEMA = pl.Schema(
    {
        "unit": pl.Int64,
        "set_size": pl.Int64,
        "observed_edges": pl.Int64,
        "expected_edges": pl.Float64,
        "ratio": pl.Float64,
        "p_value": pl.Float64,
        "p_value_method": pl.String,
        "null_draws": pl.Int64,
    }
)


@dataclass(frozen=True, eq=False)  # eq=False: a sparse matrix has no truth value to compare by
class Network:
    """An undirected simple graph over background genes 0..n_genes-1 (symmetric 0/1, no self loops)."""

    n_genes: int
    adjacency: sp.csr_matrix

    def __post_init__(self) -> None:
        if self.adjacency.shape != (self.n_genes, self.n_genes):
            raise ValueError(
                f"adjacency is {self.adjacency.shape}, expected ({self.n_genes}, {self.n_genes})"
            )

    @cached_property
    def degree(self) -> np.ndarray:
        return np.diff(self.adjacency.indptr).astype(np.int64)

    @property
    def n_edges(self) -> int:
        return int(self.adjacency.nnz // 2)

    @classmethod
    def from_edges(cls, n_genes: int, left: np.ndarray, right: np.ndarray) -> Network:
        """Undirected edges left[i]–right[i]: A–B and B–A (and repeats) collapse, self loops are dropped."""
        left, right = np.asarray(left, dtype=np.int64).ravel(), np.asarray(right, dtype=np.int64).ravel()
        if left.shape != right.shape:
            raise ValueError("left and right must have the same length")
        if left.size and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n_genes):
            raise ValueError(f"edge endpoints must lie in 0..{n_genes - 1}")
        keep = left != right
        low, high = np.minimum(left[keep], right[keep]), np.maximum(left[keep], right[keep])
        keys = np.unique(low * n_genes + high)
        low, high = keys // n_genes, keys % n_genes
        rows, cols = np.concatenate([low, high]), np.concatenate([high, low])
        adjacency = sp.csr_matrix(
            (np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n_genes, n_genes)
        )
        adjacency.sort_indices()
        return cls(n_genes, adjacency)


def network_enrichment(
    network: Network, members: sp.csr_matrix, *, seed: int = 0, **options: Any
) -> pl.DataFrame:
    """Edges inside each unit's gene set against the degree-matched null (see the module docstring).

    members: units × n_genes indicator matrix. Returns one row per unit with ≥ 2 genes: unit (row
    index), set_size, observed_edges, expected_edges (null mean), ratio (observed / expected; null when
    nothing is expected), p_value (one-sided, more edges than expected), p_value_method ("moments",
    "monte_carlo", "permutation" or "chung_lu") and null_draws (null sets drawn for that p; 0 for a tail).
    Options: method ("adaptive" | "moments" | "permutation" | "chung_lu"), degree_ratio, min_bin_genes
    (the degree classes), n_permutations ("permutation"), refine_below, max_permutations,
    min_exceedances ("adaptive"); `seed` seeds the Monte Carlo draws.
    """
    settings = _settings(options)
    indicator = _indicator(members, network.n_genes)
    size = np.diff(indicator.indptr)
    units = np.flatnonzero(size >= 2)
    indicator = indicator[units]
    observed = _observed_edges(network.adjacency, indicator)
    if settings["method"] == "chung_lu":
        null = _chung_lu_null(network, indicator, observed)
    else:
        null = _degree_class_null(network, indicator, units, observed, settings, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(null.expected > 0, observed / null.expected, np.nan)
    return pl.DataFrame(
        {
            "unit": units.astype(np.int64),
            "set_size": size[units].astype(np.int64),
            "observed_edges": observed.astype(np.int64),
            "expected_edges": null.expected.astype(np.float64),
            "ratio": ratio,
            "p_value": np.clip(null.p_value, 0.0, 1.0).astype(np.float64),
            "p_value_method": null.method.astype(str).tolist(),
            "null_draws": null.draws,
        },
        schema=RESULT_SCHEMA,
    ).with_columns(pl.col("ratio").fill_nan(None))


@dataclass(frozen=True)
class _UnitNull:
    """Per unit: the null's expected edge count, the p-value, how it was computed and the null sets drawn."""

    expected: np.ndarray
    p_value: np.ndarray
    method: np.ndarray  # object array of method names: the adaptive refinement overwrites some
    draws: np.ndarray


def _chung_lu_null(network: Network, indicator: sp.csr_matrix, observed: np.ndarray) -> _UnitNull:
    expected = _chung_lu_expected(network, indicator)
    p_value = np.where(observed > 0, stats.poisson.sf(observed - 1, expected), 1.0)
    n_units = indicator.shape[0]
    return _UnitNull(
        expected, p_value, np.full(n_units, "chung_lu", dtype=object), np.zeros(n_units, dtype=np.int64)
    )


def _degree_class_null(
    network: Network,
    indicator: sp.csr_matrix,
    units: np.ndarray,
    observed: np.ndarray,
    settings: dict[str, Any],
    seed: int,
) -> _UnitNull:
    """The degree-class null: its exact mean, and p by permutation or the moment-matched tail (the
    "adaptive" method redoes the small tails by sequential Monte Carlo)."""
    bins = degree_bins(network.degree, settings["degree_ratio"], settings["min_bin_genes"])
    null = _BinNull(network.adjacency, bins)
    expected, variance = null.moments(_bin_counts(indicator, bins, null.n_bins))
    if settings["method"] == "permutation":
        n_permutations = settings["n_permutations"]
        return _UnitNull(
            expected,
            _permutation_p(network, indicator, bins, observed, n_permutations, seed),
            np.full(units.size, "permutation", dtype=object),
            np.full(units.size, n_permutations, dtype=np.int64),
        )
    result = _UnitNull(
        expected,
        _moment_matched_sf(observed, expected, variance),
        np.full(units.size, "moments", dtype=object),
        np.zeros(units.size, dtype=np.int64),
    )
    if settings["method"] == "adaptive":
        refine = np.flatnonzero(result.p_value < settings["refine_below"])
        result.p_value[refine], result.draws[refine] = _sequential_p(
            network,
            indicator[refine],
            bins,
            observed[refine],
            seeds=[(seed, int(u)) for u in units[refine]],
            cap=settings["max_permutations"],
            stop=settings["min_exceedances"],
        )
        result.method[refine] = "monte_carlo"
    return result


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    settings = {**_DEFAULTS, **options}
    if settings["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {settings['method']!r}")
    if settings["degree_ratio"] < 1 or settings["min_bin_genes"] < 1:
        raise ValueError("degree_ratio must be at least 1 and min_bin_genes at least 1")
    if settings["max_permutations"] < 1 or settings["min_exceedances"] < 1:
        raise ValueError("max_permutations and min_exceedances must be at least 1")
    if not 0 <= settings["refine_below"] <= 1:
        raise ValueError("refine_below must lie in [0, 1] (0: the moment tail alone)")
    return settings


def degree_bins(degree: np.ndarray, ratio: float = 1.25, min_bin_genes: int = 5) -> np.ndarray:
    """Degree class per gene: 0 for genes without edges, then 1, 2, … by ascending degree. A class spans
    degrees within a factor `ratio` of its lowest, and grows past that until it holds min_bin_genes
    genes (the top class, if still smaller, joins the one below); equal degrees always share a class."""
    degree = np.asarray(degree)
    bins = np.zeros(degree.size, dtype=np.int64)
    linked = degree > 0
    if not linked.any():
        return bins
    values, counts = np.unique(degree[linked], return_counts=True)
    label = np.zeros(values.size, dtype=np.int64)
    current, lowest, members = 0, values[0], 0
    for i, (value, count) in enumerate(zip(values, counts, strict=True)):
        if members >= min_bin_genes and value > lowest * ratio:
            current, lowest, members = current + 1, value, 0
        label[i], members = current, members + count
    if current and members < min_bin_genes:
        label[label == current] = current - 1
    bins[linked] = 1 + label[np.searchsorted(values, degree[linked])]
    return bins


def _indicator(members: sp.spmatrix, n_genes: int) -> sp.csr_matrix:
    """members as a clean 0/1 int32 CSR (explicit zeros dropped, repeats merged)."""
    matrix = sp.csr_matrix(members, copy=True)
    if matrix.shape[1] != n_genes:
        raise ValueError(f"members has {matrix.shape[1]} gene columns, the network {n_genes} genes")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.data = np.ones(matrix.nnz, dtype=np.int32)
    matrix.sort_indices()
    return matrix


def _row_blocks(weight: np.ndarray, budget: float) -> list[slice]:
    """Consecutive row ranges whose weights sum to about `budget` (at least one row each)."""
    ends = np.searchsorted(
        np.cumsum(weight, dtype=np.float64), np.arange(1, 1 + weight.sum() // budget) * budget
    )
    bounds = np.unique(np.concatenate([[0], ends + 1, [weight.size]]).clip(0, weight.size))
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _observed_edges(adjacency: sp.csr_matrix, indicator: sp.csr_matrix) -> np.ndarray:
    """Edges inside each set, all units at once: row sums of (M A) ∘ M, halved (each edge seen twice)."""
    degree = np.diff(adjacency.indptr)
    out = np.zeros(indicator.shape[0], dtype=np.int64)
    for block in _row_blocks(indicator @ degree + 1, _PRODUCT_BUDGET):
        rows = indicator[block]
        out[block] = np.asarray((rows @ adjacency).multiply(rows).sum(axis=1)).ravel() // 2
    return out


def _bin_counts(indicator: sp.csr_matrix, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """units × bins: how many of each unit's genes fall in each degree class."""
    to_bin = sp.csr_matrix((np.ones(bins.size), (np.arange(bins.size), bins)), shape=(bins.size, n_bins))
    return (indicator @ to_bin).toarray()


class _BinNull:
    """Exact mean and variance of the edge count of a set drawn uniformly within degree classes.

    With s_v the indicator of gene v in the null set, O = ½ Σ A_uv s_u s_v. Any k distinct genes of a
    class of n genes, c of them drawn, are all drawn with probability r(k) = (c)_k / (n)_k (falling
    factorials; classes independent), so E[O] and E[O²] are graph counts per class combination —
    edges K, two-paths T, pairs of edges — times products of r. Pairs of disjoint edges whose classes
    do not meet are independent and drop out of the variance; for the rest, drawing a pair first just
    leaves one gene fewer to draw (and to draw from) in its classes, which turns every sum into matrix
    products over classes: O(classes³) per unit, checked against full enumeration in the tests.
    """

    def __init__(self, adjacency: sp.csr_matrix, bins: np.ndarray) -> None:
        n_bins = int(bins.max()) + 1
        self.n_bins = n_bins
        self.sizes = np.bincount(bins, minlength=n_bins).astype(np.float64)
        to_bin = sp.csr_matrix((np.ones(bins.size), (np.arange(bins.size), bins)), shape=(bins.size, n_bins))
        per_gene = np.asarray((adjacency @ to_bin).todense())  # genes × classes: neighbours of v per class
        self.pairs = np.asarray(to_bin.T @ per_gene)  # K[i, j]: ordered (u, v) edge ends, u in i, v in j
        order = np.argsort(bins, kind="stable")
        starts = np.searchsorted(bins[order], np.arange(n_bins + 1))
        # T[a, i, j]: ordered two-paths u–v–w, centre v in class a, ends u ≠ w in classes i, j
        paths = np.stack(
            [per_gene[order[a:b]].T @ per_gene[order[a:b]] for a, b in itertools.pairwise(starts)]
        )
        idx = np.arange(n_bins)
        paths[:, idx, idx] -= self.pairs
        self.paths_flat = paths.reshape(n_bins, n_bins * n_bins)
        self.path_ends_equal = paths[:, idx, idx]  # T[a, i, i]
        self.path_end_at_centre = paths[idx, idx, :]  # T[a, a, i]

    def _drawn(self, c: np.ndarray, shift: int, k: int) -> np.ndarray:
        """(c − shift)_k / (n − shift)_k per unit and class: k more genes all drawn, `shift` already taken."""
        out = np.ones_like(c)
        for t in range(shift, shift + k):
            denominator = self.sizes - t
            with np.errstate(divide="ignore", invalid="ignore"):
                out = out * np.where(denominator > 0, np.clip(c - t, 0, None) / denominator, 0.0)
        return out

    def moments(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Null mean and variance of the edge count for each row of class counts (units × classes)."""
        n = self.n_bins
        mean, variance = np.zeros(counts.shape[0]), np.zeros(counts.shape[0])
        K, kd = self.pairs, np.diag(self.pairs)
        t_diag = self.path_ends_equal
        t_aaa = np.diag(self.path_end_at_centre)
        for block in _row_blocks(np.full(counts.shape[0], n * n), _PAIR_BUDGET):
            c = counts[block]
            r1, r2, r4 = self._drawn(c, 0, 1), self._drawn(c, 0, 2), self._drawn(c, 0, 4)
            w = r1 @ K
            mu = 0.5 * ((r1 * w).sum(1) - (r1 * r1) @ kd + r2 @ kd)
            # pairs of identical edges counted in the "all pairs" sum below: −½ Σ K_ij P(i, i, j, j)
            identical = -0.5 * (((r2 @ K) * r2).sum(1) - (r2 * r2) @ kd + r4 @ kd)
            # two-paths centred in class a: Σ_a r1_a S¹_a − r2_a S²_a with
            # S^s_a = Σ_ij T[a,i,j] P(i, j drawn | s genes of a already drawn)
            q = ((r1[:, :, None] * r1[:, None, :]).reshape(c.shape[0], n * n)) @ self.paths_flat.T
            h = r1 @ self.path_end_at_centre.T
            base = q - (r1 * r1) @ t_diag.T + r2 @ t_diag.T
            two_paths = np.zeros(c.shape[0])
            shifted = {}
            for s, weight in ((1, r1), (2, -r2)):
                d1, d2 = self._drawn(c, s, 1) - r1, self._drawn(c, s, 2) - r2
                shifted[s] = (d1, d2)
                two_paths += (weight * (base + 2 * d1 * (h - t_aaa * r1) + t_aaa * d2)).sum(1)
            # pairs of edges that share classes: ¼ Σ_ij K_ij P(i, j) (f'_ij − f), f = 2 E[O], f'_ij with
            # i and j already drawn once each (twice from i when i = j)
            free = w - kd * r1
            (d1, d2), (e1, e2) = shifted[1], shifted[2]
            g1, g2 = 2 * d1 * free + kd * d2, 2 * e1 * free + kd * e2
            x = r1 * d1
            overlap = 0.25 * (
                2 * (r1 * g1 * free).sum(1)
                + 2 * (((x @ (K * K)) * x).sum(1) - (x * x) @ (kd * kd))
                + (kd * r2 * g2).sum(1)
            )
            mean[block] = mu
            variance[block] = mu + identical + two_paths + overlap
        return mean, np.maximum(variance, 0.0)


def _moment_matched_sf(observed: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """P(X ≥ observed) for a negative binomial with this mean and variance (Poisson if not overdispersed)."""
    p = np.ones(observed.size)
    test = observed > 0
    over = test & (variance > mean * (1 + 1e-9)) & (mean > 0)
    size = mean[over] ** 2 / (variance[over] - mean[over])
    p[over] = stats.nbinom.sf(observed[over] - 1, size, mean[over] / variance[over])
    poisson = test & ~over
    p[poisson] = stats.poisson.sf(observed[poisson] - 1, mean[poisson])
    return p


def _chung_lu_expected(network: Network, indicator: sp.csr_matrix) -> np.ndarray:
    """Σ over gene pairs in the set of min(1, d_i d_j / 2E): (Σd)² − Σd² over 4E, less the excess of
    the capped pairs (d_i d_j > 2E; at most 2E of them, all among the high-degree genes)."""
    degree = network.degree.astype(np.float64)
    two_e = max(degree.sum(), 1.0)
    s1, s2 = indicator @ degree, indicator @ (degree * degree)
    expected = (s1 * s1 - s2) / (2 * two_e)
    order = np.argsort(degree, kind="stable")
    with np.errstate(divide="ignore"):
        first = np.searchsorted(degree[order], two_e / degree, side="right")  # partners j: d_j > 2E / d_i
    n_partners = degree.size - first
    rows = np.repeat(np.arange(degree.size), n_partners)
    cols = order[np.arange(rows.size) - np.repeat(np.cumsum(n_partners) - n_partners - first, n_partners)]
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    if rows.size:
        excess = sp.csr_matrix(
            (degree[rows] * degree[cols] / two_e - 1, (rows, cols)), shape=(degree.size, degree.size)
        )
        expected -= np.asarray((indicator @ excess).multiply(indicator).sum(axis=1)).ravel() / 2
    return expected


class _EdgeLookup:
    """Vectorised "is u–v an edge": a bitmap of the adjacency up to 32,768 genes (128 MiB), else a
    binary search over the sorted edge keys."""

    def __init__(self, adjacency: sp.csr_matrix) -> None:
        self.n = adjacency.shape[0]
        coo = adjacency.tocoo()
        keys = coo.row.astype(np.int64) * self.n + coo.col
        self.bits: np.ndarray | None = None
        self.keys = np.zeros(0, dtype=np.int64)
        if self.n * self.n <= 2**30:
            self.bits = np.zeros((self.n * self.n + 7) // 8, dtype=np.uint8)
            np.bitwise_or.at(self.bits, keys >> 3, (1 << (keys & 7)).astype(np.uint8))
        else:
            self.keys = np.sort(keys)

    def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        keys = left.astype(np.int64) * self.n + right
        if self.bits is not None:
            return ((self.bits[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1).astype(bool)
        if self.keys.size == 0:  # no edges at all
            return np.zeros(keys.shape, dtype=bool)
        return self.keys[np.searchsorted(self.keys, keys).clip(max=self.keys.size - 1)] == keys


def _within_row_pairs(indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b), a < b, of positions a, b in the same CSR row, grouped by row length."""
    sizes = np.diff(indptr)
    left, right = [], []
    for size in np.unique(sizes[sizes >= 2]):
        a, b = np.triu_indices(size, 1)
        starts = indptr[:-1][sizes == size][:, None]
        left.append((starts + a).ravel())
        right.append((starts + b).ravel())
    if not left:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    left_all, right_all = np.concatenate(left), np.concatenate(right)
    order = np.argsort(left_all, kind="stable")  # row order, so pair → unit stays sorted
    return left_all[order], right_all[order]


def _permutation_p(
    network: Network,
    indicator: sp.csr_matrix,
    bins: np.ndarray,
    observed: np.ndarray,
    n_permutations: int,
    seed: int,
) -> np.ndarray:
    """Monte Carlo version of the degree-class null: each gene of a set is replaced by a gene drawn
    uniformly from its class (distinct within the set); p = (1 + #null ≥ observed) / (1 + R)."""
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    rng = np.random.default_rng(seed)
    lookup = _EdgeLookup(network.adjacency)
    order = np.argsort(bins, kind="stable")
    starts = np.searchsorted(bins[order], np.arange(int(bins.max()) + 2))
    size = np.diff(indicator.indptr)
    exceed = np.zeros(indicator.shape[0], dtype=np.int64)
    for block in _row_blocks(size * (size - 1) // 2, _PAIR_BUDGET):
        rows = indicator[block]
        slot_unit = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        low = starts[bins[rows.indices]]
        width = starts[bins[rows.indices] + 1] - low
        left, right = _within_row_pairs(rows.indptr)
        to_unit = sp.csr_matrix(
            (np.ones(left.size), (np.arange(left.size), slot_unit[left])), shape=(left.size, rows.shape[0])
        )
        per_round = max(1, _PAIR_BUDGET // max(left.size, slot_unit.size, 1))
        for done in range(0, n_permutations, per_round):
            rounds = min(per_round, n_permutations - done)
            draw = order[low + (rng.random((rounds, low.size)) * width).astype(np.int64)]
            # genes drawn twice for one set are drawn again until the set's genes are distinct
            while True:
                keys = slot_unit * network.n_genes + draw
                sorter = np.argsort(keys, axis=1, kind="stable")
                repeat = np.diff(np.take_along_axis(keys, sorter, axis=1), axis=1) == 0
                if not repeat.any():
                    break
                r, c = np.nonzero(repeat)
                slot = sorter[r, c + 1]
                draw[r, slot] = order[low[slot] + (rng.random(slot.size) * width[slot]).astype(np.int64)]
            edges = lookup(draw[:, left], draw[:, right]).astype(np.float64)
            null = (to_unit.T @ edges.T).T  # rounds × units
            exceed[block] += (null >= observed[block]).sum(axis=0)
    return (1 + exceed) / (1 + n_permutations)


def _sequential_p(
    network: Network,
    indicator: sp.csr_matrix,
    bins: np.ndarray,
    observed: np.ndarray,
    *,
    seeds: list[tuple[int, int]],
    cap: int,
    stop: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Besag–Clifford sequential Monte Carlo p-values of the degree-class null, and the draws each took.

    Null sets are drawn (each gene of the set replaced by a distinct gene of its class) until `stop` of
    them have at least the observed edges, p = stop / draws, or until `cap` draws, p = (1 + hits) / (1 +
    cap). Both are exact p-values: P(p ≤ α) ≤ α under the null for every α. Each unit draws from its own
    generator, seeded by (seed, unit), so its p does not depend on the other units.
    """
    if indicator.shape[0] == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    order = np.argsort(bins, kind="stable")
    starts = np.searchsorted(bins[order], np.arange(int(bins.max()) + 2)).astype(np.int64)
    slot_unit = np.repeat(np.arange(indicator.shape[0]), np.diff(indicator.indptr))
    slot_class = bins[indicator.indices]
    slot_class = slot_class[np.lexsort((slot_class, slot_unit))]  # a set's genes grouped by class
    slot_class = slot_class.astype(np.int64)
    starts, order = starts.astype(np.int64), order.astype(np.int64)
    indptr, indices = network.adjacency.indptr.astype(np.int64), network.adjacency.indices.astype(np.int64)
    hits, draws = np.zeros(len(seeds), dtype=np.int64), np.zeros(len(seeds), dtype=np.int64)
    scratch = threading.local()  # per thread: gene → local id (-1 elsewhere), reset after each unit

    def run(u: int) -> None:
        if not hasattr(scratch, "local"):
            scratch.local = np.full(network.n_genes, -1, dtype=np.int64)
        rng = np.random.default_rng(list(seeds[u]))
        classes = slot_class[indicator.indptr[u] : indicator.indptr[u + 1]]
        hits[u], draws[u] = _sequential_unit(
            classes,
            starts,
            order,
            indptr,
            indices,
            scratch.local,
            int(observed[u]),
            rng,
            stop,
            cap,
            _LOCAL_BITS,
        )

    # units are independent and the compiled draws release the GIL: one thread per available core
    with ThreadPoolExecutor(max_workers=min(_cores(), len(seeds))) as pool:
        list(pool.map(run, range(len(seeds))))
    p_value = np.where(hits >= stop, stop / np.maximum(draws, 1), (1 + hits) / (1 + draws))
    return p_value, draws


def _cores() -> int:
    """Cores this process may use (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@numba.njit(cache=True, nogil=True)
def _sequential_unit(classes, starts, order, indptr, indices, local, target, rng, stop, cap, local_bits):
    """One unit: its classes' genes get local ids 0..size-1 and, where it fits, a local adjacency bitmap
    (cache-resident, unlike the whole graph's); then draw until `stop` hits or `cap` draws."""
    k = classes.size
    offset, width, run = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
    size = 0
    for i in range(k):
        width[i] = starts[classes[i] + 1] - starts[classes[i]]
        if i > 0 and classes[i - 1] == classes[i]:
            offset[i], run[i] = offset[i - 1], run[i - 1]
        else:
            offset[i], run[i] = size, i
            size += width[i]
    genes = np.empty(size, np.int64)
    for i in range(k):
        if run[i] == i:
            genes[offset[i] : offset[i] + width[i]] = order[starts[classes[i]] : starts[classes[i] + 1]]
    local[genes] = np.arange(size)
    use_bits = size * size <= local_bits
    bits = np.zeros((size * size + 7) // 8 if use_bits else 1, np.uint8)
    degree = np.zeros(size, np.int64)  # neighbours among the local genes: bounds what a draw can reach
    for x in range(size):
        for e in range(indptr[genes[x]], indptr[genes[x] + 1]):
            y = local[indices[e]]
            if y >= 0:
                degree[x] += 1
                if use_bits:
                    bits[(x * size + y) >> 3] |= np.uint8(1 << ((x * size + y) & 7))
    drawn, reach, mark = np.zeros(k, np.int64), np.zeros(k + 1, np.int64), np.zeros(size, np.int64)
    hit, r = 0, 0
    while r < cap and hit < stop:
        r += 1
        _draw(drawn, offset, width, run, rng)
        if use_bits:
            count = _count_bits(drawn, bits, size, degree, reach, target)
        else:
            count = _count_lists(drawn, genes, local, indptr, indices, mark, r)
        hit += count >= target
    local[genes] = -1
    return hit, r


@numba.njit(cache=True)
def _draw(drawn, offset, width, run, rng):
    """Each slot a uniform gene of its class, distinct within the class (repeats are redrawn)."""
    for i in range(drawn.size):
        while True:
            x = offset[i] + np.int64(rng.random() * width[i])
            fresh = True
            for j in range(run[i], i):
                if drawn[j] == x:
                    fresh = False
                    break
            if fresh:
                break
        drawn[i] = x


@numba.njit(cache=True)
def _count_bits(drawn, bits, size, degree, reach, target):
    """Edges among the drawn genes, stopping once the answer to "≥ target?" is known: rows go from the
    highest class down, and the genes left can add at most min(pairs, ½ Σ min(degree, k − 1)) more."""
    k = drawn.size
    for i in range(k):
        reach[i + 1] = reach[i] + min(degree[drawn[i]], k - 1)
    count = 0
    for i in range(k - 1, 0, -1):
        base = drawn[i] * size
        for j in range(i):
            key = base + drawn[j]
            count += (bits[key >> 3] >> (key & 7)) & 1
        if count >= target or count + min(i * (i - 1) // 2, reach[i] // 2) < target:
            break
    return count


@numba.njit(cache=True)
def _count_lists(drawn, genes, local, indptr, indices, mark, stamp):
    """Edges among the drawn genes by their neighbour lists (classes too large for a bitmap)."""
    for i in range(drawn.size):
        mark[drawn[i]] = stamp
    count = 0
    for i in range(drawn.size):
        g = genes[drawn[i]]
        for e in range(indptr[g], indptr[g + 1]):
            y = local[indices[e]]
            if y >= 0 and mark[y] == stamp:
                count += 1
    return count // 2
