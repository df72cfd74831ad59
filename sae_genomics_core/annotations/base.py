"""What every annotation client shares: its configuration, the raw shape it returns, the common table.

A client (one module per database) turns the source's file or API answers into `RawAnnotations`: one row
per gene × term in the source's own gene ids. `finalise` maps those ids to Ensembl through the one
`GeneResolver`, reports what did not map, collapses duplicates to the key (ensembl_id, term_id) and
stamps database, source version and retrieval time: the `annotations_<db>` table of DESIGN §3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
import yaml

from sae_genomics_core.annotations.errors import MissingApiKey, PayloadError, SchemaError
from sae_genomics_core.annotations.http import HttpClient
from sae_genomics_core.annotations.identifiers import ID_KINDS, GeneResolver, IdKind, ResolutionReport
from sae_genomics_core.config import secret
from sae_genomics_core.external import snapshots_dir, sources_file

Mode = Literal["live", "file", "snapshot"]
MODES: tuple[Mode, ...] = ("live", "file", "snapshot")

# the public columns of annotations_<db>, in order (DESIGN §3); n_evidence is ours
ANNOTATION_SCHEMA: dict[str, pl.DataType] = {
    "database": pl.String(),
    "ensembl_id": pl.String(),
    "term_id": pl.String(),
    "symbol": pl.String(),
    "term_name": pl.String(),
    "term_kind": pl.String(),
    "score": pl.Float64(),
    "evidence": pl.String(),
    "n_evidence": pl.Int64(),
    "source_gene_id": pl.String(),
    "source_version": pl.String(),
    "retrieved_at": pl.Datetime("us", "UTC"),
}
RAW_REQUIRED = ("gene_id", "term_id")
RAW_OPTIONAL: dict[str, pl.DataType] = {
    "gene_id_kind": pl.String(),
    "term_name": pl.String(),
    "term_kind": pl.String(),
    "score": pl.Float64(),
    "evidence": pl.String(),
}
EVIDENCE_KEEP = 10  # evidence strings kept per gene × term (n_evidence counts them all)


@dataclass(frozen=True)
class SourceConfig:
    """One database's entry of external/sources.yaml (every key not named here stays in `extra`)."""

    name: str
    api: str | None = None
    bulk_url: str | None = None
    key_env: str | None = None
    licence: str = ""
    refresh_cron: str = "0 5 1 * *"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, name: str, values: dict[str, Any]) -> SourceConfig:
        known = {
            k: values[k] for k in ("api", "bulk_url", "key_env", "licence", "refresh_cron") if k in values
        }
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(name=name, **known, extra=extra)

    def api_key(self) -> str | None:
        return secret(self.key_env) if self.key_env else None


def load_sources(path: Path | None = None) -> dict[str, SourceConfig]:
    with open(path or sources_file()) as handle:
        databases = yaml.safe_load(handle)["databases"]
    return {name: SourceConfig.from_mapping(name, values or {}) for name, values in databases.items()}


def load_gene_identifier_source(path: Path | None = None) -> dict[str, Any]:
    with open(path or sources_file()) as handle:
        return yaml.safe_load(handle)["gene_identifiers"]["hgnc"]


@dataclass
class GeneSet:
    """The genes an API-driven client should ask about (bulk clients take every gene in the file)."""

    ensembl_ids: list[str]
    symbols: list[str]
    entrez_ids: list[str]
    hgnc_ids: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls) -> GeneSet:
        return cls([], [], [], [])

    def __len__(self) -> int:
        return max(len(self.ensembl_ids), len(self.symbols), len(self.entrez_ids), len(self.hgnc_ids))


@dataclass
class RawAnnotations:
    """A client's output before id mapping: columns gene_id, term_id (+ RAW_OPTIONAL)."""

    frame: pl.DataFrame
    gene_id_kind: IdKind  # what gene_id holds, unless a row says otherwise in gene_id_kind
    source_version: str
    origin: str  # the file or redacted URL it came from


@dataclass
class Annotations:
    frame: pl.DataFrame
    resolution: ResolutionReport
    source_version: str
    origin: str
    n_raw_rows: int


