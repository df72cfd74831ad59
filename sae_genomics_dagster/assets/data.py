"""Dataset ingestion: the registered .h5ad becomes the `cells`, `genes` and `datasets` tables.

Logic: sae_genomics_core.data.h5ad.inspect_h5ad (validation and the streamed matrix scan).
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids
from sae_genomics_core.data.h5ad import file_checksum, inspect_h5ad
from sae_genomics_core.warehouse.sql import format_frame
from sae_genomics_dagster.assets.common import BY_DATASET, OWNERS, table_out, user_errors
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


def _out(description: str) -> dg.AssetOut:
    return table_out(description, GROUP, BY_DATASET)


@dg.multi_asset(
    outs={
        "cells": _out("One row per cell: id, cell type, genes expressed, total counts. Table `cells`."),
        "genes": _out("One row per gene: Ensembl id, symbol, cells expressing it. Table `genes`."),
        "datasets": _out("One row per dataset: source, sizes, checksum, how it was read. Table `datasets`."),
    },
    deps=[dataset_h5ad],
    partitions_def=dataset_partitions,
    pool="duckdb",
)
def dataset_tables(context: dg.AssetExecutionContext, home: HomeResource) -> Iterator[dg.Output]:
    """Validate the dataset's .h5ad and write its cells, genes and datasets rows (one streamed pass)."""
    dataset = context.partition_key
    with user_errors():  # nothing is yielded before, so no table is touched
        entry = home.registry.get(dataset)
        tables = inspect_h5ad(entry.path, entry.options)
    report = tables.report
    resolver, resolver_label = default_resolver(home.home.warehouse)
    genes, mapping = map_gene_ids(tables.genes, resolver)
    n_with_ensembl = int(genes["ensembl_id"].is_not_null().sum())
    if mapping is not None and mapping.n_queries:
        context.log.info(f"{dataset}: gene symbols → Ensembl via {resolver_label}: {mapping.summary()}")
    context.log.info(
        f"{dataset}: {report.n_cells} cells × {report.n_genes} genes from {report.matrix_source}"
    )
    for warning in report.warnings:
        context.log.warning(warning)

    checksum = file_checksum(entry.path)
    key_column = pl.lit(dataset).alias("dataset")
    summary = pl.DataFrame(
        {
            "dataset": [dataset],
            "source_path": [str(entry.path)],
            "n_cells": [report.n_cells],
            "n_genes": [report.n_genes],
            "n_genes_in_vocab": pl.Series([None], dtype=pl.Int64),
            "checksum": [checksum],
            "matrix_source": [report.matrix_source],
            "value_kind": [report.value_kind],
            "gene_id_source": [report.gene_id_source],
            "n_genes_with_ensembl": [n_with_ensembl],
            "gene_id_mapping": [resolver_label],
            "cell_type_key": pl.Series([report.cell_type_key], dtype=pl.String),
            "n_cell_types": [report.n_cell_types],
            "n_empty_cells": [report.n_empty_cells],
            "validation_warnings": [report.warnings],
            "ingested_at": [datetime.now(UTC)],
            "sample_key": pl.Series([report.sample_key], dtype=pl.String),
            "n_samples": [report.n_samples],
        },
        schema_overrides={"validation_warnings": pl.List(pl.String)},
    )
    shared = {
        "validation_report": dg.MetadataValue.md(report.to_markdown()),
        "source_path": dg.MetadataValue.path(str(entry.path)),
        "checksum": checksum,
    }
    cell_type_counts = (
        tables.cells.group_by("cell_type").len().sort("len", descending=True).rename({"len": "n_cells"})
    )
    yield dg.Output(
        tables.cells.select(key_column, pl.all()),
        "cells",
        metadata={
            **shared,
            "n_cells": report.n_cells,
            "n_empty_cells": report.n_empty_cells,
            "n_cell_types": report.n_cell_types,
            "sample_key": str(report.sample_key),
            "n_samples": report.n_samples,
            "cell_types": dg.MetadataValue.md(format_frame(cell_type_counts, "table")),
        },
    )
    mapping_metadata = (
        {"id_mapping": dg.MetadataValue.json(mapping.as_metadata()), "id_mapping_summary": mapping.summary()}
        if mapping is not None
        else {}
    )
    yield dg.Output(
        genes.select(key_column, pl.all()),
        "genes",
        metadata={
            **shared,
            "n_genes": report.n_genes,
            "n_genes_with_ensembl": n_with_ensembl,
            "n_genes_with_ensembl_in_file": report.n_genes_with_ensembl,
            "gene_id_source": report.gene_id_source,
            "gene_id_mapping": resolver_label,
            **mapping_metadata,
        },
    )
    yield dg.Output(summary, "datasets", metadata={**shared, "value_kind": report.value_kind})
