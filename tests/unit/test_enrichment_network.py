"""STRING-style network enrichment: edge counting, the degree-class null's exact moments, calibration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from scipy import stats

from sae_genomics_core.enrichment import network as network_module
from sae_genomics_core.enrichment.network import (
    MAX_PERMUTATIONS,
    RESULT_SCHEMA,
    Network,
    _bin_counts,
    _BinNull,
    _moment_matched_sf,
    degree_bins,
    network_enrichment,
)


def _members(sets: list[np.ndarray], n_genes: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]) if sets else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(len(sets), n_genes))


def _heterogeneous_graph(n: int, m: int, seed: int, clique: np.ndarray | None = None) -> Network:
    """Power-law degree weights, 20 communities (70% of edges inside one), a few dense complexes."""
    rng = np.random.default_rng(seed)
    weight = np.minimum((1 - rng.random(n)) ** (-1 / 1.3), 3 * np.sqrt(n))
    community = rng.integers(0, 20, n)
    left, right = [], []
    inside = int(0.7 * m)
    for c in range(20):
        genes = np.flatnonzero(community == c)
        p = weight[genes] / weight[genes].sum()
        k = inside // 20
        left.append(rng.choice(genes, k, p=p))
        right.append(rng.choice(genes, k, p=p))
    p = weight / weight.sum()
    left.append(rng.choice(n, m - inside, p=p))
    right.append(rng.choice(n, m - inside, p=p))
    for _ in range(8):  # complexes: clustering beyond what degrees explain
        genes = rng.choice(n, int(rng.integers(6, 25)), replace=False)
        i, j = np.triu_indices(genes.size, 1)
        keep = rng.random(i.size) < 0.7
        left.append(genes[i[keep]])
        right.append(genes[j[keep]])
    if clique is not None:
        i, j = np.triu_indices(clique.size, 1)
        left.append(clique[i])
        right.append(clique[j])
    return Network.from_edges(n, np.concatenate(left), np.concatenate(right))


def test_from_edges_collapses_duplicates_drops_self_loops_and_validates() -> None:
    network = Network.from_edges(5, np.array([0, 1, 1, 2, 3, 3]), np.array([1, 0, 0, 2, 4, 2]))
    dense = network.adjacency.toarray()
    assert network.n_edges == 3  # 0–1 (three times), 3–4, 3–2; 2–2 dropped
    assert (dense == dense.T).all() and set(np.unique(dense)) == {0, 1} and not dense.diagonal().any()
    assert network.degree.tolist() == [1, 1, 1, 2, 1]
    with pytest.raises(ValueError, match=r"0\.\.4"):
        Network.from_edges(5, np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        Network.from_edges(5, np.array([-1]), np.array([2]))
    with pytest.raises(ValueError, match="same length"):
        Network.from_edges(5, np.array([0, 1]), np.array([2]))
    with pytest.raises(ValueError, match="adjacency"):
        Network(4, network.adjacency)


def test_observed_edges_equal_a_brute_force_count() -> None:
    rng = np.random.default_rng(1)
    n = 60
    network = Network.from_edges(n, rng.integers(0, n, 300), rng.integers(0, n, 300))
    dense = network.adjacency.toarray()
    sets = [rng.choice(n, int(rng.integers(2, 16)), replace=False) for _ in range(40)]
    result = network_enrichment(network, _members(sets, n))
    brute = [sum(dense[a, b] for a, b in itertools.combinations(s, 2)) for s in sets]
    assert result["observed_edges"].to_list() == brute
    assert result["unit"].to_list() == list(range(40))
    assert result["set_size"].to_list() == [len(s) for s in sets]


def test_chung_lu_expected_edges_equal_the_capped_pair_sum() -> None:
    rng = np.random.default_rng(2)
    n = 80
    # two hubs, so that d_i d_j / 2E exceeds 1 for some pairs and the cap matters
    left = np.concatenate([rng.integers(0, n, 150), np.zeros(60, int), np.ones(50, int)])
    right = np.concatenate([rng.integers(0, n, 150), rng.integers(2, n, 60), rng.integers(2, n, 50)])
    network = Network.from_edges(n, left, right)
    d, two_e = network.degree.astype(float), 2.0 * network.n_edges
    assert d[0] * d[1] / two_e > 1
    sets = [np.array([0, 1, *rng.choice(np.arange(2, n), 8, replace=False)])] + [
        rng.choice(n, 12, replace=False) for _ in range(20)
    ]
    result = network_enrichment(network, _members(sets, n), method="chung_lu")
    brute = [sum(min(1.0, d[a] * d[b] / two_e) for a, b in itertools.combinations(s, 2)) for s in sets]
    np.testing.assert_allclose(result["expected_edges"].to_numpy(), brute, rtol=1e-12)


def test_degree_class_null_moments_equal_full_enumeration() -> None:
    """Mean and variance of the edge count over every set with the unit's genes-per-class counts."""
    rng = np.random.default_rng(3)
    for _ in range(12):
        n = int(rng.integers(10, 14))
        network = Network.from_edges(n, rng.integers(0, n, 35), rng.integers(0, n, 35))
        bins = degree_bins(network.degree, 1.5, 3)
        dense = network.adjacency.toarray()
        unit = rng.choice(n, int(rng.integers(3, 7)), replace=False)
        null = _BinNull(network.adjacency, bins)
        counts = _bin_counts(_members([unit], n).astype(np.int32), bins, null.n_bins)
        mean, variance = null.moments(counts)
        per_class = [
            list(itertools.combinations(np.flatnonzero(bins == b), int(counts[0, b])))
            for b in range(null.n_bins)
        ]
        every_set = (
            np.concatenate([np.array(c, dtype=int) for c in combo]) for combo in itertools.product(*per_class)
        )
        edges = np.array([dense[np.ix_(s, s)].sum() / 2 for s in every_set])
        np.testing.assert_allclose([mean[0], variance[0]], [edges.mean(), edges.var()], rtol=1e-9, atol=1e-12)
        expected = network_enrichment(network, _members([unit], n), degree_ratio=1.5, min_bin_genes=3)
        assert expected["expected_edges"].item() == pytest.approx(edges.mean(), rel=1e-9, abs=1e-12)


