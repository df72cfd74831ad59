"""Stage runners: the HGNC gene identifiers, each annotation database, and the HPO ontology, refreshed
live, from a user's download or from the bundled snapshot. A refresh that fails raises before any table
is built, so the previous table stays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.annotations.base import (
    MODES,
    diff_annotations,
    load_gene_identifier_source,
    load_sources,
    snapshots_dir,
)
from sae_genomics_core.annotations.errors import AnnotationError, SourceSkipped
from sae_genomics_core.annotations.http import HttpClient
from sae_genomics_core.annotations.identifiers import hgnc_release, read_hgnc
from sae_genomics_core.annotations.refresh import DEFAULT_MAX_REFRESH_S, refresh
from sae_genomics_core.annotations.store import dataset_gene_set, load_resolver, read_table
from sae_genomics_core.config import ANNOTATION_MODE_ENV, Environment
from sae_genomics_core.errors import SettingsError
from sae_genomics_core.pipeline.result import Log, Markdown, StageResult, default_log
from sae_genomics_core.warehouse.sql import format_frame

DEFAULT_MODE = "default"  # the environment's mode ($SAE_GENOMICS_ANNOTATION_MODE), else live
HGNC_SNAPSHOT = "hgnc/hgnc_complete_set.txt.gz"
HPO_SNAPSHOT_GLOB = "hp.*.json.gz"


@dataclass(frozen=True, kw_only=True)
class RefreshSettings:
    mode: str = DEFAULT_MODE  # live, file, snapshot or default
    files: tuple[str, ...] = ()  # mode file: the downloaded file(s)

    def resolved_mode(self) -> str:
        mode = Environment.read().annotation_mode if self.mode == DEFAULT_MODE else self.mode
        if mode not in MODES:
            where = f"${ANNOTATION_MODE_ENV}" if self.mode == DEFAULT_MODE else "the run config"
            raise SettingsError(f"unknown annotation mode {mode!r} in {where}; use one of {', '.join(MODES)}")
        return mode


def refresh_gene_identifiers(
    settings: RefreshSettings, warehouse: Path, cache: Path, log: Log | None = None
) -> StageResult:
    """The HGNC complete set: every id (dataset symbols, each database's genes) maps to Ensembl through it."""
    log = log or default_log()
    mode = settings.resolved_mode()
    source = load_gene_identifier_source()
    if mode == "live":
        http = HttpClient("hgnc", cache / "http", min_interval_s=0.1, max_total_s=DEFAULT_MAX_REFRESH_S)
        path, origin = http.download(source["bulk_url"], "hgnc_complete_set.txt").path, source["bulk_url"]
    elif mode == "file":
        if not settings.files:
            raise AnnotationError("mode 'file' needs `files`: the path of hgnc_complete_set.txt")
        path = origin = Path(settings.files[0])
    else:
        path, origin = snapshots_dir() / HGNC_SNAPSHOT, f"snapshot {HGNC_SNAPSHOT}"
    frame = read_hgnc(Path(path))
    release = hgnc_release(frame)
    frame = frame.with_columns(
        pl.lit(release).alias("source_version"), pl.lit(datetime.now(UTC)).alias("retrieved_at")
    )
    previous = read_table(warehouse, "gene_identifiers")
    with_ensembl = int(frame["ensembl_id"].is_not_null().sum())
    log.info(f"{frame.height:,} HGNC genes ({with_ensembl:,} with Ensembl ids), {release}")
    summary = {
        "source_version": release,
        "mode": mode,
        "origin": str(origin),
        "genes": frame.height,
        "genes_with_ensembl": with_ensembl,
        "previous_rows": previous.height if previous is not None else 0,
        "licence": source.get("licence", ""),
    }
    return StageResult(tables={"gene_identifiers": frame}, summary=summary)


def refresh_annotations(
    database: str, settings: RefreshSettings, warehouse: Path, cache: Path, log: Log | None = None
) -> StageResult:
    """One database's gene annotations, ids mapped to Ensembl; `skipped` (not a failure) without its key
    or a redistributable snapshot."""
    log = log or default_log()
    mode = settings.resolved_mode()
    source = load_sources()[database]
    resolver = load_resolver(warehouse)
    genes = dataset_gene_set(warehouse, resolver) if mode == "live" else None
    try:
        result = refresh(
            database,
            source,
            resolver,
            mode=mode,  # type: ignore[arg-type]
            files=[Path(f) for f in settings.files],
            genes=genes,
            cache_dir=cache / "http",
        )
    except SourceSkipped as skipped:
        log.warning(f"skipped annotations_{database}: {skipped}")
        return StageResult(skipped=str(skipped))
    frame = result.frame
    diff = diff_annotations(read_table(warehouse, f"annotations_{database}"), frame)
    log.info(f"{database}: {frame.height:,} rows, {result.resolution.summary()}")
    top_terms = (
        frame.group_by("term_id", "term_name")
        .len()
        .sort("len", descending=True)
        .head(10)
        .rename({"len": "genes"})
    )
    summary = {
        "database": source.name,
        "licence": source.licence,
        "refresh_cron": source.refresh_cron,
        "mode": mode,
        "source_version": result.source_version,
        "origin": result.origin,
        "rows": frame.height,
        "genes": frame["ensembl_id"].n_unique(),
        "terms": frame["term_id"].n_unique(),
        "source_rows": result.n_raw_rows,
        **{f"diff_{k}": v for k, v in diff.as_metadata().items()},
        "id_mapping": result.resolution.as_metadata(),
        "id_mapping_summary": result.resolution.summary(),
        "top_terms": Markdown(format_frame(top_terms, "table")),
    }
    return StageResult(tables={f"annotations_{database}": frame}, summary=summary)


def refresh_hpo_ontology(settings: RefreshSettings, cache: Path, log: Log | None = None) -> StageResult:
    """The Human Phenotype Ontology (hp.obo), parsed with pronto: one row per term with its is_a ancestors."""
    from sae_genomics_core.enrichment.inputs import ontology_table
    from sae_genomics_core.enrichment.ontology import read_ontology

    log = log or default_log()
    mode = settings.resolved_mode()
    ontology = read_ontology(_ontology_file(mode, settings, cache), "hpo")  # type: ignore[arg-type]
    log.info(
        f"HPO {ontology.version}: {ontology.terms.height:,} terms, {ontology.ancestors.height:,} ancestor pairs"
    )
    summary = {
        "source_version": ontology.version,
        "mode": mode,
        "terms": ontology.terms.height,
        "obsolete_terms": int(ontology.terms["is_obsolete"].sum()),
        "ancestor_pairs": ontology.ancestors.height,
    }
    return StageResult(tables={"hpo_ontology": ontology_table(ontology)}, summary=summary)


def _ontology_file(mode: str, settings: RefreshSettings, cache: Path) -> Any:
    from sae_genomics_core.enrichment.ontology import fetch_ontology

    if mode == "file":
        if len(settings.files) != 1:
            raise AnnotationError("hpo_ontology in file mode reads one hp.obo (or hp.json): set files")
        return settings.files[0]
    if mode == "snapshot":
        found = sorted((snapshots_dir() / "hpo").glob(HPO_SNAPSHOT_GLOB))
        if not found:
            raise AnnotationError(
                f"no HPO ontology snapshot ({HPO_SNAPSHOT_GLOB}) in {snapshots_dir() / 'hpo'}"
            )
        return found[-1]
    url = load_sources()["hpo"].extra.get("ontology_url") or "https://purl.obolibrary.org/obo/hp.obo"
    return fetch_ontology(url, cache / "http")
