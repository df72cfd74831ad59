"""Protein–protein network enrichment: more edges inside a gene set than its genes' degrees explain?

Statistic: the number of STRING edges with both ends in a unit's gene set S (never "any edge counts"),
for all units at once as row sums of (M A) ∘ M / 2.

Null (default, `method="moments"`): degree-matched label permutation. Background genes fall into degree
classes (degrees within a factor `degree_ratio` = 1.25, at least `min_bin_genes` = 5 genes per class,
genes without edges apart); a null set draws, from every class, as many distinct genes as S has there.
This conditions on S's degree profile and, through the class × class edge counts, on degree
correlations (rich club). The null mean and variance of the edge count are exact and closed-form
(falling-factorial inclusion probabilities × edge / two-path / edge-pair counts per class, see
`_BinNull`), and p is the upper tail of the negative binomial with that mean and variance, or of the
Poisson when the null is not overdispersed (often, for hub-rich sets: a moment-matched binomial there
gave 1.1% of ∝ degree² sets p < 0.001): continuous, so it reaches the p < 1e-6 that BH over 10⁴
units needs, which a Monte Carlo null cannot. `method="permutation"` runs the same null by Monte Carlo
(p = (1 + #null ≥ observed) / (1 + R), R = `n_permutations`, seeded); `method="chung_lu"` is the
configuration-model null (Σ over pairs of min(1, d_i d_j / 2E), Poisson tail), kept for comparison.

Why: top genes lean towards hubs, so the null must hold for sets chosen by degree. Chung–Lu + Poisson
does not (edge counts are overdispersed and hubs form a rich club), nor do coarse degree classes (sets
pick the highest-degree genes of a class: 16 equal-size classes gave 94% of ∝ degree sets p < 0.05 on
the biobtree subset). Calibration (random sets drawn uniformly, ∝ degree, ∝ degree² on the demo's
STRING snapshot, the STRING v12 subset in ../shared/data and a synthetic rich-club graph) and power on
planted modules are measured by benchmarks/bench_network_calibration.py; figures in
benchmarks/RESULTS.md (moments: fraction p < 0.05 ≤ 0.051 and p < 0.001 ≤ 0.001 in every setting;
Chung–Lu reaches 0.38).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats

METHODS = ("moments", "permutation", "chung_lu")
_DEFAULTS: dict[str, Any] = {
    "method": "moments",
    "degree_ratio": 1.25,  # degrees within this factor share a class (the moments cost classes³ per unit)
    "min_bin_genes": 5,  # a smaller class would leave too few genes to permute
    "n_permutations": 1000,  # method="permutation" only
}
_PRODUCT_BUDGET = 20_000_000  # non-zeros of one (members @ adjacency) block
_PAIR_BUDGET = 4_000_000  # (unit, class pair) or (permutation, gene pair) entries in one block


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
    nothing is expected), p_value (one-sided, more edges than expected).
    Options: method ("moments" | "permutation" | "chung_lu"), degree_ratio, min_bin_genes (the
    degree classes), n_permutations (method "permutation"); `seed` only matters for "permutation".
    """
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    settings = {**_DEFAULTS, **options}
    if settings["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {settings['method']!r}")
    if settings["degree_ratio"] < 1 or settings["min_bin_genes"] < 1:
        raise ValueError("degree_ratio must be at least 1 and min_bin_genes at least 1")
    indicator = _indicator(members, network.n_genes)
    size = np.diff(indicator.indptr)
    units = np.flatnonzero(size >= 2)
    indicator = indicator[units]
    observed = _observed_edges(network.adjacency, indicator)

    if settings["method"] == "chung_lu":
        expected = _chung_lu_expected(network, indicator)
        p_value = np.where(observed > 0, stats.poisson.sf(observed - 1, expected), 1.0)
    else:
        bins = degree_bins(network.degree, settings["degree_ratio"], settings["min_bin_genes"])
        null = _BinNull(network.adjacency, bins)
        counts = _bin_counts(indicator, bins, null.n_bins)
        expected, variance = null.moments(counts)
        if settings["method"] == "moments":
            p_value = _moment_matched_sf(observed, expected, variance)
        else:
            p_value = _permutation_p(network, indicator, bins, observed, settings["n_permutations"], seed)

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(expected > 0, observed / expected, np.nan)
    return pl.DataFrame(
        {
            "unit": units.astype(np.int64),
            "set_size": size[units].astype(np.int64),
            "observed_edges": observed.astype(np.int64),
            "expected_edges": expected.astype(np.float64),
            "ratio": ratio,
            "p_value": np.clip(p_value, 0.0, 1.0).astype(np.float64),
        },
        schema={
            "unit": pl.Int64,
            "set_size": pl.Int64,
            "observed_edges": pl.Int64,
            "expected_edges": pl.Float64,
            "ratio": pl.Float64,
            "p_value": pl.Float64,
        },
    ).with_columns(pl.col("ratio").fill_nan(None))


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