def test_degree_bins_keep_ties_together_and_respect_ratio_and_size() -> None:
    rng = np.random.default_rng(4)
    # two lone hubs on top: too few for a class of their own, they must join the class below
    degree = np.concatenate([np.zeros(30, int), rng.zipf(1.8, 2000).clip(1, 5000), [20_000, 30_000]])
    bins = degree_bins(degree, ratio=1.25, min_bin_genes=5)
    assert (bins[degree == 0] == 0).all() and (bins[degree > 0] > 0).all()
    for value in np.unique(degree):
        assert np.unique(bins[degree == value]).size == 1
    sizes = np.bincount(bins)[1:]
    assert (sizes >= 5).all()
    # classes are ordered by degree; a class spanning more than the ratio only did so to reach 5 genes
    lows = [degree[bins == b].min() for b in range(1, bins.max() + 1)]
    assert lows == sorted(lows)
    for b in range(1, bins.max() + 1):
        d = np.sort(degree[bins == b])
        if d[-1] > 1.25 * d[0]:
            assert (d <= 1.25 * d[0]).sum() < 5 or b == bins.max()


def test_tail_is_the_moment_matched_negative_binomial_or_poisson() -> None:
    observed = np.array([0, 8, 7, 7, 12])
    mean = np.array([2.0, 2.0, 2.5, 2.5, 4.0])
    variance = np.array([5.0, 5.0, 6.0, 2.0, 4.0])  # over-, over-, over-, under-dispersed, Poisson
    p = _moment_matched_sf(observed, mean, variance)
    assert p[0] == 1.0
    for i in (1, 2):
        size = mean[i] ** 2 / (variance[i] - mean[i])
        assert p[i] == pytest.approx(stats.nbinom.sf(observed[i] - 1, size, mean[i] / variance[i]), rel=1e-12)
        assert p[i] > stats.poisson.sf(observed[i] - 1, mean[i])  # overdispersion widens the far tail
    # not overdispersed: Poisson, which is conservative there (a binomial tail was not, far out)
    np.testing.assert_allclose(p[3:], stats.poisson.sf(observed[3:] - 1, mean[3:]), rtol=1e-12)


