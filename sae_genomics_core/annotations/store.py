"""What the annotation refreshes read from the warehouse, and the `gene_annotations` view over them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from sae_genomics_core.annotations.base import GeneSet
from sae_genomics_core.annotations.errors import AnnotationError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.warehouse.lake import warehouse_exists
from sae_genomics_core.warehouse.sql import connect_read_only, table_names

ANNOTATION_PREFIX = "annotations_"


def _tables(connection: duckdb.DuckDBPyConnection) -> set[str]:
    return table_names(connection, base_tables_only=True)


def read_table(database: Path, table: str) -> pl.DataFrame | None:
    """A whole warehouse table, or None when the warehouse or the table does not exist yet."""
    if not warehouse_exists(database):
        return None
    with connect_read_only(Path(database)) as connection:
        if table not in _tables(connection):
            return None
        return connection.sql(f'select * from "{table}"').pl()


def load_resolver(database: Path) -> GeneResolver:
    identifiers = read_table(database, "gene_identifiers")
    if identifiers is None or identifiers.height == 0:
        raise AnnotationError(
            "the gene_identifiers table is missing: materialise the `gene_identifiers` asset first (every "
            "database's ids are mapped to Ensembl through it)"
        )
    return GeneResolver(identifiers)


def dataset_gene_set(database: Path, resolver: GeneResolver) -> GeneSet:
    """Every gene of every registered dataset, in each id kind the API-driven clients ask with."""
    genes = read_table(database, "genes")
    if genes is None or genes.height == 0:
        return GeneSet.empty()
    ensembl = set(genes.get_column("ensembl_id").drop_nulls().to_list())
    symbols_only = genes.filter(pl.col("ensembl_id").is_null()).get_column("symbol").drop_nulls().to_list()
    ensembl |= set(resolver.resolve(symbols_only, "symbol").mapping().values())
    rows = resolver.identifiers.filter(pl.col("ensembl_id").is_in(sorted(ensembl)))
    return GeneSet(
        ensembl_ids=sorted(ensembl),
        symbols=sorted(rows.get_column("symbol").drop_nulls().to_list()),
        entrez_ids=sorted(rows.get_column("entrez_id").drop_nulls().to_list()),
        hgnc_ids=sorted(rows.get_column("hgnc_id").drop_nulls().to_list()),
    )


def gene_annotations_view(tables: Iterable[str]) -> str:
    """SQL for the view: the union of the annotation tables that exist (by column name)."""
    selects = [f'select * from "{t}"' for t in sorted(tables) if t.startswith(ANNOTATION_PREFIX)]
    if not selects:
        return ""
    return "create or replace view gene_annotations as\n" + "\nunion all by name\n".join(selects)


def refresh_gene_annotations_view(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """(Re)create `gene_annotations` over the annotation tables present; returns their names."""
    present = sorted(t for t in _tables(connection) if t.startswith(ANNOTATION_PREFIX))
    sql = gene_annotations_view(present)
    if sql:
        connection.execute(sql)
    return present