class AnnotationClient(ABC):
    """One database. Subclasses set the class attributes and implement `fetch_live` and `read_files`."""

    name: ClassVar[str]  # key in sources.yaml; table annotations_<name>
    title: ClassVar[str]  # shown in the UI
    term_kind: ClassVar[str]  # default term_kind of its rows (disease, phenotype, interaction, trait…)
    needs_key: ClassVar[bool] = False  # True: skipped (not failed) when the key's variable is unset
    per_gene: ClassVar[bool] = False  # live mode asks about the registered datasets' genes, not a bulk file
    snapshot_files: ClassVar[tuple[str, ...]] = ()  # under external/snapshots/<name>/, in read_files order
    min_interval_s: ClassVar[float] = 0.0  # the service's polite request spacing

    def __init__(self, config: SourceConfig, http: HttpClient | None = None):
        self.config = config
        self.http = http

    @classmethod
    def make(
        cls, config: SourceConfig, cache_dir: Path | None, *, require_key: bool = True, **http_options: Any
    ) -> AnnotationClient:
        """A client with its own HTTP session (key redacted in errors); MissingApiKey for keyed sources
        without their key, unless `require_key` is False (reading a file the user downloaded needs none)."""
        key = config.api_key()
        if cls.needs_key and require_key and not key:
            raise MissingApiKey(
                f"{cls.title}: set the environment variable {config.key_env} to your API key to refresh this "
                f"source ({config.licence}); skipped until then"
            )
        # sources.yaml may set a service's spacing (a key with a higher quota, a mirror); else the class's
        spacing = float(config.extra.get("min_interval_s", cls.min_interval_s))
        options = {"min_interval_s": spacing, **http_options}
        http = HttpClient(cls.name, cache_dir, secrets=[key] if key else [], **options)
        return cls(config, http)

    @property
    def api_key(self) -> str | None:
        return self.config.api_key()

    @abstractmethod
    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        """Fetch from the service (bulk download or API, as the notes recommend for it)."""

    @abstractmethod
    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        """Parse files the user downloaded (or the bundled snapshot), in `snapshot_files` order."""

    def snapshot_paths(self) -> list[Path]:
        folder = snapshots_dir() / self.name
        paths = [folder / name for name in self.snapshot_files]
        missing = [str(p) for p in paths if not p.exists()]
        if not self.snapshot_files or missing:
            raise PayloadError(
                f"{self.title}: no bundled snapshot ({', '.join(missing) or folder}); use mode 'live' or 'file'"
            )
        return paths


def require_columns(frame: pl.DataFrame, required: Sequence[str], source: str, where: str) -> None:
    """Schema drift: extra columns are fine, a missing required one is a clear error."""
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise SchemaError(
            f"{source}: {where} lacks the required column(s) {', '.join(missing)} (has: "
            f"{', '.join(frame.columns[:20])}); the source format changed: update the client or use an older file"
        )


def finalise(
    raw: RawAnnotations,
    database: str,
    resolver: GeneResolver,
    retrieved_at: datetime | None = None,
    default_term_kind: str | None = None,
) -> Annotations:
    """Map ids to Ensembl, report what did not map, collapse to one row per (ensembl_id, term_id)."""
    frame = _complete_raw(raw, database, default_term_kind)
    mapped, report = _map_to_ensembl(frame, database, resolver)
    stamped = retrieved_at or datetime.now(UTC)
    table = _collapse(mapped, database, raw.source_version, stamped)
    return Annotations(table, report, raw.source_version, raw.origin, raw.frame.height)


def _complete_raw(raw: RawAnnotations, database: str, default_term_kind: str | None) -> pl.DataFrame:
    """The raw rows with every RAW_OPTIONAL column, typed, without rows lacking a gene or a term."""
    frame = raw.frame
    require_columns(frame, RAW_REQUIRED, database, "the parsed annotations")
    for name, dtype in RAW_OPTIONAL.items():
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    frame = frame.with_columns(
        pl.col("gene_id").cast(pl.String),
        pl.col("term_id").cast(pl.String),
        pl.col("gene_id_kind").fill_null(raw.gene_id_kind),
        pl.col("score").cast(pl.Float64),
        pl.col("term_kind").fill_null(default_term_kind) if default_term_kind else pl.col("term_kind"),
    ).filter(pl.col("gene_id").is_not_null() & pl.col("term_id").is_not_null())
    if frame.height == 0:
        raise PayloadError(
            f"{database}: the source gave no annotation rows ({raw.origin}); refusing an empty table"
        )
    return frame


