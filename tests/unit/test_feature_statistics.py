"""Feature statistics on synthetic tokens with a known answer: nulls at their nominal rate, planted
effects found, and positive controls proving each setup carries the bias the statistic must resist."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal
from scipy.stats import mannwhitneyu, ttest_rel

from sae_genomics_core.features.associate import AssociationSettings, _EncodedShard, _Totals, rank_genes
from sae_genomics_core.features.cell_types import CellTypeSums, cell_type_table

N_FEATURES = 200


@dataclass
class _Simulation:
    totals: _Totals
    mean: sp.csr_matrix  # cells × features: a cell's mean activation over its tokens
    maximum: np.ndarray  # cells × features: its maximum


def _simulate(
    tokens_per_cell: np.ndarray,
    fire_probability: np.ndarray,  # cells × features, or features
    seed: int,
    gene_weights: np.ndarray | None = None,
) -> _Simulation:
    """Tokens of each cell, each feature firing independently with an exponential activation."""
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(tokens_per_cell.size), tokens_per_cell)
    n_genes = 500 if gene_weights is None else gene_weights.size
    genes = rng.choice(n_genes, owners.size, p=None if gene_weights is None else gene_weights)
    probability = np.broadcast_to(fire_probability, (tokens_per_cell.size, N_FEATURES))[owners]
    fires = rng.random((owners.size, N_FEATURES)) < probability
    rows, features = np.nonzero(fires)
    totals = _Totals(N_FEATURES, N_FEATURES, tokens_per_cell.size)
    tokens = {"gene_id": genes, "cell_index": owners, "bin": rng.integers(1, 51, owners.size)}
    l0 = np.bincount(fires.sum(axis=1), minlength=N_FEATURES + 1)
    activation = rng.exponential(1.0, rows.size)
    totals.add_shard(_EncodedShard(rows, features, activation, l0, tokens))
    shape = (tokens_per_cell.size, N_FEATURES)
    sums = sp.csr_matrix((activation, (owners[rows], features)), shape=shape)  # duplicates are summed
    maximum = np.zeros(shape)
    np.maximum.at(maximum, (owners[rows], features), activation)
    return _Simulation(totals, sp.diags(1.0 / tokens_per_cell) @ sums, maximum)


def _cells(types: np.ndarray, samples: np.ndarray | None = None) -> pl.DataFrame:
    frame = pl.DataFrame({"cell_index": np.arange(types.size), "cell_type": types})
    return frame if samples is None else frame.with_columns(pl.Series("sample", samples))


def _token_confounded_null() -> tuple[_Simulation, np.ndarray]:
    """Type A's cells carry 1.5× the tokens; token activations do not depend on the type."""
    types = np.repeat(["A", "B"], 300)
    tokens = np.where(types == "A", 150, 100)
    return _simulate(tokens, np.full(N_FEATURES, 0.01), seed=1), types


def test_cell_type_null_is_not_confounded_by_tokens_per_cell() -> None:
    simulation, types = _token_confounded_null()
    table = cell_type_table(simulation.mean, _cells(types))
    significant = table.filter(pl.col("q_value") <= 0.05)["feature"].n_unique()
    assert significant <= 0.05 * N_FEATURES
    # nominal rate at the p-value level too (one-sided test of each type)
    assert (table["p_value"] <= 0.05).mean() <= 0.08


def test_the_landed_max_statistic_fails_the_same_null() -> None:
    """Positive control: the per-cell maximum with a rank test finds type A in nearly every feature."""
    simulation, types = _token_confounded_null()
    per_cell_max = simulation.maximum
    inside = types == "A"
    p = mannwhitneyu(per_cell_max[inside], per_cell_max[~inside], axis=0, alternative="greater").pvalue
    assert (p <= 0.05).mean() >= 0.9


def test_a_planted_preference_is_found_even_in_the_type_with_fewer_tokens() -> None:
    types = np.repeat(["A", "B"], 300)
    probability = np.full((types.size, N_FEATURES), 0.01)
    probability[types == "B", 7] = 0.02  # feature 7 fires twice as often on B's tokens
    simulation = _simulate(np.where(types == "A", 150, 100), probability, seed=2)
    table = cell_type_table(simulation.mean, _cells(types))
    planted = table.filter((pl.col("feature") == 7) & (pl.col("cell_type") == "B")).row(0, named=True)
    assert planted["q_value"] <= 0.05 and planted["log2_fold_change_lower"] > 0
    assert planted["log2_fold_change"] == pytest.approx(1.0, abs=0.25)


def test_a_type_where_the_rest_is_silent_gets_a_bounded_fold_change() -> None:
    types = np.repeat(["A", "B", "C"], 100)
    probability = np.zeros((types.size, N_FEATURES))
    probability[types == "A", 3] = 0.05
    simulation = _simulate(np.full(types.size, 100), probability, seed=3)
    row = (
        cell_type_table(simulation.mean, _cells(types))
        .filter((pl.col("feature") == 3) & (pl.col("cell_type") == "A"))
        .row(0, named=True)
    )
    # the pseudocount is a tenth of the feature's mean over all cells: log2(1 + 10 / share of A) ≈ 5
    assert row["log2_fold_change"] == pytest.approx(np.log2(1 + 10 * 3), abs=0.2)
    assert row["q_value"] <= 0.05


