"""One runner per stage: each takes its inputs, a settings object and the artefact store, and returns a
StageResult (tables, a plain summary, check verdicts). A notebook runs the whole pipeline with these;
the Dagster assets call the same functions, one each."""

from sae_genomics_core.pipeline.activations import run_activation_sets, run_activations
from sae_genomics_core.pipeline.annotations import (
    RefreshSettings,
    refresh_annotations,
    refresh_gene_identifiers,
    refresh_hpo_ontology,
)
from sae_genomics_core.pipeline.effects import run_feature_effects
from sae_genomics_core.pipeline.enrichment import (
    refresh_feature_summary,
    run_enrichment,
    run_enrichment_baselines,
)
from sae_genomics_core.pipeline.features import run_features
from sae_genomics_core.pipeline.ingest import run_ingest
from sae_genomics_core.pipeline.pages import run_pages
from sae_genomics_core.pipeline.result import CheckOutcome, StageResult
from sae_genomics_core.pipeline.sae import FidelityModel, run_sae, run_sae_tables

__all__ = [
    "CheckOutcome",
    "FidelityModel",
    "RefreshSettings",
    "StageResult",
    "refresh_annotations",
    "refresh_feature_summary",
    "refresh_gene_identifiers",
    "refresh_hpo_ontology",
    "run_activation_sets",
    "run_activations",
    "run_enrichment",
    "run_enrichment_baselines",
    "run_feature_effects",
    "run_features",
    "run_ingest",
    "run_pages",
    "run_sae",
    "run_sae_tables",
]
