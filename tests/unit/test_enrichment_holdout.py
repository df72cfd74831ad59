"""Held-out enrichment: a term a feature prefers replicates on the term's other genes; a term it hits only
through a few of its own top genes (bio-sae's 37× inside the top set, ~1× outside) and random gene sets
do not."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from sae_genomics_core.enrichment.enrich import EnrichmentSettings, enrich_held_out
from sae_genomics_core.features.holdout import EVALUATION, SELECTION, gene_half
from sae_genomics_core.pipeline.enrichment import _Annotations, _enriched_by_database

SETTINGS = EnrichmentSettings(gene_set_size=20, min_overlap=2, annotated_only=False, max_term_size=200)
N_NULL = 60


def _world(seed: int) -> tuple[list[str], pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    genes = [f"ENSG{i:011d}" for i in range(3_000)]
    rows = [
        (genes[g], f"T:{term:04d}", f"term {term}", "phenotype")
        for term in range(150)
        for g in rng.choice(len(genes), int(rng.integers(10, 120)), replace=False)
    ]
    frame = pl.DataFrame(rows, schema=["ensembl_id", "term_id", "term_name", "term_kind"], orient="row")
    return genes, frame, gene_half(pl.Series(genes), SETTINGS.holdout_seed).to_numpy()


def _ranked(rows: list[tuple[int, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["feature", "ensembl_id"], orient="row", infer_schema_length=None)
    return frame.with_columns(
        score=pl.int_range(pl.len(), 0, -1).over("feature").cast(pl.Float64),
        rank=pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64),
        symbol=pl.col("ensembl_id"),
    )


def _members(annotations: pl.DataFrame, term: str) -> list[str]:
    return annotations.filter(pl.col("term_id") == term)["ensembl_id"].to_list()


def test_a_preferred_term_replicates_and_a_top_set_artefact_does_not() -> None:
    genes, annotations, halves = _world(seed=0)
    half_of = dict(zip(genes, halves, strict=True))
    sizes = annotations.group_by("term_id").len().sort("len", "term_id", descending=True)
    preferred, artefact = sizes["term_id"][0], sizes["term_id"][1]
    rng = np.random.default_rng(1)
    # feature 0 prefers the term: 24 of its genes from both halves; feature 1 hits the other term only
    # with genes of the selection half (its top set); then random genes
    rows = [(0, g) for g in _members(annotations, preferred)[:24]]
    rows += [(1, g) for g in _members(annotations, artefact) if half_of[g] == SELECTION][:14]
    for feature in (0, 1):
        rows += [(feature, genes[i]) for i in rng.choice(len(genes), 16, replace=False)]
    for feature in range(2, 2 + N_NULL):
        rows += [(feature, genes[i]) for i in rng.choice(len(genes), 40, replace=False)]
    table = enrich_held_out(_ranked(rows), genes, {"toy": annotations}, SETTINGS).table

    def pair(feature: int, term: str) -> dict:
        return table.filter((pl.col("feature") == feature) & (pl.col("term_id") == term)).row(0, named=True)

    good, bad = pair(0, preferred), pair(1, artefact)
    assert good["significant"] and good["selected"] and good["replicated"] and good["held_out_odds_ratio"] > 1
    assert bad["significant"] and bad["selected"] and not bad["replicated"]  # all data and one half agree
    null = table.filter(pl.col("feature") >= 2)
    assert null.filter("replicated")["feature"].n_unique() <= 0.05 * N_NULL
    assert (table["replicated"] <= table["selected"]).all()  # only a selected pair can replicate
    # per term its best feature, chosen by F1 on the selection half and scored on the other
    assert good["best_for_term"] and good["held_out_f1"] > 0.2
    assert table.filter("best_for_term").group_by("database", "term_id").len()["len"].max() == 1


def test_null_features_replicate_at_most_at_the_level_over_many_worlds() -> None:
    with_claims = []
    for seed in range(10):
        genes, annotations, _ = _world(seed)
        rng = np.random.default_rng(seed + 100)
        rows = [(f, genes[i]) for f in range(N_NULL) for i in rng.choice(len(genes), 40, replace=False)]
        table = enrich_held_out(_ranked(rows), genes, {"toy": annotations}, SETTINGS).table
        with_claims.append(bool(table["replicated"].any()))
    assert np.mean(with_claims) <= 0.1  # ≤ 5 % expected; one world in ten is within its noise


def test_the_held_out_overlap_counts_the_terms_other_genes_among_the_features_other_top_genes() -> None:
    genes, annotations, halves = _world(seed=3)
    assert {SELECTION, EVALUATION} == set(halves)
    rng = np.random.default_rng(2)
    top = [genes[i] for i in rng.choice(len(genes), 60, replace=False)]  # in rank order
    table = enrich_held_out(_ranked([(0, g) for g in top]), genes, {"toy": annotations}, SETTINGS).table
    evaluation_genes = {g for g, h in zip(genes, halves, strict=True) if h == EVALUATION}
    evaluation_set = [g for g in top if g in evaluation_genes][: SETTINGS.gene_set_size]
    checked = 0
    for row in table.filter(pl.col("held_out_overlap").is_not_null()).iter_rows(named=True):
        members = set(_members(annotations, row["term_id"])) & evaluation_genes
        assert row["held_out_overlap"] == len(members.intersection(evaluation_set))
        f1 = 2 * row["held_out_overlap"] / (len(evaluation_set) + len(members))
        assert row["held_out_f1"] == pytest.approx(f1)
        checked += 1
    assert checked >= 3


def test_one_database_at_a_time_gives_the_same_table_as_all_at_once() -> None:
    """The enrichment stage runs a database at a time (progress after each): tests, BH and the best
    feature per term are per database, so nothing may change."""
    genes, annotations, _ = _world(seed=4)
    other = annotations.with_columns(pl.col("term_id").str.replace("T:", "U:"))
    other = other.filter(pl.col("term_id").str.ends_with("1").not_())
    rng = np.random.default_rng(5)
    rows = [(f, genes[i]) for f in range(30) for i in rng.choice(len(genes), 30, replace=False)]
    rows += [(30, g) for g in _members(annotations, "T:0000")[:20]] + [
        (31, g) for g in _members(other, "U:0002")[:20]
    ]
    both = {"toy": annotations, "other": other}
    together = enrich_held_out(_ranked(rows), genes, both, SETTINGS)
    lines: list[str] = []
    log = SimpleNamespace(info=lines.append, warning=lines.append)
    staged = _enriched_by_database("d", 0, _ranked(rows), genes, _Annotations(both, {}, {}), SETTINGS, log)
    order = ["database", "feature", "term_id"]
    assert together.table.height > 100 and together.table.filter("significant")["database"].n_unique() == 2
    assert together.table.sort(order).equals(staged.table.sort(order))
    assert together.summary_frame().equals(staged.summary_frame())
    assert lines[-1].startswith("d layer 0: enrichment: 2/2 databases (100%)") and lines[-1].endswith(
        "; other"
    )
