"""One refresh schedule per annotation database on its sources.yaml cadence, plus HGNC and the HPO ontology."""

import dagster as dg

from sae_genomics_core.annotations.base import load_gene_identifier_source
from sae_genomics_core.annotations.refresh import CLIENTS
from sae_genomics_core.config import Environment, secret
from sae_genomics_dagster.defs.annotations.assets import SOURCES


def refresh_schedule(asset_name: str, cron: str, key_env: str | None, fetches: str) -> dg.ScheduleDefinition:
    """A job refreshing `asset_name` on `cron`. A key-gated source starts stopped while its API key
    (`key_env`) is unset at start-up, and a tick still skips while it is unset."""
    job = dg.define_asset_job(f"refresh_{asset_name}", selection=[asset_name])
    gated = key_env is not None and not secret(key_env)
    mode = Environment.read().annotation_mode
    what = f"fetches {fetches} (network)" if mode == "live" else f"reads the {mode} files (no network)"
    key_note = (
        f" Stopped: ${key_env} is unset; set it, restart `make ui` and start this schedule."
        if gated
        else f" Needs ${key_env}."
        if key_env
        else ""
    )

    @dg.schedule(
        name=f"refresh_{asset_name}_schedule",
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED if gated else dg.DefaultScheduleStatus.RUNNING,
        description=f"Refreshes {asset_name} on `{cron}` (external/sources.yaml): in mode {mode} "
        f"($SAE_GENOMICS_ANNOTATION_MODE) it {what}.{key_note}",
    )
    def refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if key_env and not secret(key_env):
            return dg.SkipReason(
                f"{key_env} is not set: {asset_name} needs an API key (licence-gated source)"
            )
        return dg.RunRequest(
            run_key=None, tags={"sae-genomics/refresh": asset_name, "sae-genomics/cron": cron}
        )

    return refresh


_HGNC = load_gene_identifier_source()
schedules = [
    refresh_schedule("gene_identifiers", _HGNC["refresh_cron"], None, _HGNC["bulk_url"]),
    *(
        refresh_schedule(
            f"annotations_{db}",
            SOURCES[db].refresh_cron,
            SOURCES[db].key_env,
            SOURCES[db].api or SOURCES[db].bulk_url or "its source",
        )
        for db in CLIENTS
        if db in SOURCES
    ),
    # the ontology follows the HPO annotation releases
    *(
        [
            refresh_schedule(
                "hpo_ontology", SOURCES["hpo"].refresh_cron, None, SOURCES["hpo"].extra["ontology_url"]
            )
        ]
        if "hpo" in SOURCES
        else []
    ),
]
