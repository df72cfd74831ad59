"""Stage runners: enrichment of one dataset × layer's features against the annotation databases (with its
calibration check), and the same tests on PCA and random-direction baselines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.annotations.base import load_sources
from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import sae_device
from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.errors import InputError
from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.pipeline.features import open_partition, refuse_stale
from sae_genomics_core.pipeline.result import CheckOutcome, Log, Markdown, StageResult, default_log
from sae_genomics_core.warehouse.sql import format_frame
from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import write_transaction

CALIBRATION_CHECK = "calibration"
NO_ANNOTATIONS = (
    "no annotation tables yet, so nothing was tested (0 rows written; the feature pages show the rest): run "
    "`sae-genomics annotate --mode snapshot` (the bundled snapshots, offline) or `--mode live` (network), "
    "then `sae-genomics materialize DATASET --assets enrichment+` (enrichment, baselines and pages only)"
)


@dataclass(frozen=True)
class _Annotations:
    tables: dict[str, pl.DataFrame]
    ontologies: dict[str, Any]
    versions: dict[str, str]


def _annotations(warehouse: Path) -> _Annotations:
    from sae_genomics_core.enrichment.inputs import load_annotations, load_ontology, source_versions

    tables = load_annotations(warehouse)
    ontology = load_ontology(warehouse)
    ontologies = {"hpo": ontology} if ontology is not None and "hpo" in tables else {}
    return _Annotations(tables, ontologies, source_versions(tables))


def _unit_genes(feature_genes: pl.DataFrame) -> pl.DataFrame:
    return feature_genes.select("feature", "ensembl_id", "symbol", "score", "rank")


def _keyed(frame: pl.DataFrame, dataset: str, layer: int, derived_from: pl.DataFrame) -> pl.DataFrame:
    """Rows keyed by partition, recording the SAE checkpoint (and activation set) of `derived_from`."""
    provenance = derived_from.select("checkpoint_id", "activations_checksum").head(1)
    return frame.select(
        pl.lit(dataset).alias("dataset"), pl.lit(layer, dtype=pl.Int64).alias("layer"), pl.all()
    ).with_columns(
        pl.lit(provenance[name][0] if provenance.height else None).alias(name) for name in provenance.columns
    )


def _vocab(store: ArtefactStore, dataset: str) -> dict[str, int]:
    return json.loads((store.current_activations(dataset).root / "vocab.json").read_text())


def run_enrichment(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    warehouse: Path,
    feature_genes: pl.DataFrame,
    genes: pl.DataFrame,
    settings: EnrichmentSettings,
    calibration: Any = None,
    log: Log | None = None,
) -> StageResult:
    """Test every feature's top genes against every database's terms, and calibrate the tests on shuffled
    gene sets (`calibration`: CalibrationSettings, None for its defaults). Skipped, not failed, before any
    annotation table exists."""
    from sae_genomics_core.enrichment.enrich import CalibrationSettings, calibrate
    from sae_genomics_core.enrichment.inputs import background_genes

    log = log or default_log()
    if feature_genes.height == 0:
        raise InputError(
            f"no feature_genes for {dataset} layer {layer}", fix="materialise the features first"
        )
    refuse_stale(feature_genes, store, dataset, layer, "feature_genes")
    annotations = _annotations(warehouse)
    if not annotations.tables:  # a dataset processed before any annotation refresh: not a failure
        from sae_genomics_core.enrichment.enrich import ENRICHMENT_SCHEMA, HELD_OUT_SCHEMA

        log.warning(f"enrichment not run: {NO_ANNOTATIONS}")
        not_run = CheckOutcome(CALIBRATION_CHECK, False, f"not evaluated: {NO_ANNOTATIONS}", blocking=False)
        empty = pl.DataFrame(schema=ENRICHMENT_SCHEMA | HELD_OUT_SCHEMA)
        table = _keyed(_with_sources(empty, {}), dataset, layer, feature_genes)
        return StageResult(tables={"enrichment": table}, summary=_not_run(), checks=[not_run])
    unit_genes = _unit_genes(feature_genes)
    background = background_genes(genes, _vocab(store, dataset))
    result = _enriched_by_database(dataset, layer, unit_genes, background, annotations, settings, log)
    table = _keyed(_with_sources(result.table, annotations.versions), dataset, layer, feature_genes)
    table = table.sort("database", "feature", "log10_p_value")
    summary = result.summary_frame()
    null = calibrate(
        unit_genes,
        background,
        annotations.tables,
        settings,
        annotations.ontologies,
        calibration or CalibrationSettings(),
    )
    per_database = ", ".join(
        f"{r['database']} {r['n_units_significant']}/{r['n_units']}" for r in summary.iter_rows(named=True)
    )
    log.info(f"{dataset} L{layer}: {table.height:,} tested pairs; {per_database}")
    return StageResult(
        tables={"enrichment": table},
        summary={
            **_dot_plot(store, dataset, layer, table),
            **_enrichment_summary(table, summary, len(background), annotations),
        },
        checks=[calibration_check(null)],
    )


def _enriched_by_database(
    dataset: str,
    layer: int,
    unit_genes: pl.DataFrame,
    background: list[str],
    annotations: _Annotations,
    settings: EnrichmentSettings,
    log: Log,
) -> Any:
    """`enrich_held_out` one database at a time (its tests and BH are per database, so the result is the
    same), with progress after each."""
    from sae_genomics_core.enrichment.enrich import EnrichmentResult, enrich_held_out
    from sae_genomics_core.progress import Progress

    progress = Progress(
        f"{dataset} layer {layer}: enrichment", "databases", log, total=len(annotations.tables)
    )
    parts = []
    for done, (database, frame) in enumerate(annotations.tables.items(), start=1):
        parts.append(
            enrich_held_out(unit_genes, background, {database: frame}, settings, annotations.ontologies)
        )
        progress.update(done, note=database)
    return EnrichmentResult(
        table=pl.concat([part.table for part in parts]),
        summaries=[summary for part in parts for summary in part.summaries],
    )


def _enrichment_summary(
    table: pl.DataFrame, per_database: pl.DataFrame, n_background: int, annotations: _Annotations
) -> dict[str, Any]:
    hpo = annotations.ontologies.get("hpo")
    return {
        "rows": table.height,
        "background_genes": n_background,
        "significant_pairs": int(table["significant"].sum()),
        "features_with_a_significant_term": table.filter("significant")["feature"].n_unique(),
        "selected_pairs": int(table["selected"].sum()),
        "replicated_pairs": int(table["replicated"].sum()),
        "features_with_a_replicated_term": table.filter("replicated")["feature"].n_unique(),
        "per_database": Markdown(format_frame(per_database, "table")),
        "source_versions": annotations.versions,
        "hpo_ontology": hpo.version if hpo is not None else "not propagated (no hpo_ontology)",
    }


def _not_run() -> dict[str, Any]:
    """The summary of a stage with nothing to test: an empty partition, and why."""
    return {"rows": 0, "not_run": NO_ANNOTATIONS}


def _with_sources(table: pl.DataFrame, versions: dict[str, str]) -> pl.DataFrame:
    """Each row's evidence source (derived databases share one) and its database's release."""
    from sae_genomics_core.enrichment.enrich import evidence_sources, with_evidence_source

    derived_from = {name: source.extra.get("derived_from", []) for name, source in load_sources().items()}
    release = pl.DataFrame(
        {"database": list(versions), "source_version": list(versions.values())},
        schema={"database": pl.String, "source_version": pl.String},
    )
    return with_evidence_source(table, evidence_sources(derived_from)).join(
        release, on="database", how="left"
    )


def _dot_plot(store: ArtefactStore, dataset: str, layer: int, table: pl.DataFrame) -> dict[str, Markdown]:
    from sae_genomics_core.viz.charts import enrichment_dot_plot

    if not table.height:
        return {}
    chart = enrichment_dot_plot(table, f"{dataset} layer {layer}")
    return {"enrichment_dot_plot": Markdown(store.save_chart(dataset, layer, "enrichment_dot_plot", chart))}


def refresh_feature_summary(warehouse: Path) -> None:
    """Rebuild the `feature_summary` view once a new enrichment table is written."""
    write_transaction(warehouse, create_feature_summary)


def calibration_check(calibration: pl.DataFrame) -> CheckOutcome:
    """Fails on a database beyond its bound; with no testable database it says so (a warning), never passes."""
    from sae_genomics_core.enrichment.enrich import calibration_verdicts

    verdicts = calibration_verdicts(calibration)
    failed = sorted(d for d, v in verdicts.items() if v == "fail")
    untestable = sorted(d for d, v in verdicts.items() if v == "not testable")
    testable = calibration.filter(pl.col("status") != "not testable")
    passed = not failed and len(untestable) < len(verdicts)
    if failed:
        description = f"too many small p-values under the null in: {', '.join(failed)}"
    elif not passed:
        description = "not testable: no database had enough null tests to detect miscalibrated p-values"
    else:
        description = "null p-values within their binomial bounds"
        description += f"; not testable: {', '.join(untestable)}" if untestable else ""
    columns = ["database", "threshold", "n_sets", "n_tests", "observed", "expected", "ratio", "design_effect"]
    shown = calibration.select(*columns, "detectable_ratio", "p_too_many", "status")
    metadata = {
        "verdicts": verdicts,
        "worst_ratio": float(testable["ratio"].max()) if testable.height else None,  # type: ignore[arg-type]
        "level": float(calibration["level"].max()) if calibration.height else None,  # type: ignore[arg-type]
        "random_sets": int(calibration["n_sets"].max()) if calibration.height else 0,  # type: ignore[arg-type]
        "per_database": Markdown(format_frame(shown, "table")),
    }
    return CheckOutcome(CALIBRATION_CHECK, passed, description, metadata, blocking=bool(failed))


def run_enrichment_baselines(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    warehouse: Path,
    sae_tables: dict[str, pl.DataFrame],
    genes: pl.DataFrame,
    settings: EnrichmentSettings,
    association: AssociationSettings,
    baseline: Any = None,
    log: Log | None = None,
) -> StageResult:
    """The SAE's features against PCA and random directions of the same activations, each unit tied to
    genes and tested the same way (`sae_tables`: feature_genes and feature_stats of the partition;
    `baseline`: BaselineSettings, None for its defaults)."""
    from sae_genomics_core.enrichment.baselines import BaselineSettings, EnrichmentInputs, run_baselines
    from sae_genomics_core.enrichment.inputs import background_genes

    log = log or default_log()
    annotations = _annotations(warehouse)
    if not annotations.tables:
        from sae_genomics_core.enrichment.baselines import BASELINE_SCHEMA

        log.warning(f"enrichment_baselines not run: {NO_ANNOTATIONS}")
        empty = pl.DataFrame(schema=BASELINE_SCHEMA)
        return StageResult(
            tables={"enrichment_baselines": _keyed(empty, dataset, layer, sae_tables["feature_genes"])},
            summary=_not_run(),
        )
    activations, hook, loaded = open_partition(store, dataset, layer, sae_device())
    for name, rows in sae_tables.items():
        refuse_stale(rows, store, dataset, layer, name)
    feature_genes, feature_stats = sae_tables["feature_genes"], sae_tables["feature_stats"]
    vocab = json.loads((activations.root / "vocab.json").read_text())
    inputs = EnrichmentInputs(
        genes, vocab, background_genes(genes, vocab), annotations.tables, annotations.ontologies, settings
    )
    sae_units = (_unit_genes(feature_genes), feature_stats.sort("feature")["frequency"].to_numpy())
    run = run_baselines(
        activations, layer, hook, loaded, sae_units, inputs, association, baseline or BaselineSettings()
    )
    frame = run.table
    wide = frame.pivot(on="method", index="database", values="fraction_significant")
    firing = frame.unique("method").sort("method").select("method", "rate_p10", "rate_p50", "rate_p90")
    return StageResult(
        tables={"enrichment_baselines": _keyed(frame, dataset, layer, feature_genes)},
        summary={
            "rows": frame.height,
            "units": run.n_units,
            "fit_tokens": run.fit_tokens,
            # the SAE side reads feature_genes as the features stage wrote it: these must equal its settings
            "association": {
                "top_genes": association.top_genes,
                "min_gene_tokens": association.min_gene_tokens,
            },
            "fraction_significant": Markdown(format_frame(wide, "table")),
            "firing_rates": Markdown(format_frame(firing, "table")),
        },
    )
