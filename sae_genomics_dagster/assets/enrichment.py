"""Enrichment [dataset × layer]: which SAE features mean something biological, against which baselines.

Logic: sae_genomics_core.enrichment (enrich, calibrate, baselines, ontology). Also the `hpo_ontology`
asset (hp.obo, refreshed with the HPO annotations) that HPO enrichment propagates terms through.
"""

import json
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.annotations.base import load_sources, snapshots_dir
from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.warehouse.sql import format_frame
from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import warehouse_writer
from sae_genomics_dagster.assets.activations import CURRENT
from sae_genomics_dagster.assets.annotations import GROUP as ANNOTATION_GROUP
from sae_genomics_dagster.assets.annotations import AnnotationRefreshConfig
from sae_genomics_dagster.assets.common import (
    BY_DATASET_LAYER,
    OWNERS,
    chart_metadata,
    charts_dir,
    sae_device,
    user_errors,
)
from sae_genomics_dagster.assets.features import ASSOCIATION, open_partition, refuse_stale
from sae_genomics_dagster.resources import HomeResource

GROUP = "enrichment"
CALIBRATION_CHECK = "calibration"
HPO_SNAPSHOT_GLOB = "hp.*.json.gz"


ENRICHMENT = EnrichmentSettings()  # the core defaults


class EnrichmentConfig(dg.Config):
    """Run config of `enrichment`; every default is the core one (EnrichmentSettings)."""

    gene_set_size: int = Field(
        default=ENRICHMENT.gene_set_size, description="a feature's gene set: its top N genes"
    )
    gene_set_scope: str = Field(
        default=ENRICHMENT.gene_set_scope,
        description="`background`: the top N genes, then those the database annotates (gene list ∩ universe); "
        "`universe`: the top N among the genes the database annotates (always N, reaching deeper)",
    )
    gene_set_order: str = Field(
        default=ENRICHMENT.gene_set_order,
        description="rank the feature's feature_genes rows by `score` (Σ activation × expression) or by `rank` "
        "(specificity first); feature_genes already keeps only genes ranked by specificity",
    )
    min_term_size: int = Field(
        default=ENRICHMENT.min_term_size, description="terms with fewer genes in the universe are not tested"
    )
    max_term_fraction: float | None = Field(
        default=None,
        description="terms holding more than this fraction of the database's universe are not tested "
        "(unset: the core default, EnrichmentSettings.max_term_fraction)",
    )
    max_term_size: int | None = Field(
        default=ENRICHMENT.max_term_size,
        description="an absolute largest term size (genes in the universe); set, it replaces max_term_fraction",
    )
    min_overlap: int = Field(
        default=ENRICHMENT.min_overlap,
        description="pairs with a smaller overlap count as p = 1 (still in BH)",
    )
    fdr: float = Field(default=ENRICHMENT.fdr, description="BH level per dataset × layer × database")
    annotated_only: bool = Field(
        default=ENRICHMENT.annotated_only,
        description="universe per database = background genes that database annotates",
    )
    only_most_specific: bool = Field(
        default=ENRICHMENT.only_most_specific,
        description="HPO: drop significant terms that have a significant descendant",
    )
    hpo_branch: str = Field(
        default=dict(ENRICHMENT.term_roots).get("hpo", ""),
        description="HPO: test only terms below this one (Phenotypic abnormality); empty: every term",
    )
    min_network_score: float = Field(
        default=ENRICHMENT.min_network_score,
        description="STRING edges: score (recombined from the channels in sources.yaml) at least this",
    )
    seed: int = Field(default=ENRICHMENT.seed, description="random gene sets, random directions")

    def settings(self) -> Any:
        with user_errors("enrichment settings"):
            return EnrichmentSettings(
                gene_set_size=self.gene_set_size,
                gene_set_order=self.gene_set_order,  # type: ignore[arg-type]
                gene_set_scope=self.gene_set_scope,  # type: ignore[arg-type]
                term_roots=(("hpo", self.hpo_branch),) if self.hpo_branch else (),
                min_term_size=self.min_term_size,
                max_term_size=self.max_term_size,
                min_overlap=self.min_overlap,
                fdr=self.fdr,
                annotated_only=self.annotated_only,
                only_most_specific=self.only_most_specific,
                min_network_score=self.min_network_score,
                seed=self.seed,
                **_given(max_term_fraction=self.max_term_fraction),
            )


def _given(**values: Any) -> dict[str, Any]:
    """The options a run config set; the others keep their one default, in core."""
    return {name: value for name, value in values.items() if value is not None}


