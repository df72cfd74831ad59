"""Warehouse maintenance: a DuckLake keeps every replaced data file until its snapshots expire; a weekly
job expires them and deletes the files no snapshot needs.

Logic: sae_genomics_core.warehouse.lake.maintain_lake.
"""

import dagster as dg
from pydantic import Field

from sae_genomics_core.warehouse.lake import MaintenanceSettings, is_lake, maintain_lake
from sae_genomics_dagster.resources import HomeResource

MAINTENANCE = MaintenanceSettings()  # the core defaults


class MaintenanceConfig(dg.Config):
    keep_days: float = Field(default=MAINTENANCE.keep_days, description="snapshots kept this many days")


@dg.op(pool="duckdb")
def expire_lake_snapshots(
    context: dg.OpExecutionContext, config: MaintenanceConfig, home: HomeResource
) -> None:
    warehouse = home.home.warehouse
    if not is_lake(warehouse):
        context.log.info("the warehouse is a DuckDB file: nothing to expire")
        return
    done = maintain_lake(warehouse, MaintenanceSettings(keep_days=config.keep_days))
    context.log.info(f"lake maintenance: {done}")


@dg.job(description="Expire DuckLake snapshots older than keep_days and delete the files only they needed.")
def lake_maintenance() -> None:
    expire_lake_snapshots()


lake_maintenance_schedule = dg.ScheduleDefinition(
    job=lake_maintenance,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly, Sunday 03:00: DuckLake snapshot expiry and file cleanup (a no-op on a DuckDB file).",
)
