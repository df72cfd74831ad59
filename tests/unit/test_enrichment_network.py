"""STRING-style network enrichment: edge counting, the degree-class null's exact moments, calibration."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from scipy import stats

from sae_genomics_core.enrichment.network import (
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
    assert row["observed_edges"] >= 105 and row["ratio"] > 1 and row["p_value"] < 1e-6
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
    coarse = network_enrichment(network, _members(sets, 3000), degree_ratio=1e9, min_bin_genes=3000)
    assert (coarse["p_value"].to_numpy() < 0.05).mean() > 0.07


def test_small_units_are_absent_and_the_schema_is_fixed() -> None:
    network = _heterogeneous_graph(200, 800, seed=7)
    members = _members([np.array([], int), np.array([3]), np.array([3, 4]), np.arange(20)], 200)
    result = network_enrichment(network, members)
    assert result["unit"].to_list() == [2, 3]
    assert result["set_size"].to_list() == [2, 20]
    assert result.schema == pl.Schema({
        "unit": pl.Int64, "set_size": pl.Int64, "observed_edges": pl.Int64,
        "expected_edges": pl.Float64, "ratio": pl.Float64, "p_value": pl.Float64,
    })  # fmt: skip
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
