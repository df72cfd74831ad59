"""The enrichment asset on a small warehouse with a planted feature: table, calibration check, view,
skips and refusals. (The whole chain on the demo data runs in tests/e2e/test_enrichment_demo.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from sae_genomics_core.config import Home
from sae_genomics_dagster.definitions import build_definitions

DATASET, LAYER = "toy", 0
KEY = dg.MultiPartitionKey({"dataset": DATASET, "layer": str(LAYER)})
N_GENES, N_FEATURES = 600, 40
GENES = [f"ENSG{i:011d}" for i in range(N_GENES)]
PLANTED_TERM = "T:0000"


CHECKPOINT = "resid_post-0123456789abcdef"


def _write(connection: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    connection.register("frame", frame.to_arrow())
    connection.execute(f"create or replace table {name} as select * from frame")
    connection.unregister("frame")


def _annotations(rng: np.random.Generator) -> pl.DataFrame:
    rows = [(GENES[g], PLANTED_TERM, "planted term", "phenotype") for g in range(30)]
    for term in range(1, 60):
        rows += [
            (GENES[g], f"T:{term:04d}", f"term {term}", "phenotype")
            for g in rng.choice(N_GENES, 25, replace=False)
        ]
    frame = pl.DataFrame(rows, schema=["ensembl_id", "term_id", "term_name", "term_kind"], orient="row")
    return frame.with_columns(
        database=pl.lit("toy"),
        symbol=pl.lit(None, pl.String),
        score=pl.lit(1.0),
        evidence=pl.lit(None, pl.String),
        source_version=pl.lit("toy release 1"),
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Home, dg.DagsterInstance, dg.Definitions]]:
    rng = np.random.default_rng(0)
    home = Home(tmp_path / "home").ensure()
    genes = pl.DataFrame(
        {
            "dataset": DATASET,
            "gene_index": np.arange(N_GENES),
            "feature_name": GENES,
            "ensembl_id": GENES,
            "symbol": [f"G{i}" for i in range(N_GENES)],
            "in_vocab": None,
            "n_cells_expressed": np.r_[
                np.full(N_GENES - 50, 10), np.zeros(50, dtype=int)
            ],  # 50 never expressed
        }
    )
    feature_rows = [(0, GENES[g]) for g in range(12)]  # feature 0: 12 genes of the planted term
    feature_rows += [(0, GENES[g]) for g in rng.choice(np.arange(100, 550), 8, replace=False)]
    for feature in range(1, N_FEATURES):
        feature_rows += [(feature, GENES[g]) for g in rng.choice(N_GENES - 50, 20, replace=False)]
    feature_genes = pl.DataFrame(feature_rows, schema=["feature", "ensembl_id"], orient="row").with_columns(
        pl.lit(DATASET).alias("dataset"),
        pl.lit(LAYER).alias("layer"),
        symbol=pl.col("ensembl_id").str.replace("ENSG0+", "G"),
        score=pl.int_range(pl.len(), 0, -1).over("feature").cast(pl.Float64),
        n_tokens=pl.lit(5),
        mean_activation=pl.lit(1.0),
        specificity=pl.lit(2.0),
        rank=pl.int_range(1, pl.len() + 1).over("feature"),
        gene_id=pl.lit(0),
        checkpoint_id=pl.lit(CHECKPOINT),
        activations_checksum=pl.lit("acts"),
    )
    stats = pl.DataFrame(
        {
            "dataset": DATASET,
            "layer": LAYER,
            "feature": np.arange(N_FEATURES),
            "fire_count": 10,
            "frequency": 0.01,
            "mean_activation": 1.0,
            "max_activation": 2.0,
            "n_cells_active": 3,
        }
    )
    cell_types = pl.DataFrame(
        {
            "dataset": DATASET,
            "layer": LAYER,
            "feature": [0],
            "cell_type": ["T"],
            "mean_activation": [1.0],
            "frac_active": [0.5],
            "log2_fold_change": [1.0],
            "log2_fold_change_lower": [0.5],
            "p_value": [0.01],
            "q_value": [0.02],
            "n_cells": [5],
        }
    )
    with duckdb.connect(str(home.warehouse)) as connection:
        _write(connection, "genes", genes)
        _write(connection, "feature_genes", feature_genes)
        _write(connection, "feature_stats", stats)
        _write(connection, "feature_cell_types", cell_types)
        _write(connection, "annotations_toy", _annotations(rng))
    # the activation store's vocab: every gene is a token
    store = home.artefacts / "activations" / DATASET / "store"
    store.mkdir(parents=True)
    (store / "vocab.json").write_text(json.dumps({g: i for i, g in enumerate(GENES)}))
    (home.artefacts / "activations" / DATASET / "CURRENT.json").write_text(json.dumps({"path": str(store)}))
    _point_sae_to(home, CHECKPOINT)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset", [DATASET])
        yield home, instance, build_definitions(home)


def _point_sae_to(home: Home, checkpoint: str) -> None:
    """The dataset × layer's current SAE checkpoint (only its id matters to enrichment)."""
    folder = home.artefacts / "sae" / DATASET / f"L{LAYER}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CURRENT.json").write_text(json.dumps({"path": str(folder / checkpoint / "checkpoint")}))


def run(
    defs: dg.Definitions, instance: dg.DagsterInstance, config: dict | None = None
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[dg.AssetKey("enrichment")],
        partition_key=KEY,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"enrichment": {"config": config or {}}}},
    )


