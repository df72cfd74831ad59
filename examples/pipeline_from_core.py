"""The whole pipeline from a notebook or script, without Dagster: one runner per stage, the same functions
the Dagster assets call. Run: `python examples/pipeline_from_core.py DATA.h5ad HOME [CELL_TYPE_KEY]`
(offline: the tiny-random model and the bundled annotation snapshots)."""

import sys
from pathlib import Path

from sae_genomics_core import pipeline
from sae_genomics_core.activations.settings import ExtractionSettings
from sae_genomics_core.annotations.store import read_table
from sae_genomics_core.artefacts import artefact_store
from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetOptions
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.model.choice import ModelChoice
from sae_genomics_core.sae.settings import EffectSettings, SaeStageSettings, SaeTrainingConfig

DATASET, LAYER = "notebook", 1


def main(h5ad: str, home_dir: str, cell_type_key: str | None = None) -> None:
    home = Home(Path(home_dir)).ensure()
    store, warehouse = artefact_store(home), home.warehouse
    snapshot = pipeline.RefreshSettings(mode="snapshot")
    pipeline.refresh_gene_identifiers(snapshot, warehouse, home.cache).save(warehouse)
    entry, _ = Registry(home).register(h5ad, DATASET, DatasetOptions(cell_type_key=cell_type_key))
    pipeline.run_ingest(entry, warehouse).save(warehouse, dataset=DATASET)
    pipeline.run_activations(
        entry, store, warehouse, ModelChoice(spec="tiny-random"), ExtractionSettings(layers=(LAYER,))
    )
    pipeline.run_activation_sets(DATASET, store, warehouse).save(warehouse, dataset=DATASET)
    small = SaeStageSettings(training=SaeTrainingConfig(training_tokens=40_000, batch_size=2048))
    model = pipeline.FidelityModel(ModelChoice(spec="tiny-random"), warehouse)  # for loss recovered, effects
    sae = pipeline.run_sae(DATASET, LAYER, store, small, model=model).summary
    print("SAE:", sae["explained_variance"], "loss recovered:", sae["loss_recovered_expr_zero"])
    pipeline.run_sae_tables(DATASET, LAYER, store).save(warehouse, dataset=DATASET, layer=LAYER)
    cells = read_table(warehouse, "cells").filter(dataset=DATASET)
    genes = read_table(warehouse, "genes").filter(dataset=DATASET)
    features = pipeline.run_features(DATASET, LAYER, store, warehouse, cells, genes, AssociationSettings())
    effects = pipeline.run_feature_effects(
        DATASET, LAYER, store, warehouse, cells, genes, model, EffectSettings()
    )
    print("feature effects:", effects.summary["features"], "features")
    for database in ("hpo", "gencc"):
        pipeline.refresh_annotations(database, snapshot, warehouse, home.cache).save(warehouse)
    pipeline.refresh_hpo_ontology(snapshot, home.cache).save(warehouse)
    enrichment = pipeline.run_enrichment(
        DATASET, LAYER, store, warehouse, features.tables["feature_genes"], genes, EnrichmentSettings()
    )
    enrichment.save(warehouse, dataset=DATASET, layer=LAYER)
    pipeline.refresh_feature_summary(warehouse)
    print("enrichment:", enrichment.summary["rows"], "pairs;", enrichment.checks[0].description)
    print("pages:", pipeline.run_pages(DATASET, LAYER, store, warehouse).summary["path"])


if __name__ == "__main__":
    main(*sys.argv[1:])
