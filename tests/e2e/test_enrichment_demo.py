"""`make demo`'s enrichment on pbmc68k: every layer tested against the snapshot databases, the baselines
beside it, the calibration check passed, HPO propagated, and the summary view carrying the top terms."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sae_genomics_core.config import Home

LAYERS = {0, 1, 2, 3}


def query(demo_home: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(demo_home / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_enrichment_covers_every_layer_and_database(demo_home: Path) -> None:
    rows = query(
        demo_home,
        "select layer, database, statistic, min(p_value), max(p_value), min(q_value), max(q_value), "
        "max(background_size), count(*), any_value(source_version) from enrichment where dataset = 'pbmc68k' group by all",
    )
    assert {r[0] for r in rows} == LAYERS
    databases = {r[1] for r in rows}
    assert {"hpo", "string", "monarch"} <= databases and not {"omim", "disgenet"} & databases
    for _layer, database, statistic, p_min, p_max, q_min, q_max, _background, n, version in rows:
        assert statistic == ("string_network" if database == "string" else "hypergeometric")
        assert 0 <= p_min <= p_max <= 1 and 0 <= q_min <= q_max <= 1 and n > 0 and version
        assert q_min >= p_min  # BH never lowers a p-value
    # the universe never exceeds the dataset's expressed genes with an Ensembl id
    (expressed,) = query(
        demo_home,
        "select count(distinct ensembl_id) from genes where dataset = 'pbmc68k' and n_cells_expressed > 0",
    )[0]
    assert max(r[7] for r in rows) <= expressed


def test_hpo_terms_are_propagated_up_the_ontology(demo_home: Path) -> None:
    (version,) = query(demo_home, "select distinct version from hpo_ontology")[0]
    assert version == "2023-01-27"
    # terms tested for HPO that no gene is annotated to directly: they exist only through propagation
    (propagated_only,) = query(
        demo_home,
        "select count(distinct term_id) from enrichment where database = 'hpo' "
        "and term_id not in (select term_id from annotations_hpo)",
    )[0]
    assert propagated_only > 0


def test_baselines_sit_beside_the_sae_for_every_layer_and_database(demo_home: Path) -> None:
    rows = query(
        demo_home,
        "select layer, database, method, n_units, n_units_tested, n_units_significant, fraction_significant, "
        "n_distinct_terms, redundancy from enrichment_baselines where dataset = 'pbmc68k'",
    )
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    databases = {r[1] for r in rows}
    assert {"hpo", "string"} <= databases
    for layer in LAYERS:
        for database in databases:
            assert {m for (la, db, m) in by_key if la == layer and db == database} == {"sae", "pca", "random"}
    for _, database, method, n_units, tested, significant, fraction, distinct, redundancy in rows:
        # d_sae 512; min(d_sae, 2 × d_in 64) random directions; PCA: ± the top axes explaining 90 %
        assert (
            n_units == 512
            if method == "sae"
            else n_units == 128
            if method == "random"
            else 0 < n_units <= 128
        )
        assert 0 <= significant <= tested <= n_units
        assert fraction is None if tested == 0 else 0 <= fraction <= 1  # nothing testable: no fraction
        assert (distinct is None) == (database == "string") and (redundancy is None or 0 <= redundancy < 1)


def test_baseline_units_fire_as_often_as_sae_features_unit_by_unit(demo_home: Path) -> None:
    rows = query(
        demo_home,
        "select distinct layer, method, rate_p10, rate_p50, rate_p90 from enrichment_baselines "
        "where dataset = 'pbmc68k'",
    )
    rates = {(r[0], r[1]): r[2:] for r in rows}
    for layer in LAYERS:
        sae = rates[layer, "sae"]
        assert sae[2] > sae[0]  # the SAE's rates spread: matching only the mean would not do
        for method in ("pca", "random"):
            for ours, theirs in zip(rates[layer, method], sae, strict=True):
                assert ours == pytest.approx(theirs, rel=0.25, abs=2e-4)


def test_calibration_check_passed_on_every_partition(demo_home: Path) -> None:
    from sae_genomics_dagster.instance import get_instance

    instance = get_instance(Home(demo_home))
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("enrichment"), "calibration"), limit=20
    )
    evaluations = [r.event.dagster_event.event_specific_data for r in records if r.event is not None]
    assert len(evaluations) >= len(LAYERS)
    assert all(e.passed for e in evaluations)
    # one verdict per dataset × layer partition
    expected = {str(dg.MultiPartitionKey({"dataset": "pbmc68k", "layer": str(layer)})) for layer in LAYERS}
    assert {str(e.partition) for e in evaluations} == expected
    for evaluation in evaluations:  # p-value-level verdicts per database; HPO always has null tests to judge
        verdicts = evaluation.metadata["verdicts"].value
        assert "fail" not in verdicts.values() and verdicts["hpo"] == "pass"


def test_feature_summary_carries_the_enrichment_columns(demo_home: Path) -> None:
    total, counted, significant, typed, with_terms, named = query(
        demo_home,
        "select count(*), count(n_significant_terms), sum(n_significant_terms), count(top_cell_type), "
        "count(top_terms), count(top_term) from feature_summary where dataset = 'pbmc68k'",
    )[0]
    assert total == counted == 4 * 512 and typed > 0
    (pairs,) = query(demo_home, "select count(*) from enrichment where dataset = 'pbmc68k' and significant")[
        0
    ]
    assert significant == pairs  # the view counts exactly the enrichment table's significant rows
    # top_terms is set exactly for the features with a replicated term (none, on random weights)
    (features,) = query(
        demo_home,
        "select count(distinct (layer, feature)) from enrichment where dataset = 'pbmc68k' and replicated",
    )[0]
    assert with_terms == named == features


def test_the_demo_fills_the_replication_columns(demo_home: Path) -> None:
    for table in ("feature_genes", "feature_cell_types", "enrichment"):
        rows, flagged, selected, replicated, beyond = query(
            demo_home,
            f"select count(*), count(replicated), count(*) filter (where selected), "
            f"count(*) filter (where replicated), count(*) filter (where replicated and not selected) "
            f"from {table} where dataset = 'pbmc68k'",
        )[0]
        assert rows > 0 and flagged == rows and beyond == 0, table
        assert replicated <= selected
    # random weights pass the data's co-expression through: cell-type claims replicate across cells
    (types,) = query(demo_home, "select count(*) from feature_cell_types where replicated")[0]
    (summary,) = query(demo_home, "select count(*) from feature_summary where top_cell_type_replicated")[0]
    assert types > 0 and 0 < summary <= types


@pytest.mark.parametrize(
    ("asset", "chart"),
    [
        ("sae_checkpoint", "training_curves"),
        ("feature_stats", "feature_density"),
        ("feature_stats", "l0_histogram"),
        ("feature_genes", "top_genes_of_the_busiest_feature"),
        ("feature_cell_types", "cell_type_heatmap"),
        ("enrichment", "enrichment_dot_plot"),
    ],
)
def test_charts_show_in_the_assets_metadata(demo_home: Path, asset: str, chart: str) -> None:
    from sae_genomics_dagster.instance import get_instance

    event = get_instance(Home(demo_home)).get_latest_materialization_event(dg.AssetKey(asset))
    assert "data:image/png;base64," in event.asset_materialization.metadata[chart].value


def test_feature_pages_are_written_for_every_layer(demo_home: Path) -> None:
    for layer in LAYERS:
        page = demo_home / "artefacts" / "pages" / "pbmc68k" / f"L{layer}" / "index.html"
        assert page.stat().st_size > 500_000  # data for 512 features plus the bundled renderer
