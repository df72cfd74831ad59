"""The incoming/ sensor: each new .h5ad dropped into $SAE_GENOMICS_HOME/incoming is registered and ingested.

Logic: sae_genomics_core.data.incoming.register_incoming.
"""

from __future__ import annotations

import json

import dagster as dg

from sae_genomics_core.data.incoming import register_incoming
from sae_genomics_dagster.defs.datasets import jobs
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import HomeResource, ModelResource


@dg.sensor(
    job=jobs.dataset_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new or changed .h5ad in $SAE_GENOMICS_HOME/incoming (or $SAE_GENOMICS_INCOMING, a "
    "folder or an s3:// prefix) as a dataset partition and "
    "requests its ingest run. Registration is all-or-nothing: every cell is validated and the genes are checked "
    "against the model's vocab first; files that fail are logged and skipped until they change, and leave no "
    "entry or partition.",
)
def incoming_h5ad(
    context: dg.SensorEvaluationContext, home: HomeResource, model: ModelResource
) -> dg.SensorResult:
    scan = register_incoming(home.home, json.loads(context.cursor or "{}"), model.spec, context.log)
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name or "dataset"))
    new_keys = list(dict.fromkeys(name for name, _ in scan.registered if name not in known))
    run_requests = [
        dg.RunRequest(partition_key=name, run_key=f"{name}@{mtime}") for name, mtime in scan.registered
    ]
    refused = (
        f"refused (see logs): {', '.join(scan.refused)}" if scan.refused else "no new .h5ad in incoming/"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(scan.seen),
        skip_reason=None if run_requests else refused,
    )
