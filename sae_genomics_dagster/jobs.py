"""Jobs: what a newly registered dataset runs."""

import dagster as dg

from sae_genomics_dagster.partitions import dataset_partitions

# Everything partitioned by dataset alone; later stages add their assets to this selection.
INGEST_ASSETS = ["cells", "genes", "datasets"]

ingest_dataset_job = dg.define_asset_job(
    "ingest_dataset",
    selection=dg.AssetSelection.assets(*INGEST_ASSETS),
    partitions_def=dataset_partitions,
    description="Validate a registered .h5ad and write its cells, genes and datasets rows.",
)