def test_planted_clique_is_highly_significant() -> None:
    clique = np.arange(100, 115)
    network = _heterogeneous_graph(1500, 9000, seed=5, clique=clique)
    rng = np.random.default_rng(5)
    sets = [clique, rng.choice(1500, 20, replace=False)]
    result = network_enrichment(network, _members(sets, 1500))
    row = result.row(0, named=True)
    # beyond the Monte Carlo's reach: every draw falls short, p sits at its floor 1 / (cap + 1)
    assert row["observed_edges"] >= 105 and row["ratio"] > 1
    assert row["p_value"] == pytest.approx(1 / (1 + MAX_PERMUTATIONS))
    assert (row["p_value_method"], row["null_draws"]) == ("monte_carlo", MAX_PERMUTATIONS)
    assert network_enrichment(network, _members(sets, 1500), method="moments")["p_value"][0] < 1e-6
    permutation = network_enrichment(network, _members(sets, 1500), method="permutation", n_permutations=200)
    assert permutation["p_value"][0] == pytest.approx(1 / 201)
    assert permutation["expected_edges"].to_list() == result["expected_edges"].to_list()


def test_random_sets_are_calibrated_on_a_heterogeneous_graph() -> None:
    """Random sets of 10–30 genes, drawn uniformly and ∝ degree² (hub-rich, as top genes tend to be):
    at most ~5% may reach p < 0.05. Coarse degree classes fail the second draw."""
    network = _heterogeneous_graph(3000, 20000, seed=6)
    degree = network.degree.astype(float)
    rng = np.random.default_rng(6)
    for weight in (None, degree**2):
        p = None if weight is None else weight / weight.sum()
        sets = [rng.choice(3000, int(rng.integers(10, 31)), replace=False, p=p) for _ in range(1500)]
        result = network_enrichment(network, _members(sets, 3000), seed=0)
        assert result.height == 1500
        assert (result["p_value"].to_numpy() < 0.05).mean() <= 0.07
        assert result["observed_edges"].mean() == pytest.approx(result["expected_edges"].mean(), rel=0.15)
    coarse = network_enrichment(
        network, _members(sets, 3000), degree_ratio=1e9, min_bin_genes=3000, method="moments"
    )
    assert (coarse["p_value"].to_numpy() < 0.05).mean() > 0.07


def test_small_units_are_absent_and_the_schema_is_fixed() -> None:
    network = _heterogeneous_graph(200, 800, seed=7)
    members = _members([np.array([], int), np.array([3]), np.array([3, 4]), np.arange(20)], 200)
    result = network_enrichment(network, members)
    assert result["unit"].to_list() == [2, 3]
    assert result["set_size"].to_list() == [2, 20]
    assert result.schema == RESULT_SCHEMA
    assert list(RESULT_SCHEMA) == [
        *("unit", "set_size", "observed_edges", "expected_edges", "ratio", "p_value"),
        *("p_value_method", "null_draws"),
    ]
    assert network_enrichment(network, members[:2]).height == 0


def test_permutation_null_is_deterministic_per_seed_and_options_are_checked() -> None:
    network = _heterogeneous_graph(400, 2000, seed=8)
    rng = np.random.default_rng(8)
    members = _members([rng.choice(400, 15, replace=False) for _ in range(30)], 400)
    first = network_enrichment(network, members, seed=1, method="permutation", n_permutations=300)
    again = network_enrichment(network, members, seed=1, method="permutation", n_permutations=300)
    other = network_enrichment(network, members, seed=2, method="permutation", n_permutations=300)
    assert first.equals(again) and not first.equals(other)
    with pytest.raises(TypeError, match="unknown options"):
        network_enrichment(network, members, permutations=10)
    with pytest.raises(ValueError, match="method"):
        network_enrichment(network, members, method="any_edge")
    with pytest.raises(ValueError, match="gene columns"):
        network_enrichment(network, members[:, :100])
    with pytest.raises(ValueError, match="refine_below"):
        network_enrichment(network, members, refine_below=2)
    with pytest.raises(ValueError, match="max_permutations"):
        network_enrichment(network, members, max_permutations=0)


# --- the far tail: exact null distributions on graphs of disjoint cliques -------------------------------


def _cliques(n_cliques: int, size: int) -> Network:
    """Disjoint cliques of one size: every gene has the same degree, so the null draws sets uniformly."""
    i, j = np.triu_indices(size, 1)
    starts = np.arange(n_cliques)[:, None] * size
    return Network.from_edges(n_cliques * size, (starts + i).ravel(), (starts + j).ravel())


