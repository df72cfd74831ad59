"""Gene identifiers (HGNC) and one asset per annotation database, each refreshed on its own schedule.

Logic: sae_genomics_core.annotations (identifiers.read_hgnc, refresh.refresh, one client per database).
A refresh that fails writes nothing (the previous table stays); OMIM or DisGeNET without a key is
skipped with a message, not failed.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.annotations.base import (
    MODES,
    SourceConfig,
    diff_annotations,
    load_gene_identifier_source,
    load_sources,
    snapshots_dir,
)
from sae_genomics_core.annotations.errors import AnnotationError, SourceSkipped
from sae_genomics_core.annotations.http import HttpClient
from sae_genomics_core.annotations.identifiers import hgnc_release, read_hgnc
from sae_genomics_core.annotations.refresh import CLIENTS, DEFAULT_MAX_REFRESH_S, client_class, refresh
from sae_genomics_core.annotations.store import (
    dataset_gene_set,
    load_resolver,
    read_table,
    refresh_gene_annotations_view,
)
from sae_genomics_core.config import ANNOTATION_MODE_ENV, Environment, secret
from sae_genomics_core.warehouse.sql import format_frame
from sae_genomics_core.warehouse.writer import warehouse_writer
from sae_genomics_dagster.assets.common import OWNERS
from sae_genomics_dagster.resources import HomeResource

GROUP = "annotations"
HGNC_SNAPSHOT = "hgnc/hgnc_complete_set.txt.gz"


class AnnotationRefreshConfig(dg.Config):
    mode: str = Field(
        default="default",
        description="live (the service), file (your own download: set files), snapshot (bundled extract) or "
        f"default (${ANNOTATION_MODE_ENV}, else live)",
    )
    files: list[str] = Field(default=[], description="mode file: paths of the downloaded file(s)")

    def resolved_mode(self) -> str:
        mode = Environment.read().annotation_mode if self.mode == "default" else self.mode
        if mode not in MODES:
            where = f"${ANNOTATION_MODE_ENV}" if self.mode == "default" else "the run config"
            raise dg.Failure(
                description=f"unknown annotation mode {mode!r} in {where}; use one of {', '.join(MODES)}"
            )
        return mode


@dg.asset(
    name="gene_identifiers",
    io_manager_key="warehouse",
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    owners=OWNERS,
    pool="duckdb",
    description="HGNC complete set: one row per HGNC gene with symbol, aliases, previous symbols, Entrez, "
    "Ensembl and UniProt ids. Every id (dataset symbols, each database's genes) maps to Ensembl through it. "
    "Table `gene_identifiers`.",
)
def gene_identifiers(
    context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource
) -> dg.Output[pl.DataFrame]:
    mode = config.resolved_mode()
    source = load_gene_identifier_source()
    try:
        if mode == "live":
            http = HttpClient(
                "hgnc", home.home.cache / "http", min_interval_s=0.1, max_total_s=DEFAULT_MAX_REFRESH_S
            )
            download = http.download(source["bulk_url"], "hgnc_complete_set.txt")
            path, origin = download.path, source["bulk_url"]
        elif mode == "file":
            if not config.files:
                raise AnnotationError("mode 'file' needs `files`: the path of hgnc_complete_set.txt")
            path = origin = Path(config.files[0])
        else:
            path = snapshots_dir() / HGNC_SNAPSHOT
            origin = f"snapshot {HGNC_SNAPSHOT}"
        frame = read_hgnc(Path(path))
    except AnnotationError as error:
        raise dg.Failure(description=str(error)) from error
    release = hgnc_release(frame)
    frame = frame.with_columns(
        pl.lit(release).alias("source_version"), pl.lit(datetime.now(UTC)).alias("retrieved_at")
    )
    previous = read_table(home.home.warehouse, "gene_identifiers")
    with_ensembl = int(frame["ensembl_id"].is_not_null().sum())
    context.log.info(f"{frame.height:,} HGNC genes ({with_ensembl:,} with Ensembl ids), {release}")
    return dg.Output(
        frame,
        metadata={
            "source_version": release,
            "mode": mode,
            "origin": str(origin),
            "genes": frame.height,
            "genes_with_ensembl": with_ensembl,
            "previous_rows": previous.height if previous is not None else 0,
            "licence": source.get("licence", ""),
        },
    )


def _annotation_metadata(config: SourceConfig, mode: str) -> dict[str, str]:
    return {
        "database": config.name,
        "licence": config.licence,
        "refresh_cron": config.refresh_cron,
        "mode": mode,
    }


def build_annotation_asset(database: str, config: SourceConfig) -> dg.AssetsDefinition:
    cls = client_class(database)
    key_note = f" Needs ${config.key_env}; skipped without it." if cls.needs_key else ""

    @dg.asset(
        name=f"annotations_{database}",
        io_manager_key="warehouse",
        group_name=GROUP,
        kinds={"duckdb", "polars"},
        owners=OWNERS,
        # per-gene sources ask about the datasets' genes: after ingest in a run, and stale when a dataset is added
        deps=["gene_identifiers", *(["genes"] if cls.per_gene else [])],
        output_required=False,
        pool="duckdb",
        metadata={"licence": config.licence, "refresh_cron": config.refresh_cron},
        description=f"{cls.title} gene annotations ({cls.term_kind} terms), ids mapped to Ensembl. "
        f"Licence: {config.licence}. Refreshed on cron `{config.refresh_cron}`.{key_note} "
        f"Table `annotations_{database}`; all databases: view `gene_annotations`.",
    )
    def annotation_asset(
        context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource
    ) -> Iterator[dg.Output[pl.DataFrame]]:
        mode = config.resolved_mode()
        source = load_sources()[database]
        warehouse = home.home.warehouse
        try:
            resolver = load_resolver(warehouse)
            genes = dataset_gene_set(warehouse, resolver) if mode == "live" else None
            result = refresh(
                database,
                source,
                resolver,
                mode=mode,  # type: ignore[arg-type]
                files=[Path(f) for f in config.files],
                genes=genes,
                cache_dir=home.home.cache / "http",
            )
        except SourceSkipped as skipped:
            # not a failure: the run succeeds, nothing is materialised, the old table (if any) stays
            context.log.warning(f"skipped annotations_{database}: {skipped}")
            return
        except AnnotationError as error:
            raise dg.Failure(
                description=f"annotations_{database} not refreshed (previous table kept): {error}"
            ) from error
        frame = result.frame
        diff = diff_annotations(read_table(warehouse, f"annotations_{database}"), frame)
        report = result.resolution
        context.log.info(f"{database}: {frame.height:,} rows, {report.summary()}")
        top_terms = (
            frame.group_by("term_id", "term_name")
            .len()
            .sort("len", descending=True)
            .head(10)
            .rename({"len": "genes"})
        )
        yield dg.Output(
            frame,
            metadata={
                **_annotation_metadata(source, mode),
                "source_version": result.source_version,
                "origin": result.origin,
                "rows": frame.height,
                "genes": frame["ensembl_id"].n_unique(),
                "terms": frame["term_id"].n_unique(),
                "source_rows": result.n_raw_rows,
                **{f"diff_{k}": v for k, v in diff.as_metadata().items()},
                "id_mapping": dg.MetadataValue.json(report.as_metadata()),
                "id_mapping_summary": report.summary(),
                "top_terms": dg.MetadataValue.md(format_frame(top_terms, "table")),
            },
        )
        # the table is written as the output is yielded; now the union view can include it
        database_path = str(warehouse)
        with warehouse_writer(database_path) as connection:
            refresh_gene_annotations_view(connection)

    return annotation_asset


def build_annotation_assets() -> list[dg.AssetsDefinition]:
    sources = load_sources()
    return [
        build_annotation_asset(database, sources[database]) for database in CLIENTS if database in sources
    ]


def build_annotation_schedules(assets: list[dg.AssetsDefinition]) -> list[dg.ScheduleDefinition]:
    """One schedule per database on its sources.yaml cadence, plus the monthly HGNC refresh."""
    sources = load_sources()
    schedules = []
    targets = [("gene_identifiers", load_gene_identifier_source()["refresh_cron"], None)]
    names = {key.path[-1] for a in assets for key in a.keys}
    targets += [
        (f"annotations_{db}", sources[db].refresh_cron, sources[db].key_env)
        for db in CLIENTS
        if db in sources and f"annotations_{db}" in names
    ]
    if "hpo_ontology" in names and "hpo" in sources:  # the ontology follows the HPO annotation releases
        targets.append(("hpo_ontology", sources["hpo"].refresh_cron, None))
    for asset_name, cron, key_env in targets:
        job = dg.define_asset_job(f"refresh_{asset_name}", selection=[asset_name])
        schedules.append(_schedule(asset_name, cron, key_env, job))
    return schedules


def _schedule(asset_name: str, cron: str, key_env: str | None, job: Any) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"refresh_{asset_name}_schedule",
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refreshes {asset_name} on `{cron}` (external/sources.yaml)."
        + (f" Skips while ${key_env} is unset." if key_env else ""),
    )
    def refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if key_env and not secret(key_env):
            return dg.SkipReason(
                f"{key_env} is not set: {asset_name} needs an API key (licence-gated source)"
            )
        return dg.RunRequest(
            run_key=None, tags={"sae-genomics/refresh": asset_name, "sae-genomics/cron": cron}
        )

    return refresh_schedule
