"""Gene identifiers from the HGNC complete set, and the one resolver every id goes through.

Every gene id that enters sae-genomics (a dataset's symbols, each database's Entrez ids, HGNC CURIEs,
UniProt accessions, symbols) becomes an unversioned Ensembl gene id here. What cannot be mapped
uniquely is reported (unmapped, ambiguous, or known to HGNC without an Ensembl id), never dropped
silently: `Resolution.report` counts and shows examples, `Resolution.frame` keeps every query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from sae_genomics_core.annotations.errors import PayloadError, SchemaError

IdKind = Literal["ensembl", "symbol", "entrez", "hgnc", "uniprot"]
ID_KINDS: tuple[IdKind, ...] = ("ensembl", "symbol", "entrez", "hgnc", "uniprot")

# HGNC column → gene_identifiers column; parsed by header name (layouts change between releases)
REQUIRED_HGNC_COLUMNS = {
    "hgnc_id": "hgnc_id",
    "symbol": "symbol",
    "ensembl_gene_id": "ensembl_id",
    "entrez_id": "entrez_id",
    "uniprot_ids": "uniprot_ids",
    "alias_symbol": "alias_symbols",
    "prev_symbol": "prev_symbols",
}
OPTIONAL_HGNC_COLUMNS = {
    "name": "name",
    "locus_group": "locus_group",
    "locus_type": "locus_type",
    "status": "status",
    "location": "location",
    "omim_id": "omim_ids",
    "orphanet": "orphanet_id",
    "date_modified": "date_modified",
}
LIST_COLUMNS = ("uniprot_ids", "alias_symbols", "prev_symbols", "omim_ids")
_VERSION_SUFFIX = re.compile(r"\.\d+$")


def read_hgnc(path: Path) -> pl.DataFrame:
    """The `gene_identifiers` table from an HGNC complete-set TSV (plain or .gz), one row per HGNC id."""
    try:
        raw = pl.read_csv(
            path,
            separator="\t",
            quote_char='"',
            infer_schema=False,
            null_values=[""],
            truncate_ragged_lines=False,
        )
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as error:
        raise PayloadError(
            f"HGNC: {Path(path).name} is not a readable HGNC complete-set TSV ({error}); download it again"
        ) from error
    missing = sorted(set(REQUIRED_HGNC_COLUMNS) - set(raw.columns))
    if missing:
        raise SchemaError(
            f"HGNC: {Path(path).name} lacks the column(s) {', '.join(missing)}; is it the complete set "
            "(hgnc_complete_set.txt)?"
        )
    present = {
        **REQUIRED_HGNC_COLUMNS,
        **{k: v for k, v in OPTIONAL_HGNC_COLUMNS.items() if k in raw.columns},
    }
    frame = raw.select([pl.col(source).alias(target) for source, target in present.items()])
    for name in OPTIONAL_HGNC_COLUMNS.values():
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
    frame = frame.with_columns(
        [pl.col(name).str.split("|").fill_null(pl.lit([], dtype=pl.List(pl.String))) for name in LIST_COLUMNS]
    ).with_columns(pl.col("ensembl_id").str.replace(r"\.\d+$", ""))
    if frame.height == 0:
        raise PayloadError(f"HGNC: {Path(path).name} has a header but no rows; download it again")
    columns = [
        "hgnc_id",
        "symbol",
        "name",
        "ensembl_id",
        "entrez_id",
        "uniprot_ids",
        "alias_symbols",
        "prev_symbols",
        "omim_ids",
        "orphanet_id",
        "locus_group",
        "locus_type",
        "status",
        "location",
        "date_modified",
    ]
    return frame.select(columns).unique("hgnc_id", keep="first").sort("hgnc_id")


def hgnc_release(identifiers: pl.DataFrame) -> str:
    """HGNC publishes no version inside the file: the newest `date_modified` names the release."""
    newest = identifiers.get_column("date_modified").drop_nulls().max()
    return f"HGNC {newest}" if newest else "HGNC (undated)"


@dataclass
class ResolutionReport:
    """How a batch of ids mapped: counts per status and a few examples of each failure."""

    kind: str
    n_queries: int
    n_mapped: int
    n_unmapped: int
    n_ambiguous: int
    n_without_ensembl: int
    by_match: dict[str, int] = field(default_factory=dict)
    unmapped_examples: list[str] = field(default_factory=list)
    ambiguous_examples: list[str] = field(default_factory=list)

    @property
    def fraction_mapped(self) -> float:
        return self.n_mapped / self.n_queries if self.n_queries else 1.0

    def summary(self) -> str:
        parts = [f"{self.n_mapped:,}/{self.n_queries:,} {self.kind} ids mapped to Ensembl"]
        if self.n_ambiguous:
            parts.append(f"{self.n_ambiguous:,} ambiguous (e.g. {', '.join(self.ambiguous_examples[:5])})")
        if self.n_without_ensembl:
            parts.append(f"{self.n_without_ensembl:,} known to HGNC without an Ensembl id")
        if self.n_unmapped:
            parts.append(f"{self.n_unmapped:,} unmapped (e.g. {', '.join(self.unmapped_examples[:5])})")
        return "; ".join(parts)

    def as_metadata(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "queries": self.n_queries,
            "mapped": self.n_mapped,
            "unmapped": self.n_unmapped,
            "ambiguous": self.n_ambiguous,
            "without_ensembl": self.n_without_ensembl,
            "matched_by": self.by_match,
            "unmapped_examples": self.unmapped_examples,
            "ambiguous_examples": self.ambiguous_examples,
        }


@dataclass
class Resolution:
    """One row per distinct query: `query, ensembl_id, hgnc_id, symbol, status, matched_by`.

    status is `mapped`, `ambiguous` (several genes claim the id; candidates in `candidates`),
    `no_ensembl` (HGNC knows the gene but gives no Ensembl id) or `unmapped`.
    """

    frame: pl.DataFrame
    report: ResolutionReport

    def mapping(self) -> dict[str, str]:
        mapped = self.frame.filter(pl.col("status") == "mapped")
        return dict(zip(mapped["query"].to_list(), mapped["ensembl_id"].to_list(), strict=True))


class GeneResolver:
    """Maps ids of any supported kind to Ensembl through one HGNC table (see module docstring)."""

    def __init__(self, identifiers: pl.DataFrame):
        self.identifiers = identifiers
        genes = identifiers.select("hgnc_id", "symbol", "ensembl_id")
        self._genes = genes
        self._by_ensembl = genes.filter(pl.col("ensembl_id").is_not_null()).unique("ensembl_id", keep="first")

        def exploded(column: str, normalise: pl.Expr | None = None) -> pl.DataFrame:
            values = identifiers.select("hgnc_id", pl.col(column).alias("key")).explode("key")
            if normalise is not None:
                values = values.with_columns(normalise)
            return values.filter(pl.col("key").is_not_null() & (pl.col("key") != "")).unique()

        self._lookups: dict[str, pl.DataFrame] = {
            "symbol": identifiers.select("hgnc_id", pl.col("symbol").alias("key")).drop_nulls(),
            "symbol_upper": identifiers.select("hgnc_id", pl.col("symbol").str.to_uppercase().alias("key")),
            "prev_symbol": exploded("prev_symbols"),
            "alias_symbol": exploded("alias_symbols"),
            "entrez": identifiers.select("hgnc_id", pl.col("entrez_id").alias("key")).drop_nulls(),
            "hgnc": identifiers.select("hgnc_id", pl.col("hgnc_id").alias("key")),
            "uniprot": exploded("uniprot_ids"),
        }

    @classmethod
    def from_hgnc_file(cls, path: Path) -> GeneResolver:
        return cls(read_hgnc(path))

    def resolve(self, ids: Iterable[str | int | None], kind: IdKind) -> Resolution:
        if kind not in ID_KINDS:
            raise ValueError(f"unknown id kind {kind!r}; use one of {', '.join(ID_KINDS)}")
        queries = pl.DataFrame(
            {"query": [None if i is None else str(i) for i in ids]}, schema={"query": pl.String}
        )
        queries = queries.filter(pl.col("query").is_not_null() & (pl.col("query").str.strip_chars() != ""))
        queries = queries.unique(maintain_order=True).with_columns(_normalised(kind).alias("key"))
        if kind == "ensembl":
            resolved = self._resolve_ensembl(queries)
        else:
            order = {
                "symbol": ["symbol", "prev_symbol", "alias_symbol", "symbol_upper"],
                "entrez": ["entrez"],
                "hgnc": ["hgnc"],
                "uniprot": ["uniprot"],
            }[kind]
            resolved = self._resolve_in_order(queries, order)
        return Resolution(resolved, _report(resolved, kind))

    def _resolve_ensembl(self, queries: pl.DataFrame) -> pl.DataFrame:
        # an Ensembl id is already the target; HGNC only adds the symbol. Ids HGNC does not list (novel
        # transcripts, readthroughs) are kept: they are valid keys of the model vocab.
        joined = queries.join(self._by_ensembl, left_on="key", right_on="ensembl_id", how="left")
        return joined.select(
            "query",
            pl.when(pl.col("key").str.starts_with("ENSG")).then(pl.col("key")).alias("ensembl_id"),
            "hgnc_id",
            "symbol",
            pl.when(pl.col("key").str.starts_with("ENSG"))
            .then(pl.lit("mapped"))
            .otherwise(pl.lit("unmapped"))
            .alias("status"),
            pl.when(pl.col("hgnc_id").is_not_null())
            .then(pl.lit("ensembl"))
            .when(pl.col("key").str.starts_with("ENSG"))
            .then(pl.lit("ensembl_not_in_hgnc"))
            .alias("matched_by"),
            pl.lit(None, dtype=pl.List(pl.String)).alias("candidates"),
        )

    def _resolve_in_order(self, queries: pl.DataFrame, order: list[str]) -> pl.DataFrame:
        remaining, parts = queries, []
        for source in order:
            if remaining.height == 0:
                break
            probe = remaining
            if source == "symbol_upper":  # last resort: case-insensitive match on the approved symbol
                probe = remaining.with_columns(pl.col("key").str.to_uppercase())
            hits = probe.join(self._lookups[source], on="key", how="inner")
            if hits.height == 0:
                continue
            grouped = hits.group_by("query", maintain_order=True).agg(pl.col("hgnc_id").unique().sort())
            grouped = grouped.with_columns(pl.lit(source).alias("matched_by"))
            parts.append(grouped)
            remaining = remaining.join(grouped.select("query"), on="query", how="anti")
        found = (
            pl.concat(parts)
            if parts
            else pl.DataFrame(
                schema={"query": pl.String, "hgnc_id": pl.List(pl.String), "matched_by": pl.String}
            )
        )
        unique = found.filter(pl.col("hgnc_id").list.len() == 1).with_columns(pl.col("hgnc_id").list.first())
        unique = unique.join(self._genes, on="hgnc_id", how="left").select(
            "query",
            "ensembl_id",
            "hgnc_id",
            "symbol",
            pl.when(pl.col("ensembl_id").is_null())
            .then(pl.lit("no_ensembl"))
            .otherwise(pl.lit("mapped"))
            .alias("status"),
            "matched_by",
            pl.lit(None, dtype=pl.List(pl.String)).alias("candidates"),
        )
        ambiguous = found.filter(pl.col("hgnc_id").list.len() > 1).select(
            "query",
            pl.lit(None, dtype=pl.String).alias("ensembl_id"),
            pl.lit(None, dtype=pl.String).alias("hgnc_id"),
            pl.lit(None, dtype=pl.String).alias("symbol"),
            pl.lit("ambiguous").alias("status"),
            "matched_by",
            pl.col("hgnc_id").alias("candidates"),
        )
        unmapped = remaining.select(
            "query",
            pl.lit(None, dtype=pl.String).alias("ensembl_id"),
            pl.lit(None, dtype=pl.String).alias("hgnc_id"),
            pl.lit(None, dtype=pl.String).alias("symbol"),
            pl.lit("unmapped").alias("status"),
            pl.lit(None, dtype=pl.String).alias("matched_by"),
            pl.lit(None, dtype=pl.List(pl.String)).alias("candidates"),
        )
        order_index = queries.select("query").with_row_index("order")
        return (
            pl.concat([unique, ambiguous, unmapped])
            .join(order_index, on="query", how="left")
            .sort("order")
            .drop("order")
        )


def _normalised(kind: IdKind) -> pl.Expr:
    query = pl.col("query").str.strip_chars()
    if kind == "ensembl":
        return query.str.replace(r"^ENSEMBL:", "").str.replace(r"\.\d+$", "")
    if kind == "entrez":
        return query.str.replace(r"^(NCBIGene|NCBI Gene|EntrezGene|GeneID):", "").str.replace(r"\.0$", "")
    if kind == "hgnc":
        # accept "HGNC:5", "hgnc:5" and a bare "5"
        bare = query.str.replace(r"(?i)^hgnc:", "")
        return pl.lit("HGNC:") + bare
    if kind == "uniprot":
        return query.str.replace(r"^(UniProtKB|uniprot):", "").str.replace(r"-\d+$", "")
    return query


def _report(resolved: pl.DataFrame, kind: str) -> ResolutionReport:
    counts = dict(resolved.group_by("status").len().iter_rows())
    by_match = {
        str(name): int(n)
        for name, n in resolved.filter(pl.col("status") == "mapped").group_by("matched_by").len().iter_rows()
    }

    def examples(status: str) -> list[str]:
        return resolved.filter(pl.col("status") == status).get_column("query").head(20).to_list()

    return ResolutionReport(
        kind=kind,
        n_queries=resolved.height,
        n_mapped=int(counts.get("mapped", 0)),
        n_unmapped=int(counts.get("unmapped", 0)),
        n_ambiguous=int(counts.get("ambiguous", 0)),
        n_without_ensembl=int(counts.get("no_ensembl", 0)),
        by_match=by_match,
        unmapped_examples=examples("unmapped"),
        ambiguous_examples=examples("ambiguous"),
    )


def strip_ensembl_version(value: str) -> str:
    return _VERSION_SUFFIX.sub("", value)