def _exact_edge_distribution(n_cliques: int, size: int, set_size: int) -> np.ndarray:
    """P(E = e) for the edges inside a uniform random set: E = Σ C(x_c, 2) over cliques, x_c genes drawn
    from clique c, counted exactly (integers) by dynamic programming over the cliques."""
    max_edges = n_cliques * math.comb(size, 2)
    ways = [[0] * (max_edges + 1) for _ in range(set_size + 1)]
    ways[0][0] = 1
    for _ in range(n_cliques):
        new = [[0] * (max_edges + 1) for _ in range(set_size + 1)]
        for taken, row in enumerate(ways):
            for edges, count in enumerate(row):
                for x in range(min(size, set_size - taken) + 1):
                    if count:
                        new[taken + x][edges + math.comb(x, 2)] += count * math.comb(size, x)
        ways = new
    total = math.comb(n_cliques * size, set_size)
    return np.array([count / total for count in ways[set_size]])


def _set_with_edges(edges: int, n_cliques: int, size: int, set_size: int) -> np.ndarray:
    """Genes of a set of set_size with exactly `edges` edges: x genes from each clique, Σ C(x, 2) = edges."""
    for n_used in range(1, n_cliques + 1):
        for parts in itertools.combinations_with_replacement(range(size, 0, -1), n_used):
            if sum(parts) == set_size and sum(math.comb(x, 2) for x in parts) == edges:
                return np.concatenate([c * size + np.arange(x) for c, x in enumerate(parts)])
    raise AssertionError(f"no set of {set_size} genes has {edges} edges")


CLIQUES = (10, 6, 10)  # 10 cliques of 6 genes, sets of 10: the tail is lumpy (a whole clique is 15 edges)


def test_exact_distribution_matches_the_closed_form_moments() -> None:
    """The enumeration the tail tests rely on agrees with the class null's exact mean and variance."""
    pmf = _exact_edge_distribution(*CLIQUES)
    edges = np.arange(pmf.size)
    network = _cliques(*CLIQUES[:2])
    result = network_enrichment(network, _members([np.arange(CLIQUES[2])], network.n_genes), method="moments")
    assert pmf.sum() == pytest.approx(1, rel=1e-12)
    assert result["expected_edges"][0] == pytest.approx((edges * pmf).sum(), rel=1e-9)
    bins = degree_bins(network.degree)
    null = _BinNull(network.adjacency, bins)
    counts = _bin_counts(
        _members([np.arange(CLIQUES[2])], network.n_genes).astype(np.int32), bins, null.n_bins
    )
    variance = null.moments(counts)[1][0]
    assert variance == pytest.approx((edges**2 * pmf).sum() - (edges * pmf).sum() ** 2, rel=1e-9)


def test_far_tail_p_value_is_not_below_the_exact_tail() -> None:
    """15 and 16 edges (a whole clique inside the set): exact P(E ≥ e) 4.7e-5 and 2.6e-5, which the moment-
    matched negative binomial puts 4× and 9× too low. The p-value must not be smaller (beyond Monte
    Carlo error: 20 exceedances, ±22 %) — nor needlessly larger."""
    pmf = _exact_edge_distribution(*CLIQUES)
    tail = np.cumsum(pmf[::-1])[::-1]
    network = _cliques(*CLIQUES[:2])
    sets = [_set_with_edges(e, *CLIQUES) for e in (15, 16)]
    result = network_enrichment(network, _members(sets, network.n_genes), max_permutations=3_000_000)
    assert result["observed_edges"].to_list() == [15, 16]
    for row, exact in zip(result.iter_rows(named=True), tail[[15, 16]], strict=True):
        assert row["p_value_method"] == "monte_carlo"
        assert exact / 2 <= row["p_value"] <= 2 * exact, (row, exact)
    moments = network_enrichment(network, _members(sets, network.n_genes), method="moments")["p_value"]
    assert (moments.to_numpy() < tail[[15, 16]] / 3).all()  # what the old default reported