class CalibratedEnrichmentConfig(EnrichmentConfig):
    calibration_repeats: int | None = Field(
        default=None,
        ge=1,
        description="asset check: shuffles of all the feature gene sets (unset: core default)",
    )
    calibration_level: float | None = Field(
        default=None,
        description="asset check: its false-alarm rate over all thresholds and databases (unset: core default)",
    )

    def calibration(self) -> Any:
        from sae_genomics_core.enrichment.enrich import CalibrationSettings

        with user_errors("calibration settings"):
            return CalibrationSettings(
                **_given(repeats=self.calibration_repeats, level=self.calibration_level)
            )


class BaselineConfig(EnrichmentConfig):
    baseline_units: int | None = Field(
        default=None, description="PCA (± axes) and random directions each; default min(d_sae, 2 × d_in)"
    )
    pca_tokens: int | None = Field(
        default=None,
        description="tokens (spread over the shards) the PCA and the per-unit firing thresholds are fitted on "
        "(unset: the core default, BaselineSettings.fit_tokens)",
    )
    pca_variance: float | None = Field(
        default=None,
        description="PCA baseline: the top axes explaining this fraction of the variance (unset: core default)",
    )
    top_genes: int = Field(
        default=ASSOCIATION.top_genes, description="as the features asset: genes kept per unit"
    )
    min_gene_tokens: int = Field(default=ASSOCIATION.min_gene_tokens, description="as the features asset")
    batch_tokens: int = Field(default=ASSOCIATION.batch_tokens, description="tokens encoded at once")

    def baseline(self) -> Any:
        from sae_genomics_core.enrichment.baselines import BaselineSettings

        chosen = _given(units=self.baseline_units, fit_tokens=self.pca_tokens, pca_variance=self.pca_variance)
        return BaselineSettings(seed=self.seed, **chosen)


NO_ANNOTATIONS = (
    "no annotation tables yet, so nothing to test: run `sae-genomics annotate` (or materialise the "
    "annotations_<db> assets), then materialise this asset again"
)


def _context_inputs(home: HomeResource) -> tuple[dict[str, pl.DataFrame], dict[str, Any], dict[str, str]]:
    from sae_genomics_core.enrichment.inputs import load_annotations, load_ontology, source_versions

    annotations = load_annotations(home.home.warehouse)
    ontology = load_ontology(home.home.warehouse)
    ontologies = {"hpo": ontology} if ontology is not None and "hpo" in annotations else {}
    return annotations, ontologies, source_versions(annotations)


def _vocab(home: HomeResource, dataset: str) -> dict[str, int]:
    pointer = home.home.artefacts / "activations" / dataset / CURRENT
    if not pointer.exists():
        raise dg.Failure(description=f"no activations for {dataset}: materialise `activations` first")
    return json.loads((Path(json.loads(pointer.read_text())["path"]) / "vocab.json").read_text())


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


