"""Stage runner: a registered .h5ad becomes its `cells`, `genes` and `datasets` rows (one streamed pass)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from sae_genomics_core.data.clusters import CLUSTER_KEY, MIN_CELLS
from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids
from sae_genomics_core.data.h5ad import ValidationReport, file_checksum, inspect_h5ad
from sae_genomics_core.data.registry import DatasetEntry
from sae_genomics_core.pipeline.result import Log, Markdown, StageResult, default_log
from sae_genomics_core.warehouse.sql import format_frame


def run_ingest(entry: DatasetEntry, warehouse: Path, log: Log | None = None) -> StageResult:
    """Validate the dataset's file and build its three tables; a file that fails validation raises
    DatasetError before any table is built."""
    log = log or default_log()
    tables = inspect_h5ad(entry.path, entry.options)
    report = tables.report
    cells = tables.cells
    if report.cell_type_key is None and report.n_cells >= MIN_CELLS:
        cells, report = _clustered(entry, cells, report, log)
    cells = _mapped(entry, cells, report, log)
    resolver, resolver_label = default_resolver(warehouse)
    genes, mapping = map_gene_ids(tables.genes, resolver)
    n_with_ensembl = int(genes["ensembl_id"].is_not_null().sum())
    if mapping is not None and mapping.n_queries:
        log.info(f"{entry.name}: gene symbols → Ensembl via {resolver_label}: {mapping.summary()}")
    log.info(f"{entry.name}: {report.n_cells} cells × {report.n_genes} genes from {report.matrix_source}")
    for warning in report.warnings:
        log.warning(warning)
    checksum = file_checksum(entry.path)
    key = pl.lit(entry.name).alias("dataset")
    shared = {
        "validation_report": Markdown(report.to_markdown()),
        "source_path": Path(entry.path),
        "checksum": checksum,
    }
    cell_type_counts = (
        cells.group_by("cell_type").len().sort("len", descending=True).rename({"len": "n_cells"})
    )
    mapping_summary = (
        {"id_mapping": mapping.as_metadata(), "id_mapping_summary": mapping.summary()} if mapping else {}
    )
    return StageResult(
        tables={
            "cells": cells.select(key, pl.all()),
            "genes": genes.select(key, pl.all()),
            "datasets": _dataset_row(entry, report, checksum, n_with_ensembl, resolver_label),
        },
        table_summaries={
            "cells": {
                **shared,
                "n_cells": report.n_cells,
                "n_empty_cells": report.n_empty_cells,
                "n_cell_types": report.n_cell_types,
                "sample_key": str(report.sample_key),
                "n_samples": report.n_samples,
                "cell_types": Markdown(format_frame(cell_type_counts, "table")),
            },
            "genes": {
                **shared,
                "n_genes": report.n_genes,
                "n_genes_with_ensembl": n_with_ensembl,
                "n_genes_with_ensembl_in_file": report.n_genes_with_ensembl,
                "gene_id_source": report.gene_id_source,
                "gene_id_mapping": resolver_label,
                **mapping_summary,
            },
            "datasets": {**shared, "value_kind": report.value_kind},
        },
    )


def _clustered(
    entry: DatasetEntry, cells: pl.DataFrame, report: ValidationReport, log: Log
) -> tuple[pl.DataFrame, ValidationReport]:
    """Leiden clusters as the cell types of a dataset without them (labelled as clusters)."""
    from sae_genomics_core.data.clusters import leiden_clusters, with_clusters

    labels = leiden_clusters(entry.path, entry.options, report.value_kind)
    n_clusters = len(set(labels.tolist()))
    log.warning(
        f"{entry.name} has no cell-type column: its cells are grouped into {n_clusters} Leiden clusters "
        "(scanpy), tested as 'cluster N'; register it with --cell-type-key COLUMN to use real types"
    )
    return with_clusters(cells, labels), replace(report, cell_type_key=CLUSTER_KEY, n_cell_types=n_clusters)


def _mapped(entry: DatasetEntry, cells: pl.DataFrame, report: ValidationReport, log: Log) -> pl.DataFrame:
    """`cells` with UMAP coordinates for the cells drawn on the feature pages' map (NULL for the others,
    and for every cell of a dataset too small for a neighbourhood graph)."""
    from sae_genomics_core.data.clusters import cell_map

    if report.n_cells < MIN_CELLS:
        return cells.with_columns(
            pl.lit(None, pl.Float64).alias("umap_1"), pl.lit(None, pl.Float64).alias("umap_2")
        )
    coordinates = cell_map(entry.path, entry.options, report.value_kind)
    log.info(
        f"{entry.name}: UMAP of {coordinates.height} of {report.n_cells} cells (scanpy) for the feature pages"
    )
    return cells.join(coordinates, on="cell_index", how="left")


def _dataset_row(
    entry: DatasetEntry, report: ValidationReport, checksum: str, n_with_ensembl: int, mapping: str
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "dataset": [entry.name],
            "source_path": [str(entry.path)],
            "n_cells": [report.n_cells],
            "n_genes": [report.n_genes],
            "n_genes_in_vocab": pl.Series([None], dtype=pl.Int64),
            "checksum": [checksum],
            "matrix_source": [report.matrix_source],
            "value_kind": [report.value_kind],
            "gene_id_source": [report.gene_id_source],
            "n_genes_with_ensembl": [n_with_ensembl],
            "gene_id_mapping": [mapping],
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
