"""Held-out replication on synthetic data with a known answer: planted preferences replicate on the
evaluation half, null ones at most at the configured level, and a positive control shows the inflation
that testing a selection on its own data carries."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from scipy.stats import norm

from sae_genomics_core.features.associate import (
    AssociationSettings,
    _EncodedShard,
    _Totals,
    _TypeSums,
    rank_genes,
)
from sae_genomics_core.features.holdout import EVALUATION, SELECTION, cell_halves, gene_half

N_FEATURES, FDR = 100, 0.05


def _cells(types: np.ndarray, samples: np.ndarray | None = None) -> pl.DataFrame:
    frame = pl.DataFrame({"cell_index": np.arange(types.size), "cell_type": types})
    return frame if samples is None else frame.with_columns(pl.Series("sample", samples))


def test_cells_alternate_within_each_type_and_samples_never_straddle() -> None:
    types = np.repeat(["A", "B", "C"], [101, 40, 7])
    halves, unit = cell_halves(_cells(types), seed=3, min_units=2)
    assert unit == "cell"
    for cell_type in ("A", "B", "C"):
        counts = np.bincount(halves[types == cell_type], minlength=2)
        assert abs(counts[0] - counts[1]) <= 1
    assert not np.array_equal(halves, cell_halves(_cells(types), seed=4, min_units=2)[0])

    samples = np.tile([f"donor{i}" for i in range(6)], 25)[: types.size]
    halves, unit = cell_halves(_cells(types, samples), seed=3, min_units=2)
    assert unit == "sample"
    per_sample = (
        pl.DataFrame({"sample": samples, "half": halves}).group_by("sample").agg(pl.col("half").n_unique())
    )
    assert per_sample["half"].max() == 1 and set(halves) == {SELECTION, EVALUATION}
    # too few samples for a paired test in each half: cells are split
    assert cell_halves(_cells(types, np.where(np.arange(types.size) % 2, "x", "y")), 3, 2)[1] == "cell"


def test_genes_fall_in_the_same_half_whatever_else_is_present() -> None:
    genes = pl.Series([f"ENSG{i:011d}" for i in range(400)])
    halves = gene_half(genes, seed=0).to_numpy()
    assert 150 < halves.sum() < 250
    assert np.array_equal(gene_half(genes[::3], seed=0).to_numpy(), halves[::3])
    assert not np.array_equal(gene_half(genes, seed=1).to_numpy(), halves)


def _type_table(planted: float, seed: int, samples: np.ndarray | None = None) -> pl.DataFrame:
    """600 cells of types A/B/C; features 0–9 are higher in type A by `planted` (in s.d. units)."""
    rng = np.random.default_rng(seed)
    types = np.repeat(["A", "B", "C"], 200)
    means = rng.gamma(2.0, 1.0, (types.size, N_FEATURES))
    means[types == "A", :10] += planted
    cells = _cells(types, samples)
    halves, _ = cell_halves(cells, seed, min_units=2)
    sums = _TypeSums(cells, N_FEATURES, halves)
    sums.add(np.arange(types.size), sp.csr_matrix(means))
    return sums.table(FDR)


def test_a_planted_cell_type_preference_replicates_and_a_null_one_does_not() -> None:
    table = _type_table(planted=1.5, seed=0)
    planted = table.filter((pl.col("cell_type") == "A") & (pl.col("feature") < 10))
    assert planted["selected"].all() and planted["replicated"].all()
    assert (planted["held_out_log2_fold_change"] > 0).all()
    null = table.filter((pl.col("feature") >= 10) | (pl.col("cell_type") != "A"))
    assert null["replicated"].mean() <= FDR
    assert null.filter("replicated")["feature"].n_unique() <= FDR * N_FEATURES


def test_null_claims_replicate_at_most_at_the_level_over_many_datasets() -> None:
    """Under the global null, the share of datasets with any replicated claim stays below the level."""
    with_claims = [_type_table(planted=0.0, seed=seed)["replicated"].any() for seed in range(20)]
    assert np.mean(with_claims) <= FDR


def test_sample_split_replicates_a_planted_preference() -> None:
    samples = np.tile([f"donor{i}" for i in range(16)], 38)[:600]  # 8 donors a half
    table = _type_table(planted=1.5, seed=1, samples=samples)
    assert (table["test_unit"] == "sample").all()
    planted = table.filter((pl.col("cell_type") == "A") & (pl.col("feature") < 10))
    assert planted["replicated"].mean() >= 0.8


def _gene_tables(seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """2,000 cells × 60 tokens over 500 genes; every feature fires at 5%, feature 0 at 30% on gene 7."""
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(2000), 60)
    genes = rng.integers(0, 500, owners.size)
    probability = np.full((owners.size, N_FEATURES), 0.05)
    probability[genes == 7, 0] = 0.3
    fires = rng.random(probability.shape) < probability
    rows, features = np.nonzero(fires)
    halves, _ = cell_halves(_cells(np.full(2000, "A")), seed, min_units=2)
    totals = _Totals(N_FEATURES, N_FEATURES, 2000, halves=halves)
    tokens = {"gene_id": genes, "cell_index": owners, "bin": np.ones(owners.size, dtype=np.int16)}
    l0 = np.bincount(fires.sum(axis=1), minlength=N_FEATURES + 1)
    totals.add_shard(_EncodedShard(rows, features, rng.exponential(1.0, rows.size), l0, tokens))
    settings = AssociationSettings(top_genes=20, fdr=FDR)
    ranked = rank_genes(totals.gene_sums, totals.gene_tokens, totals.moments(), settings)
    return ranked, totals.held_out_genes(*totals.gene_totals(), ranked, settings)


def test_a_planted_gene_replicates_and_null_top_genes_do_not() -> None:
    ranked, table = _gene_tables(seed=2)
    assert table.height == ranked.height  # the same rows, evaluated
    planted = table.filter((pl.col("feature") == 0) & (pl.col("gene_id") == 7)).row(0, named=True)
    assert planted["selected"] and planted["replicated"] and planted["held_out_specificity"] > 3
    null = table.filter(pl.col("feature") > 0)
    assert null["selected"].mean() > 0.1  # selection picks genes, by chance
    assert null.filter("replicated")["feature"].n_unique() <= FDR * N_FEATURES
    # positive control: each null feature's best gene tested on the data that chose it looks significant
    best = null.filter(pl.col("rank") == 1)
    assert (norm.sf(best["specificity_z"].to_numpy()) <= FDR).mean() >= 0.5


def test_the_table_over_all_cells_is_the_sum_of_the_halves() -> None:
    from polars.testing import assert_frame_equal

    from sae_genomics_core.features.cell_types import TESTED_COLUMNS, CellTypeSums

    rng = np.random.default_rng(5)
    types = np.repeat(["A", "B", "C"], 100)
    means = sp.csr_matrix(
        rng.gamma(2.0, 1.0, (types.size, N_FEATURES)) * (rng.random((types.size, N_FEATURES)) < 0.3)
    )
    cells = _cells(types, np.tile(["s1", "s2", "s3"], 100))
    whole = CellTypeSums(cells, N_FEATURES)
    whole.add(np.arange(types.size), means)
    halves, _ = cell_halves(cells, 0, min_units=2)
    split = _TypeSums(cells, N_FEATURES, halves)
    split.add(np.arange(types.size), means)
    assert_frame_equal(split.table(FDR).select(TESTED_COLUMNS), whole.table(), rtol=1e-9)


def _detector_world(seed: int, planted: bool) -> pl.DataFrame:
    """600 cells of A/B/C; every feature fires in a random 30% of cells, feature 0 (when planted) in
    every A cell and no other."""
    rng = np.random.default_rng(seed)
    types = np.repeat(["A", "B", "C"], 200)
    active = rng.random((types.size, N_FEATURES)) < 0.3
    if planted:
        active[:, 0] = types == "A"
    means = sp.csr_matrix(active * rng.gamma(2.0, 1.0, active.shape))
    cells = _cells(types)
    sums = _TypeSums(cells, N_FEATURES, cell_halves(cells, seed, min_units=2)[0])
    sums.add(np.arange(types.size), means)
    return sums.table(FDR)


def test_each_types_best_detector_is_chosen_on_one_half_and_scored_on_the_other() -> None:
    table = _detector_world(seed=0, planted=True)
    best = table.filter("best_for_type").sort("cell_type")
    assert best["cell_type"].to_list() == ["A", "B", "C"]  # one per type
    row = best.row(0, named=True)
    assert row["feature"] == 0 and row["held_out_f1"] == pytest.approx(1.0)
    # the winner's curse the split removes: with no detector, the best by selection F1 scores less on
    # the held-out half than on the half that chose it
    null = _detector_world(seed=1, planted=False)
    chosen = null.filter("best_for_type")
    selection_f1 = _selection_f1(seed=1)
    assert (chosen["held_out_f1"].to_numpy() < np.array([selection_f1[t] for t in chosen["cell_type"]])).all()


def _selection_f1(seed: int) -> dict[str, float]:
    """The selection half's best F1 per type in the null world (recomputed the plain way)."""
    rng = np.random.default_rng(seed)
    types = np.repeat(["A", "B", "C"], 200)
    active = rng.random((types.size, N_FEATURES)) < 0.3
    halves = cell_halves(_cells(types), seed, min_units=2)[0]
    chosen = halves == SELECTION
    best = {}
    for cell_type in ("A", "B", "C"):
        member = types[chosen] == cell_type
        fires = active[chosen]
        tp = (fires & member[:, None]).sum(axis=0)
        best[cell_type] = float((2 * tp / (member.sum() + fires.sum(axis=0))).max())
    return best