def _sample_confounded(planted: float) -> tuple[_Simulation, pl.DataFrame]:
    """Eight samples with their own activation level per feature; type A is common where it is high."""
    rng = np.random.default_rng(4)
    n_samples, per_sample = 8, 80
    samples = np.repeat(np.arange(n_samples), per_sample)
    level = np.exp(rng.normal(0, 0.7, (n_samples, N_FEATURES)))
    share_a = np.clip(0.2 + 0.6 * (level[:, 0] > np.median(level[:, 0])), 0, 1)
    types = np.where(rng.random(samples.size) < share_a[samples], "A", "B")
    probability = 0.01 * level[samples]
    probability[types == "A", 11] *= planted
    simulation = _simulate(np.full(samples.size, 100), probability, seed=5)
    return simulation, _cells(types, samples.astype(str))


def test_pseudobulk_by_sample_holds_the_null_that_cells_as_units_do_not() -> None:
    simulation, cells = _sample_confounded(planted=1.0)
    table = cell_type_table(simulation.mean, cells).filter(pl.col("cell_type") == "A")
    assert set(table["test_unit"]) == {"sample"} and table["n_units"].max() == 8
    assert (table["p_value"] <= 0.05).mean() <= 0.09
    # the same cells tested as independent units: the sample effect leaks into feature 0's test
    as_cells = cell_type_table(simulation.mean, cells.drop("sample"))
    assert set(as_cells["test_unit"]) == {"cell"}
    assert as_cells.filter((pl.col("feature") == 0) & (pl.col("cell_type") == "A"))["q_value"][0] <= 0.05


def test_pseudobulk_finds_a_planted_preference() -> None:
    simulation, cells = _sample_confounded(planted=2.0)
    row = (
        cell_type_table(simulation.mean, cells)
        .filter((pl.col("feature") == 11) & (pl.col("cell_type") == "A"))
        .row(0, named=True)
    )
    assert row["test_unit"] == "sample" and row["p_value"] <= 0.01
    assert row["log2_fold_change"] == pytest.approx(1.0, abs=0.3)


def test_cell_type_sums_added_in_parts_equal_scipy_on_all_cells() -> None:
    simulation, cells = _sample_confounded(planted=2.0)
    sums = CellTypeSums(cells, N_FEATURES)
    for part in np.array_split(np.random.default_rng(9).permutation(cells.height), 3):
        sums.add(part, simulation.mean[part])
    table = sums.table()
    row = table.filter((pl.col("feature") == 11) & (pl.col("cell_type") == "A")).row(0, named=True)
    mean = simulation.mean[:, 11].toarray().ravel()
    inside, samples = cells["cell_type"].to_numpy() == "A", cells["sample"].to_numpy()
    units = [
        (mean[inside & (samples == s)].mean(), mean[~inside & (samples == s)].mean())
        for s in np.unique(samples)
    ]
    expected = ttest_rel(*np.array(units).T, alternative="greater").pvalue
    assert row["p_value"] == pytest.approx(expected, rel=1e-9) and row["n_units"] == len(units)
    assert_frame_equal(table, cell_type_table(simulation.mean, cells), rel_tol=1e-9)  # order of sums only


def _gene_weights() -> np.ndarray:
    """500 genes whose token counts span two orders of magnitude (Zipf-like)."""
    weights = 1.0 / np.arange(1, 501) ** 0.9
    return weights / weights.sum()


def _top_gene_rarity(table: pl.DataFrame, totals: _Totals, column: str) -> float:
    """The share of each feature's top 20 genes (by `column`) that come from the rarest quartile."""
    counts = totals.gene_tokens
    rare = np.flatnonzero((counts > 0) & (counts <= np.quantile(counts[counts > 0], 0.25)))
    top = table.sort(["feature", column], descending=[False, True]).group_by("feature").head(20)
    return float(top["gene_id"].is_in(rare.tolist()).mean())


def test_a_null_features_top_genes_do_not_favour_rare_genes() -> None:
    totals = _simulate(
        np.full(2000, 60), np.full(N_FEATURES, 0.05), seed=6, gene_weights=_gene_weights()
    ).totals
    settings = AssociationSettings(top_genes=10_000, min_gene_tokens=3)
    table = rank_genes(totals.gene_sums, totals.gene_tokens, totals.moments(), settings)
    ranked = table.filter(pl.col("rank") <= 20)
    assert _top_gene_rarity(ranked, totals, "specificity") <= 0.3  # a quarter if rarity does not matter
    # positive control: the raw lift (the landed ranking) does favour them in this same data
    assert _top_gene_rarity(table, totals, "raw_specificity") >= 0.4


def test_a_planted_gene_still_ranks_first() -> None:
    weights = _gene_weights()
    rng = np.random.default_rng(7)
    owners = np.repeat(np.arange(2000), 60)
    genes = rng.choice(weights.size, owners.size, p=weights)
    planted_gene = 200  # a gene of the rarer half (about 60 tokens)
    probability = np.where(genes[:, None] == planted_gene, 0.2, 0.02) * np.ones(N_FEATURES)
    probability[:, 1:] = 0.02
    fires = rng.random(probability.shape) < probability
    rows, features = np.nonzero(fires)
    totals = _Totals(N_FEATURES, N_FEATURES, 2000)
    l0 = np.bincount(fires.sum(axis=1), minlength=N_FEATURES + 1)
    tokens = {"gene_id": genes, "cell_index": owners, "bin": np.ones(owners.size, dtype=np.int16)}
    totals.add_shard(_EncodedShard(rows, features, rng.exponential(1.0, rows.size), l0, tokens))
    table = rank_genes(totals.gene_sums, totals.gene_tokens, totals.moments(), AssociationSettings())
    top = table.filter(pl.col("feature") == 0).sort("rank")
    assert top["gene_id"][0] == planted_gene and top["specificity"][0] > 3
