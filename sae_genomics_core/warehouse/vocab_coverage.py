"""Which of a dataset's genes the model vocab holds, recorded once a model has tokenised the dataset.

Ingest cannot know (the model comes later), so `datasets.n_genes_in_vocab` and `genes.in_vocab` start
NULL and are filled here, from the vocab the activations were extracted with.
"""

from __future__ import annotations

from collections.abc import Collection

import duckdb
import polars as pl

from sae_genomics_core.warehouse.sql import table_names


def record_vocab_coverage(
    connection: duckdb.DuckDBPyConnection, dataset: str, vocab_keys: Collection[str], symbols_too: bool
) -> int | None:
    """Set genes.in_vocab and datasets.n_genes_in_vocab for `dataset`; returns the count (None when the
    dataset has no genes table rows). A gene's key is its Ensembl id; `symbols_too` (a random-weight
    model whose tiny vocab is built from the dataset's own genes) lets the symbol stand in for a missing id."""
    if not {"genes", "datasets"} <= set(table_names(connection)):
        return None
    keys = pl.DataFrame({"vocab_key": sorted(vocab_keys)}, schema={"vocab_key": pl.String})
    key = "coalesce(ensembl_id, symbol)" if symbols_too else "ensembl_id"
    connection.register("vocab_keys", keys)
    try:  # the caller's transaction (warehouse_writer) makes the two updates one
        connection.execute(
            f"update genes set in_vocab = {key} is not null and {key} in (select vocab_key from vocab_keys) "
            "where dataset = ?",
            [dataset],
        )
        row = connection.execute(
            "select count(*) filter (where in_vocab), count(*) from genes where dataset = ?", [dataset]
        ).fetchone()
        n_in_vocab = int(row[0]) if row and row[1] else None
        connection.execute(
            "update datasets set n_genes_in_vocab = ? where dataset = ?", [n_in_vocab, dataset]
        )
    finally:
        connection.unregister("vocab_keys")
    return n_in_vocab