def _partitioned_check_spec(name: str, **kwargs: Any) -> dg.AssetCheckSpec:
    """Partitioned asset checks are a preview feature of Dagster 1.13 (pinned in requirements.lock); the
    per-partition verdict is what the calibration means, so its warning is expected, not shown each load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, **kwargs)


def _calibration_result(calibration: pl.DataFrame) -> dg.AssetCheckResult:
    """Fails on a database beyond its bound; with no testable database it says so (WARN), never passes."""
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
    return dg.AssetCheckResult(
        check_name=CALIBRATION_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "verdicts": dg.MetadataValue.json(verdicts),
            "worst_ratio": float(testable["ratio"].max()) if testable.height else None,  # type: ignore[arg-type]
            "level": float(calibration["level"].max()) if calibration.height else None,  # type: ignore[arg-type]
            "random_sets": int(calibration["n_sets"].max()) if calibration.height else 0,
            "per_database": dg.MetadataValue.md(format_frame(shown, "table")),
        },
    )


def build_enrichment_assets(
    partitions: dg.MultiPartitionsDefinition, annotation_keys: list[dg.AssetKey]
) -> list:
    @dg.asset(
        name="hpo_ontology",
        io_manager_key="warehouse",
        group_name=ANNOTATION_GROUP,
        kinds={"duckdb", "polars"},
        owners=OWNERS,
        pool="duckdb",
        description="The Human Phenotype Ontology (hp.obo, URL in external/sources.yaml), parsed with pronto: one "
        "row per term with its is_a ancestors (nearest first). HPO enrichment propagates gene annotations up "
        "it (true-path rule). Table `hpo_ontology`.",
    )
    def hpo_ontology(context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource):
        from sae_genomics_core.annotations.errors import AnnotationError
        from sae_genomics_core.enrichment.inputs import ontology_table
        from sae_genomics_core.enrichment.ontology import fetch_ontology, read_ontology

        mode = config.resolved_mode()
        source = load_sources()["hpo"]
        try:
            if mode == "file":
                if len(config.files) != 1:
                    raise dg.Failure(
                        description="hpo_ontology in file mode reads one hp.obo (or hp.json): set files"
                    )
                path = config.files[0]
            elif mode == "snapshot":
                found = sorted((snapshots_dir() / "hpo").glob(HPO_SNAPSHOT_GLOB))
                if not found:
                    raise dg.Failure(
                        description=f"no HPO ontology snapshot ({HPO_SNAPSHOT_GLOB}) in {snapshots_dir() / 'hpo'}"
                    )
                path = found[-1]
            else:
                url = source.extra.get("ontology_url") or "https://purl.obolibrary.org/obo/hp.obo"
                path = fetch_ontology(url, home.home.cache / "http")
            ontology = read_ontology(path, "hpo")  # type: ignore[arg-type]
        except AnnotationError as error:
            raise dg.Failure(
                description=f"hpo_ontology not refreshed (previous table kept): {error}"
            ) from error
        table = ontology_table(ontology)
        context.log.info(
            f"HPO {ontology.version}: {ontology.terms.height:,} terms, {ontology.ancestors.height:,} ancestor pairs"
        )
        return dg.Output(
            table,
            metadata={
                "source_version": ontology.version,
                "mode": mode,
                "terms": ontology.terms.height,
                "obsolete_terms": int(ontology.terms["is_obsolete"].sum()),
                "ancestor_pairs": ontology.ancestors.height,
            },
        )

    @dg.asset(
        name="enrichment",
        io_manager_key="warehouse",
        output_required=False,
        metadata=BY_DATASET_LAYER,
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb", "polars", "scipy"},
        owners=OWNERS,
        ins={"feature_genes": dg.AssetIn(input_manager_key="warehouse"), "genes": dg.AssetIn()},
        deps=[*annotation_keys, "hpo_ontology"],
        check_specs=[
            _partitioned_check_spec(
                CALIBRATION_CHECK,
                asset="enrichment",
                partitions_def=partitions,  # one verdict per dataset × layer, not the latest layer's for all
                description="the features' genes shuffled across features (each feature keeps its number of genes, "
                "each gene its frequency) through the same selection and tests: per database, the number of null "
                "tests with p ≤ 0.01 and ≤ 0.001 within an exact binomial bound of the test's attainable level; "
                "a database with too few null tests is 'not testable', never a pass",
            )
        ],
        description="One-sided hypergeometric tests (= Fisher exact, greater) of every feature's top genes against "
        "every term of each annotation database, BH per database; background = model vocab ∩ expressed genes; "
        "HPO propagated up the ontology; STRING by a network statistic (edges within the set vs a degree-aware "
        "null). `evidence_source`: the independent source a row counts for (databases derived from another, "
        "`derived_from` in external/sources.yaml, share one). Table `enrichment`.",
    )
    def enrichment(
        context: dg.AssetExecutionContext,
        config: CalibratedEnrichmentConfig,
        home: HomeResource,
        feature_genes: pl.DataFrame,
        genes: pl.DataFrame,
    ):
        from sae_genomics_core.enrichment.enrich import (
            calibrate,
            enrich,
            evidence_sources,
            with_evidence_source,
        )
        from sae_genomics_core.enrichment.inputs import background_genes

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        settings = config.settings()
        if feature_genes.height == 0:
            raise dg.Failure(
                description=f"no feature_genes for {dataset} layer {layer}: materialise the features first"
            )
        refuse_stale(feature_genes, home, dataset, layer, "feature_genes")
        annotations, ontologies, versions = _context_inputs(home)
        if not annotations:  # a dataset processed before any annotation refresh: not a failure
            context.log.warning(f"enrichment skipped: {NO_ANNOTATIONS}")
            # the check's result is required with the asset; it says plainly that nothing was measured
            yield dg.AssetCheckResult(
                check_name=CALIBRATION_CHECK,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"not evaluated: {NO_ANNOTATIONS}",
            )
            return
        unit_genes = _unit_genes(feature_genes)
        with user_errors(f"enrichment of {dataset} layer {layer} not run"):
            background = background_genes(genes, _vocab(home, dataset))
            result = enrich(unit_genes, background, annotations, settings, ontologies)
        derived_from = {name: source.extra.get("derived_from", []) for name, source in load_sources().items()}
        table = _keyed(
            with_evidence_source(result.table, evidence_sources(derived_from)).join(
                pl.DataFrame({"database": list(versions), "source_version": list(versions.values())}),
                on="database",
                how="left",
            ),
            dataset,
            layer,
            feature_genes,
        ).sort("database", "feature", "log10_p_value")
        summary = result.summary_frame()
        calibration = calibrate(
            unit_genes, background, annotations, settings, ontologies, config.calibration()
        )

        context.log.info(
            f"{dataset} L{layer}: {table.height:,} tested pairs; "
            + ", ".join(
                f"{r['database']} {r['n_units_significant']}/{r['n_units']}"
                for r in summary.iter_rows(named=True)
            )
        )
        from sae_genomics_core.viz.charts import enrichment_dot_plot

        charts = {}
        if table.height:
            dot_plot = enrichment_dot_plot(table, f"strongest feature × term pairs, {dataset} layer {layer}")
            charts["enrichment_dot_plot"] = chart_metadata(
                charts_dir(home.home, dataset, layer), "enrichment_dot_plot", dot_plot
            )
        yield dg.Output(
            table,
            metadata={
                **charts,
                "rows": table.height,
                "background_genes": len(background),
                "significant_pairs": int(table["significant"].sum()),
                "features_with_a_significant_term": table.filter("significant")["feature"].n_unique(),
                "per_database": dg.MetadataValue.md(format_frame(summary, "table")),
                "source_versions": dg.MetadataValue.json(versions),
                "hpo_ontology": ontologies["hpo"].version
                if "hpo" in ontologies
                else "not propagated (no hpo_ontology)",
            },
        )
        yield _calibration_result(calibration)
        database = str(home.home.warehouse)
        with warehouse_writer(database) as connection:
            create_feature_summary(connection)

    @dg.asset(
        name="enrichment_baselines",
        io_manager_key="warehouse",
        output_required=False,
        metadata=BY_DATASET_LAYER,
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb", "torch"},
        owners=OWNERS,
        ins={
            "feature_genes": dg.AssetIn(input_manager_key="warehouse"),
            "feature_stats": dg.AssetIn(input_manager_key="warehouse"),
            "genes": dg.AssetIn(),
        },
        deps=["enrichment", "sae_checkpoint", "activations"],
        pool="gpu",
        description="SAE features vs PCA directions (top axes by explained variance) vs random directions of the "
        "same activations, each baseline unit firing on as many tokens as the SAE feature of the same rank, all "
        "tied to genes by the same association and tested by the same enrichment: per database, the fraction of "
        "units with at least one significant term, the distinct terms found and their redundancy (units sharing "
        "a top term), and per method the firing-rate percentiles. Table `enrichment_baselines`.",
    )
    def enrichment_baselines(
        context: dg.AssetExecutionContext,
        config: BaselineConfig,
        home: HomeResource,
        feature_genes: pl.DataFrame,
        feature_stats: pl.DataFrame,
        genes: pl.DataFrame,
    ):
        from sae_genomics_core.enrichment.baselines import EnrichmentInputs, run_baselines
        from sae_genomics_core.enrichment.inputs import background_genes
        from sae_genomics_core.features.associate import AssociationSettings

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        annotations, ontologies, _ = _context_inputs(home)
        if not annotations:
            context.log.warning(f"enrichment_baselines skipped: {NO_ANNOTATIONS}")
            return
        store, hook, loaded = open_partition(home, dataset, layer)
        for name, rows in {"feature_genes": feature_genes, "feature_stats": feature_stats}.items():
            refuse_stale(rows, home, dataset, layer, name)
        vocab = json.loads((store.root / "vocab.json").read_text())
        inputs = EnrichmentInputs(
            genes, vocab, background_genes(genes, vocab), annotations, ontologies, config.settings()
        )
        association = AssociationSettings(
            top_genes=config.top_genes,
            top_cells=0,
            min_gene_tokens=config.min_gene_tokens,
            batch_tokens=config.batch_tokens,
            device=sae_device(),
        )
        sae_units = (_unit_genes(feature_genes), feature_stats.sort("feature")["frequency"].to_numpy())
        run = run_baselines(store, layer, hook, loaded, sae_units, inputs, association, config.baseline())
        frame = run.table
        wide = frame.pivot(on="method", index="database", values="fraction_significant")
        firing = frame.unique("method").sort("method").select("method", "rate_p10", "rate_p50", "rate_p90")
        yield dg.Output(
            _keyed(frame, dataset, layer, feature_genes),
            metadata={
                "rows": frame.height,
                "units": dg.MetadataValue.json(run.n_units),
                "fit_tokens": run.fit_tokens,
                # the SAE side reads feature_genes as the features asset wrote it: keep these equal to its config
                "association": dg.MetadataValue.json(
                    {"top_genes": config.top_genes, "min_gene_tokens": config.min_gene_tokens}
                ),
                "fraction_significant": dg.MetadataValue.md(format_frame(wide, "table")),
                "firing_rates": dg.MetadataValue.md(format_frame(firing, "table")),
            },
        )

    return [hpo_ontology, enrichment, enrichment_baselines]