def query(home: Home, sql: str) -> list[tuple]:
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_planted_feature_is_enriched_and_calibration_passes(world) -> None:
    home, instance, defs = world
    result = run(defs, instance)
    assert result.success
    significant = query(
        home,
        "select feature, term_id, overlap, q_value, source_version, background_size from enrichment where significant",
    )
    assert {(r[0], r[1]) for r in significant} == {(0, PLANTED_TERM)}
    _, _, overlap, q_value, version, background = significant[0]
    assert overlap == 12 and q_value < 1e-6 and version == "toy release 1"
    # background: vocab ∩ expressed (550 genes), then only the genes the database annotates
    annotated_expressed = query(
        home,
        "select count(distinct ensembl_id) from annotations_toy where ensembl_id in (select ensembl_id from genes where n_cells_expressed > 0)",
    )[0][0]
    assert background == annotated_expressed < N_GENES
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["calibration"].passed
    assert checks["calibration"].partition == KEY  # a verdict per dataset × layer
    assert checks["calibration"].metadata["verdicts"].value == {"toy": "pass"}
    assert (
        0.3 < checks["calibration"].metadata["worst_ratio"].value < 3
    )  # observed / expected null rejections
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("enrichment")
    ).asset_materialization.metadata
    assert metadata["features_with_a_significant_term"].value == 1
    assert "toy" in metadata["per_database"].value
    top = query(
        home, "select top_term, n_significant_terms, top_cell_type from feature_summary where feature = 0"
    )[0]
    assert top == ("planted term", 1, "T")


def _calibration(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return next(c for c in result.get_asset_check_evaluations() if c.check_name == "calibration")


def test_calibration_draws_every_features_gene_set_per_repeat(world) -> None:
    _, instance, defs = world
    check = _calibration(run(defs, instance, {"calibration_repeats": 2}))
    # every feature's gene set, drawn twice; the unit tests show p-values 10× too small and a padded universe
    # failing this bound
    assert check.metadata["random_sets"].value == 2 * N_FEATURES
    assert "p_too_many" in check.metadata["per_database"].value


def test_calibration_fails_on_a_padded_universe_and_is_not_a_pass_where_nothing_is_testable(world) -> None:
    home, instance, defs = world
    # every gene counted in the universe, annotated or not, expressed or not (vocab ∩ expressed is 550)
    with duckdb.connect(str(home.warehouse)) as connection:
        connection.execute("update genes set n_cells_expressed = 10")
        pad = pl.DataFrame({"ensembl_id": [f"ENSG9{i:010d}" for i in range(600)]})
        connection.register("pad", pad.to_arrow())
        connection.execute(
            "insert into genes by name select 'toy' as dataset, 1000 + row_number() over () as gene_index, "
            "ensembl_id as feature_name, ensembl_id, ensembl_id as symbol, 10 as n_cells_expressed from pad"
        )
    vocab = home.artefacts / "activations" / DATASET / "store" / "vocab.json"
    vocab.write_text(json.dumps({g: i for i, g in enumerate(GENES + pad["ensembl_id"].to_list())}))
    padded = _calibration(run(defs, instance, {"annotated_only": False, "max_term_size": 40}))
    assert not padded.passed and padded.severity == dg.AssetCheckSeverity.ERROR
    assert padded.metadata["verdicts"].value == {"toy": "fail"}
    # no term within the size bounds: nothing was tested, and the check does not pass
    empty = _calibration(run(defs, instance, {"min_term_size": 5, "max_term_size": 5}))
    assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
    assert empty.metadata["verdicts"].value == {"toy": "not testable"} and "not testable" in empty.description


def test_bad_settings_fail_clearly_and_keep_the_previous_table(world) -> None:
    home, instance, defs = world
    assert run(defs, instance).success
    before = query(home, "select count(*) from enrichment")[0][0]
    result = run(defs, instance, {"min_term_size": 50, "max_term_size": 10})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "min_term_size" in failure.step_failure_data.error.message
    assert query(home, "select count(*) from enrichment")[0][0] == before


def test_without_annotation_tables_enrichment_writes_an_empty_partition_and_says_why(world) -> None:
    home, instance, defs = world
    with duckdb.connect(str(home.warehouse)) as connection:
        connection.execute("drop table annotations_toy")
    result = run(defs, instance)
    assert result.success
    event = instance.get_latest_materialization_event(dg.AssetKey("enrichment"))
    metadata = event.asset_materialization.metadata
    assert metadata["rows"].value == 0 and "--mode snapshot" in metadata["not_run"].value
    assert query(home, "select count(*) from enrichment")[0][0] == 0  # the table exists, with its columns
    assert {"replicated", "source_version", "checkpoint_id"} <= {
        row[0] for row in query(home, "describe enrichment")
    }
    assert any("sae-genomics annotate" in (e.message or "") for e in instance.all_logs(result.run_id))
    (check,) = result.get_asset_check_evaluations()
    assert (
        not check.passed
        and check.severity == dg.AssetCheckSeverity.WARN
        and "not evaluated" in check.description
    )


def test_feature_rows_of_another_sae_are_refused_and_the_previous_table_kept(world) -> None:
    home, instance, defs = world
    assert run(defs, instance).success
    before = query(home, "select count(*), min(checkpoint_id) from enrichment")
    assert before[0][1] == CHECKPOINT  # every derived row records its checkpoint
    _point_sae_to(home, "resid_post-fedcba9876543210")  # a retrained SAE; feature tables not yet redone
    result = run(defs, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialise feature_tables" in failure.step_failure_data.user_failure_data.description
    assert query(home, "select count(*), min(checkpoint_id) from enrichment") == before
