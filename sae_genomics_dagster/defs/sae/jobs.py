"""The job of one dataset × layer: everything downstream of its activations."""

import dagster as dg

from sae_genomics_dagster.partitions import dataset_layer

sae_pipeline_job = dg.define_asset_job(
    "sae_pipeline",
    selection=dg.AssetSelection.groups("sae", "features", "effects", "enrichment", "reports"),
    partitions_def=dataset_layer,
    description="Train the SAE of one dataset × layer, write its checkpoint row and training log, tie its features "
    "to genes, cells and cell types, test them for enrichment against the annotation databases and the PCA and "
    "random baselines, and write the feature pages.",
)
