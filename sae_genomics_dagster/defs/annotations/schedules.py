"""One refresh schedule per annotation database on its sources.yaml cadence, plus HGNC and the HPO ontology."""

import dagster as dg

from sae_genomics_core.annotations.base import load_gene_identifier_source
from sae_genomics_core.annotations.refresh import CLIENTS
from sae_genomics_core.config import secret
from sae_genomics_dagster.defs.annotations.assets import SOURCES


def refresh_schedule(asset_name: str, cron: str, key_env: str | None) -> dg.ScheduleDefinition:
    """A job refreshing `asset_name` on `cron`; skipped while the source's API key (`key_env`) is unset."""
    job = dg.define_asset_job(f"refresh_{asset_name}", selection=[asset_name])

    @dg.schedule(
        name=f"refresh_{asset_name}_schedule",
        cron_schedule=cron,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refreshes {asset_name} on `{cron}` (external/sources.yaml)."
        + (f" Skips while ${key_env} is unset." if key_env else ""),
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


schedules = [
    refresh_schedule("gene_identifiers", load_gene_identifier_source()["refresh_cron"], None),
    *(
        refresh_schedule(f"annotations_{db}", SOURCES[db].refresh_cron, SOURCES[db].key_env)
        for db in CLIENTS
        if db in SOURCES
    ),
    # the ontology follows the HPO annotation releases
    *([refresh_schedule("hpo_ontology", SOURCES["hpo"].refresh_cron, None)] if "hpo" in SOURCES else []),
]
