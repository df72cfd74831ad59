"""Jobs: what a newly registered dataset runs."""

from typing import Any

import dagster as dg

from sae_genomics_dagster.partitions import dataset_partitions

# Everything partitioned by dataset alone, in graph order; later stages add their assets here.
DATASET_ASSETS = ["cells", "genes", "datasets", "activations", "activation_sets"]

dataset_pipeline_job = dg.define_asset_job(
    "dataset_pipeline",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS),
    partitions_def=dataset_partitions,
    description="Everything for one registered dataset: validate and ingest the .h5ad, run the model, catalogue the activations.",
)


# Everything partitioned by dataset × layer, in graph order.
SAE_ASSETS = [
    "sae_checkpoint",
    "sae_checkpoints",
    "sae_training_log",
    "feature_stats",
    "feature_genes",
    "feature_cells",
    "feature_cell_types",
    "feature_histograms",
    "enrichment",
    "enrichment_baselines",
    "feature_pages",
]


def build_sae_job(partitions: dg.MultiPartitionsDefinition) -> Any:  # an unresolved asset job
    return dg.define_asset_job(
        "sae_pipeline",
        selection=dg.AssetSelection.assets(*SAE_ASSETS),
        partitions_def=partitions,
        description="Train the SAE of one dataset × layer, write its checkpoint row and training log, tie its features to genes, cells and cell types, and test them for enrichment against the annotation databases and the PCA and random baselines, and write the feature pages.",
    )