def test_null_p_values_are_calibrated_in_the_far_tail() -> None:
    """P(p ≤ α) under the null, down to α = 5e-6, on the clique graph where the negative-binomial tail is
    anti-conservative: exact weights P(E = e) times the fraction of 40 independently seeded units with e
    edges whose p ≤ α. A valid p-value keeps P(p ≤ α) ≤ α (plus the replicates' sampling error). A cap of
    20,000 draws keeps the test fast; the old tail gives P(p ≤ 2e-5) = 4.7e-5 and P(p ≤ 5e-6) = 2.6e-5."""
    pmf = _exact_edge_distribution(*CLIQUES)
    network = _cliques(*CLIQUES[:2])
    replicates = 40
    support = np.flatnonzero(pmf > 0)
    support = support[support >= 2]
    sets = [_set_with_edges(int(e), *CLIQUES) for e in support for _ in range(replicates)]
    result = network_enrichment(network, _members(sets, network.n_genes), seed=3, max_permutations=20_000)
    assert result["observed_edges"].to_list() == np.repeat(support, replicates).tolist()
    p = result["p_value"].to_numpy().reshape(support.size, replicates)
    weight = pmf[support]
    for alpha in (1e-2, 1e-3, 1e-4, 2e-5, 5e-6):
        below = (p <= alpha).mean(axis=1)
        rate = (weight * below).sum()
        error = np.sqrt((weight**2 * below * (1 - below) / replicates).sum())
        assert rate <= alpha + 3 * error + 1e-12, (alpha, rate, error)


def test_monte_carlo_agrees_with_the_permutation_null_and_is_seeded_per_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two implementations of one null (sequential numba draws, fixed-count numpy draws) give the same
    p-values within Monte Carlo error; a unit's p does not depend on the other units; the neighbour-list
    count (classes too large for a bitmap) equals the bitmap's."""
    network = _heterogeneous_graph(1500, 9000, seed=9)
    rng = np.random.default_rng(9)
    degree = network.degree.astype(float)
    sets = [rng.choice(1500, 15, replace=False, p=degree**2 / (degree**2).sum()) for _ in range(150)]
    members = _members(sets, 1500)
    options = {"refine_below": 0.2, "min_exceedances": 200}  # 200 exceedances: ±7 % per p
    adaptive = network_enrichment(network, members, seed=4, **options)
    refined = adaptive.filter(pl.col("p_value_method") == "monte_carlo")
    assert 10 <= refined.height < 150
    permutation = network_enrichment(
        network, members[refined["unit"].to_numpy()], method="permutation", n_permutations=10_000, seed=4
    )
    ratio = refined["p_value"].to_numpy() / permutation["p_value"].to_numpy()
    assert 0.9 <= np.median(ratio) <= 1.1 and ((ratio > 0.6) & (ratio < 1.6)).all(), ratio
    alone = network_enrichment(network, members[: refined["unit"][0] + 1], seed=4, **options)
    assert alone.row(-1, named=True) == refined.row(0, named=True)
    monkeypatch.setattr(network_module, "_LOCAL_BITS", 0)
    assert network_enrichment(network, members, seed=4, **options).equals(adaptive)


def test_enrichment_rows_record_the_string_channels_and_p_value_methods() -> None:
    """The score's basis (from annotations_string's source version) is in every row's term_name and the
    summary notes; the notes count the p-values refined by Monte Carlo."""
    from sae_genomics_core.enrichment.enrich import enrich

    genes = [f"ENSG{i:011d}" for i in range(60)]
    rng = np.random.default_rng(0)
    clique = [(a, b) for a in range(8) for b in range(8) if a != b]
    scattered = [(int(a), int(b)) for a, b in rng.integers(8, 40, (80, 2)) if a != b]
    pairs = clique + scattered + [(b, a) for a, b in scattered]
    string = pl.DataFrame(
        {
            "ensembl_id": [genes[a] for a, _ in pairs],
            "term_id": [f"STRING:9606.P{b}" for _, b in pairs],
            "term_name": [f"N{b}" for _, b in pairs],
            "term_kind": "interaction",
            "source_gene_id": [f"N{a}" for a, _ in pairs],
            "score": 0.9,
            "source_version": "STRING v12.0; score: channels experiments+database",
        }
    )
    unit_genes = pl.DataFrame({"feature": [0] * 8 + [1] * 8, "ensembl_id": genes[:8] + genes[50:58]})
    result = enrich(unit_genes.with_columns(score=pl.lit(1.0), rank=pl.lit(1)), genes, {"string": string})
    names = result.table["term_name"].unique().to_list()
    assert names == ["edges within the gene set (STRING score ≥ 0.7; channels experiments+database)"]
    notes = result.summaries[0].notes
    assert notes["score"] == "channels experiments+database"
    assert notes["p_value_methods"] == {"monte_carlo": 1, "moments": 1}  # the clique; the other: p = 1
    assert notes["monte_carlo_at_cap"] == 1
