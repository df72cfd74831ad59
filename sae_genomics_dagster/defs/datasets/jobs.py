"""The job a newly registered dataset runs: ingest, then the model's forward pass."""

import dagster as dg

from sae_genomics_dagster.partitions import dataset_partitions

dataset_pipeline_job = dg.define_asset_job(
    "dataset_pipeline",
    selection=dg.AssetSelection.groups("datasets", "activations").materializable(),
    partitions_def=dataset_partitions,
    description="Everything for one registered dataset: validate and ingest the .h5ad, run the model, catalogue "
    "the activations.",
)
