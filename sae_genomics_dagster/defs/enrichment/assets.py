"""Enrichment [dataset × layer]: which SAE features mean something biological, against which baselines.

Runners: sae_genomics_core.pipeline.enrichment.run_enrichment and run_enrichment_baselines.
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.pipeline.enrichment import (
    CALIBRATION_CHECK,
    refresh_feature_summary,
    run_enrichment,
    run_enrichment_baselines,
)
from sae_genomics_dagster.common import (
    BY_DATASET_LAYER,
    GPU_POOL,
    GPU_TAGS,
    OWNERS,
    check_result,
    dataset_layer,
    metadata,
    user_errors,
)
from sae_genomics_dagster.defs.annotations.assets import always_available
from sae_genomics_dagster.defs.features.assets import ASSOCIATION, FeatureConfig
from sae_genomics_dagster.partitions import dataset_layer as partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource

GROUP = "enrichment"
ENRICHMENT = EnrichmentSettings()  # the core defaults


def _given(**values: Any) -> dict[str, Any]:
    """The options a run config set; the others keep their one default, in core."""
    return {name: value for name, value in values.items() if value is not None}


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
    holdout_seed: int = Field(
        default=ENRICHMENT.holdout_seed,
        description="seed of the selection / evaluation halves of the genes (held-out replication)",
    )

    def settings(self) -> EnrichmentSettings:
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
                holdout_seed=self.holdout_seed,
                **_given(max_term_fraction=self.max_term_fraction),
            )


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

    def association(self) -> Any:
        """As the features asset ties features to genes, without keeping top cells."""
        features = FeatureConfig(
            top_genes=self.top_genes,
            top_cells=0,
            min_gene_tokens=self.min_gene_tokens,
            batch_tokens=self.batch_tokens,
        )
        return features.settings()


def _partitioned_check_spec(name: str, **kwargs: Any) -> dg.AssetCheckSpec:
    """Partitioned asset checks are a preview feature of Dagster 1.13 (pinned in requirements.lock); the
    per-partition verdict is what the calibration means, so its warning is expected, not shown each load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, **kwargs)


@dg.asset(
    io_manager_key="warehouse",
    output_required=False,
    metadata=BY_DATASET_LAYER,
    partitions_def=partitions,
    group_name=GROUP,
    kinds={"duckdb", "polars", "scipy"},
    owners=OWNERS,
    ins={"feature_genes": dg.AssetIn(input_manager_key="warehouse"), "genes": dg.AssetIn()},
    deps=[*always_available, "hpo_ontology"],
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
    artefacts: ArtefactsResource,
    feature_genes: pl.DataFrame,
    genes: pl.DataFrame,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    dataset, layer = dataset_layer(context)
    warehouse = home.home.warehouse
    with user_errors(f"enrichment of {dataset} layer {layer} not run"):
        result = run_enrichment(
            dataset,
            layer,
            artefacts.store,
            warehouse,
            feature_genes,
            genes,
            config.settings(),
            config.calibration(),
            context.log,
        )
    if not result.skipped:
        yield dg.Output(result.tables["enrichment"], metadata=metadata(result.summary))
    yield from (check_result(check) for check in result.checks)
    if not result.skipped:
        refresh_feature_summary(warehouse)


@dg.asset(
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
    deps=[enrichment, "sae_checkpoint", "activations"],
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
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
    artefacts: ArtefactsResource,
    feature_genes: pl.DataFrame,
    feature_stats: pl.DataFrame,
    genes: pl.DataFrame,
) -> Iterator[dg.Output]:
    dataset, layer = dataset_layer(context)
    sae_tables = {"feature_genes": feature_genes, "feature_stats": feature_stats}
    with user_errors(f"baselines of {dataset} layer {layer} not run"):
        result = run_enrichment_baselines(
            dataset,
            layer,
            artefacts.store,
            home.home.warehouse,
            sae_tables,
            genes,
            config.settings(),
            config.association(),
            config.baseline(),
            context.log,
        )
    if not result.skipped:
        yield dg.Output(result.tables["enrichment_baselines"], metadata=metadata(result.summary))
