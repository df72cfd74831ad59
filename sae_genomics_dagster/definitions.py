"""The Dagster entry point: `dagster dev -m sae_genomics_dagster.definitions` (or workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from sae_genomics_core.annotations.refresh import client_class
from sae_genomics_core.config import Environment, Home
from sae_genomics_core.model.specs import n_layers_of
from sae_genomics_dagster.assets.activations import activation_sets, activations
from sae_genomics_dagster.assets.annotations import (
    build_annotation_assets,
    build_annotation_schedules,
    gene_identifiers,
)
from sae_genomics_dagster.assets.data import dataset_h5ad, dataset_tables
from sae_genomics_dagster.assets.enrichment import build_enrichment_assets
from sae_genomics_dagster.assets.features import build_feature_assets
from sae_genomics_dagster.assets.pages import build_page_assets
from sae_genomics_dagster.assets.sae import build_sae_assets
from sae_genomics_dagster.io_manager import WarehouseIOManager
from sae_genomics_dagster.jobs import build_sae_job, dataset_pipeline_job
from sae_genomics_dagster.partitions import dataset_layer_partitions
from sae_genomics_dagster.resources import HomeResource, ModelResource
from sae_genomics_dagster.run_health import die_with_parent
from sae_genomics_dagster.sensors import build_incoming_sensor, build_sae_after_ingest_sensor

die_with_parent()  # a step process (or run worker) imports this first: it must not outlive its parent


def build_definitions(home: Home | None = None) -> dg.Definitions:
    """All definitions for one home (tests pass a temporary one; the default comes from the environment)."""
    home = (home or Home.from_env()).ensure()
    environment = Environment.read()
    model_spec = environment.model
    partitions = dataset_layer_partitions(n_layers_of(model_spec))
    sae_job = build_sae_job(partitions)
    annotation_assets = build_annotation_assets()
    # A key-gated source without its key ends without output, and Dagster skips whatever depends on it in
    # the same run: enrichment reads such tables when they exist but does not wait on them.
    always_available = [
        key
        for asset in annotation_assets
        for key in asset.keys
        if not client_class(key.path[-1].removeprefix("annotations_")).needs_key
    ]
    hpo_ontology, *enrichment_assets = build_enrichment_assets(partitions, always_available)
    return dg.Definitions(
        assets=[
            dataset_h5ad,
            dataset_tables,
            activations,
            activation_sets,
            *build_sae_assets(partitions),
            *build_feature_assets(partitions),
            gene_identifiers,
            *annotation_assets,
            hpo_ontology,
            *enrichment_assets,
            *build_page_assets(partitions),
        ],
        schedules=build_annotation_schedules([*annotation_assets, hpo_ontology]),
        jobs=[dataset_pipeline_job, sae_job],
        sensors=[build_incoming_sensor(home), build_sae_after_ingest_sensor(home, sae_job)],
        resources={
            "home": HomeResource(root=str(home.root)),
            "warehouse": WarehouseIOManager(database=str(home.warehouse), schema="main"),
            "model": ModelResource(
                spec=model_spec,
                device=environment.device,
            ),
        },
    )


defs = build_definitions()
