"""Dataset ingestion: the registered .h5ad becomes the `cells`, `genes` and `datasets` tables.

Runner: sae_genomics_core.pipeline.ingest.run_ingest.
"""

from collections.abc import Iterator

import dagster as dg

from sae_genomics_core.pipeline.ingest import run_ingest
from sae_genomics_dagster.common import BY_DATASET, OWNERS, metadata, table_out, user_errors
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import HomeResource

GROUP = "datasets"

dataset_h5ad = dg.AssetSpec(
    "dataset_h5ad",
    partitions_def=dataset_partitions,
    group_name=GROUP,
    kinds={"h5ad"},
    owners=OWNERS,
    description=(
        "A registered single-cell dataset (.h5ad file). Registered by dropping the file into "
        "$SAE_GENOMICS_HOME/incoming/ (the `incoming_h5ad` sensor) or with `sae-genomics register PATH`."
    ),
)


@dg.multi_asset(
    outs={
        "cells": table_out(
            "One row per cell: id, cell type, genes expressed, total counts. Table `cells`.",
            GROUP,
            BY_DATASET,
        ),
        "genes": table_out(
            "One row per gene: Ensembl id, symbol, cells expressing it. Table `genes`.", GROUP, BY_DATASET
        ),
        "datasets": table_out(
            "One row per dataset: source, sizes, checksum, how it was read. Table `datasets`.",
            GROUP,
            BY_DATASET,
        ),
    },
    deps=[dataset_h5ad],
    partitions_def=dataset_partitions,
    pool="duckdb",
)
def dataset_tables(context: dg.AssetExecutionContext, home: HomeResource) -> Iterator[dg.Output]:
    """Validate the dataset's .h5ad and write its cells, genes and datasets rows (one streamed pass)."""
    with user_errors():  # nothing is yielded before, so no table is touched
        result = run_ingest(home.registry.get(context.partition_key), home.home.warehouse, context.log)
    for name, table in result.tables.items():
        yield dg.Output(table, name, metadata=metadata(result.table_summaries[name]))
