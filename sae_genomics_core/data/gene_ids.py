"""A dataset's genes → unversioned Ensembl ids (tahoe-x1's vocab keys), through the one HGNC resolver.

Genes the file already identifies by Ensembl id keep it; symbols are resolved (approved, previous,
alias, then case-insensitive). What does not map uniquely keeps a NULL ensembl_id and says why in
`ensembl_id_source`, so nothing is dropped silently. Two dataset genes never share an Ensembl id: the
first claim wins (the file's own id, else an approved-symbol match), the others are marked duplicates.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.base import snapshots_dir
from sae_genomics_core.annotations.identifiers import GeneResolver, ResolutionReport, hgnc_release

HGNC_SNAPSHOT = Path("hgnc") / "hgnc_complete_set.txt.gz"
_PREFERENCE = {
    "dataset": 0,
    "hgnc:symbol": 1,
    "hgnc:prev_symbol": 2,
    "hgnc:symbol_upper": 3,
    "hgnc:alias_symbol": 4,
}


def default_resolver(warehouse: Path) -> tuple[GeneResolver | None, str]:
    """The warehouse's `gene_identifiers` when materialised, else the bundled HGNC snapshot, else none."""
    from sae_genomics_core.annotations.store import read_table

    identifiers = read_table(warehouse, "gene_identifiers")
    if identifiers is not None and identifiers.height:
        version = identifiers["source_version"][0] if "source_version" in identifiers.columns else "HGNC"
        return GeneResolver(identifiers), f"gene_identifiers ({version})"
    snapshot = snapshots_dir() / HGNC_SNAPSHOT
    if snapshot.exists():
        resolver = GeneResolver.from_hgnc_file(snapshot)
        return resolver, f"bundled snapshot ({hgnc_release(resolver.identifiers)})"
    return None, "none (no gene_identifiers table, no bundled HGNC snapshot)"


def map_gene_ids(
    genes: pl.DataFrame, resolver: GeneResolver | None
) -> tuple[pl.DataFrame, ResolutionReport | None]:
    """`genes` (gene_index, feature_name, ensembl_id, symbol) with ensembl_id filled and ensembl_id_source."""
    base = genes.with_columns(
        pl.when(pl.col("ensembl_id").is_not_null()).then(pl.lit("dataset")).alias("ensembl_id_source")
    )
    if resolver is None:
        return base.with_columns(pl.col("ensembl_id_source").fill_null("unmapped (no HGNC table)")), None
    to_map = base.filter(pl.col("ensembl_id").is_null() & pl.col("symbol").is_not_null())
    resolution = resolver.resolve(to_map["symbol"].to_list(), "symbol")
    found = resolution.frame.select(
        pl.col("query").alias("symbol"),
        pl.col("ensembl_id").alias("mapped_id"),
        pl.when(pl.col("status") == "mapped")
        .then(pl.lit("hgnc:") + pl.col("matched_by"))
        .otherwise(pl.col("status"))
        .alias("mapped_source"),
    )
    merged = (
        base.join(found, on="symbol", how="left")
        .with_columns(
            pl.coalesce("ensembl_id", "mapped_id").alias("ensembl_id"),
            pl.coalesce("ensembl_id_source", "mapped_source", pl.lit("unmapped")).alias("ensembl_id_source"),
        )
        .drop("mapped_id", "mapped_source")
    )
    # datasets keyed by Ensembl only gain their HGNC symbols
    symbols = resolver.identifiers.select("ensembl_id", pl.col("symbol").alias("hgnc_symbol")).drop_nulls()
    symbols = symbols.unique("ensembl_id", keep="first")
    merged = (
        merged.join(symbols, on="ensembl_id", how="left")
        .with_columns(pl.coalesce("symbol", "hgnc_symbol").alias("symbol"))
        .drop("hgnc_symbol")
    )
    # one dataset gene per Ensembl id (the vocab maps ids to tokens one to one)
    rank = pl.col("ensembl_id_source").replace_strict(_PREFERENCE, default=9, return_dtype=pl.Int64)
    winner = (
        merged.filter(pl.col("ensembl_id").is_not_null())
        .sort(rank, "gene_index")
        .unique("ensembl_id", keep="first")
    )
    winners = set(winner["gene_index"].to_list())
    first_symbol = dict(zip(winner["ensembl_id"].to_list(), winner["symbol"].to_list(), strict=True))
    duplicate = pl.col("ensembl_id").is_not_null() & ~pl.col("gene_index").is_in(sorted(winners))
    merged = merged.with_columns(
        pl.when(duplicate)
        .then(pl.lit("duplicate of ") + pl.col("ensembl_id").replace_strict(first_symbol, default="?"))
        .otherwise(pl.col("ensembl_id_source"))
        .alias("ensembl_id_source"),
        pl.when(duplicate).then(None).otherwise(pl.col("ensembl_id")).alias("ensembl_id"),
    )
    return merged.sort("gene_index").select(*genes.columns, "ensembl_id_source"), resolution.report