def _map_to_ensembl(
    frame: pl.DataFrame, database: str, resolver: GeneResolver
) -> tuple[pl.DataFrame, ResolutionReport]:
    """The rows whose gene id maps to Ensembl (with ensembl_id, hgnc_symbol), and the report of all ids."""
    mapped_parts, reports = [], []
    for kind in frame.get_column("gene_id_kind").unique().sort().to_list():
        if kind not in ID_KINDS:
            raise ValueError(f"{database}: unknown gene id kind {kind!r}")
        part = frame.filter(pl.col("gene_id_kind") == kind)
        resolution = resolver.resolve(part.get_column("gene_id").to_list(), kind)
        reports.append(resolution.report)
        lookup = resolution.frame.filter(pl.col("status") == "mapped").select(
            pl.col("query").alias("gene_id"), "ensembl_id", pl.col("symbol").alias("hgnc_symbol")
        )
        mapped_parts.append(part.join(lookup, on="gene_id", how="inner"))
    report = _merge_reports(reports)
    mapped = pl.concat(mapped_parts, how="diagonal_relaxed")
    if mapped.height == 0:
        raise PayloadError(f"{database}: none of the source's genes mapped to Ensembl ({report.summary()})")
    return mapped, report


def _collapse(mapped: pl.DataFrame, database: str, source_version: str, stamped: datetime) -> pl.DataFrame:
    """One row per (ensembl_id, term_id) in ANNOTATION_SCHEMA, stamped with database, version and time."""
    return (
        mapped.group_by("ensembl_id", "term_id")
        .agg(
            pl.col("hgnc_symbol").drop_nulls().first().alias("symbol"),
            pl.col("term_name").drop_nulls().first(),
            pl.col("term_kind").drop_nulls().first(),
            pl.col("score").max(),
            pl.col("evidence")
            .drop_nulls()
            .unique()
            .sort()
            .head(EVIDENCE_KEEP)
            .str.join("; ")
            .alias("evidence"),
            pl.col("evidence").drop_nulls().n_unique().alias("n_evidence"),
            pl.col("gene_id").first().alias("source_gene_id"),
        )
        .with_columns(
            pl.lit(database).alias("database"),
            pl.when(pl.col("evidence") == "").then(None).otherwise(pl.col("evidence")).alias("evidence"),
            pl.lit(source_version).alias("source_version"),
            pl.lit(stamped).dt.replace_time_zone("UTC").alias("retrieved_at")
            if stamped.tzinfo is None
            else pl.lit(stamped).alias("retrieved_at"),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in ANNOTATION_SCHEMA.items()])
        .sort("ensembl_id", "term_id")
    )


def _merge_reports(reports: list[ResolutionReport]) -> ResolutionReport:
    if len(reports) == 1:
        return reports[0]
    merged = ResolutionReport(
        kind="+".join(r.kind for r in reports),
        n_queries=sum(r.n_queries for r in reports),
        n_mapped=sum(r.n_mapped for r in reports),
        n_unmapped=sum(r.n_unmapped for r in reports),
        n_ambiguous=sum(r.n_ambiguous for r in reports),
        n_without_ensembl=sum(r.n_without_ensembl for r in reports),
    )
    for r in reports:
        for key, n in r.by_match.items():
            merged.by_match[key] = merged.by_match.get(key, 0) + n
        merged.unmapped_examples += r.unmapped_examples[:10]
        merged.ambiguous_examples += r.ambiguous_examples[:10]
    return merged


@dataclass
class AnnotationDiff:
    rows_added: int
    rows_removed: int
    rows_kept: int
    genes_added: int
    genes_removed: int
    previous_version: str | None

    def as_metadata(self) -> dict[str, object]:
        return {
            "rows_added": self.rows_added,
            "rows_removed": self.rows_removed,
            "rows_kept": self.rows_kept,
            "genes_added": self.genes_added,
            "genes_removed": self.genes_removed,
            "previous_version": self.previous_version or "",
        }


def diff_annotations(previous: pl.DataFrame | None, current: pl.DataFrame) -> AnnotationDiff:
    """Rows and genes added and removed since the previous table (keyed by ensembl_id, term_id)."""
    if previous is None or previous.height == 0:
        genes = current.get_column("ensembl_id").n_unique()
        return AnnotationDiff(current.height, 0, 0, genes, 0, None)
    keys = ["ensembl_id", "term_id"]
    old, new = previous.select(keys).unique(), current.select(keys).unique()
    added = new.join(old, on=keys, how="anti").height
    removed = old.join(new, on=keys, how="anti").height
    old_genes, new_genes = set(previous["ensembl_id"].to_list()), set(current["ensembl_id"].to_list())
    versions = (
        previous.get_column("source_version").unique().to_list()
        if "source_version" in previous.columns
        else []
    )
    return AnnotationDiff(
        rows_added=added,
        rows_removed=removed,
        rows_kept=new.height - added,
        genes_added=len(new_genes - old_genes),
        genes_removed=len(old_genes - new_genes),
        previous_version=", ".join(str(v) for v in versions) or None,
    )
