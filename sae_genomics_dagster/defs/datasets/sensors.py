"""The incoming/ sensor: each new .h5ad dropped into $SAE_GENOMICS_HOME/incoming is registered and ingested."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg

from sae_genomics_core.data.h5ad import DatasetError
from sae_genomics_dagster.defs.datasets import jobs
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import HomeResource, ModelResource

# A file modified more recently than this may still be being copied; it is picked up next tick.
SETTLE_SECONDS = 5.0


@dg.sensor(
    job=jobs.dataset_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new or changed .h5ad in $SAE_GENOMICS_HOME/incoming as a dataset partition and "
    "requests its ingest run. Registration is all-or-nothing: every cell is validated and the genes are checked "
    "against the model's vocab first; files that fail are logged and skipped until they change, and leave no "
    "entry or partition.",
)
def incoming_h5ad(
    context: dg.SensorEvaluationContext, home: HomeResource, model: ModelResource
) -> dg.SensorResult:
    seen: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    registry = home.registry
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name or "dataset"))
    new_keys: list[str] = []
    run_requests: list[dg.RunRequest] = []
    refused: list[str] = []
    for path in _settled_changes(home.home.incoming, seen):
        mtime = path.stat().st_mtime
        seen[path.name] = mtime
        known_entry = registry.find_by_path(path)
        if known_entry is not None and known_entry.mtime == mtime:
            continue  # registered from the shell already (with its own name and options)
        try:
            entry, _ = registry.register(
                path,
                name=known_entry.name if known_entry else None,
                options=known_entry.options if known_entry else None,
                source="sensor",
                model_spec=model.spec,
            )
        except Exception as error:  # one bad file must not stop the others (nor retry every tick)
            context.log.error(str(error))
            refused.append(f"{path.name} ({_why(error)})")
            continue
        if entry.name not in known and entry.name not in new_keys:
            new_keys.append(entry.name)
        run_requests.append(dg.RunRequest(partition_key=entry.name, run_key=f"{entry.name}@{mtime}"))
    skip_reason = None
    if not run_requests:
        skip_reason = f"refused (see logs): {', '.join(refused)}" if refused else "no new .h5ad in incoming/"
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(seen),
        skip_reason=skip_reason,
    )


def _settled_changes(incoming: Path, seen: dict[str, float]) -> list[Path]:
    """The .h5ad files that changed since the cursor and have not been written to for SETTLE_SECONDS."""
    now = time.time()
    files = sorted(incoming.glob("*.h5ad")) if incoming.exists() else []
    return [
        path
        for path in files
        if seen.get(path.name) != (mtime := path.stat().st_mtime) and now - mtime >= SETTLE_SECONDS
    ]


def _why(error: Exception) -> str:
    problems = error.problems if isinstance(error, DatasetError) else []
    return "; ".join(p.problem for p in problems) or type(error).__name__
