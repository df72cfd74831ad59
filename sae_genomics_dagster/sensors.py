"""The incoming/ sensor: each new .h5ad dropped into $SAE_GENOMICS_HOME/incoming is registered and ingested."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetError
from sae_genomics_core.data.registry import Registry
from sae_genomics_dagster.jobs import dataset_pipeline_job
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import ModelResource

# A file modified more recently than this may still be being copied; it is picked up next tick.
SETTLE_SECONDS = 5.0


def build_incoming_sensor(home: Home, settle_seconds: float = SETTLE_SECONDS) -> dg.SensorDefinition:
    @dg.sensor(
        name="incoming_h5ad",
        job=dataset_pipeline_job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers each new or changed .h5ad in {home.incoming} as a dataset partition "
        "and requests its ingest run. Registration is all-or-nothing: every cell is validated and the genes "
        "are checked against the model's vocab first; files that fail are logged and skipped until they "
        "change, and leave no entry or partition.",
    )
    def incoming_h5ad(context: dg.SensorEvaluationContext, model: ModelResource) -> dg.SensorResult:
        seen: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        registry = Registry(home)
        known = set(context.instance.get_dynamic_partitions(dataset_partitions.name or "dataset"))
        new_keys: list[str] = []
        run_requests: list[dg.RunRequest] = []
        refused: list[str] = []
        now = time.time()
        for path in sorted(home.incoming.glob("*.h5ad")) if home.incoming.exists() else []:
            mtime = path.stat().st_mtime
            if seen.get(path.name) == mtime or now - mtime < settle_seconds:
                continue
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
                problems = error.problems if isinstance(error, DatasetError) else []
                context.log.error(str(error))
                refused.append(
                    f"{path.name} ({'; '.join(p.problem for p in problems) or type(error).__name__})"
                )
                continue
            if entry.name not in known and entry.name not in new_keys:
                new_keys.append(entry.name)
            run_requests.append(dg.RunRequest(partition_key=entry.name, run_key=f"{entry.name}@{mtime}"))
        skip_reason = None
        if not run_requests:
            skip_reason = (
                f"refused (see logs): {', '.join(refused)}" if refused else "no new .h5ad in incoming/"
            )
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[dataset_partitions.build_add_request(new_keys)] if new_keys else [],
            cursor=json.dumps(seen),
            skip_reason=skip_reason,
        )

    return incoming_h5ad


def build_sae_after_ingest_sensor(
    home: Home, sae_job: dg.UnresolvedAssetJobDefinition
) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="train_saes_after_activations",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[dataset_pipeline_job],
        request_job=sae_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When a dataset's pipeline has extracted activations, requests the SAE training of every extracted layer.",
    )
    def train_saes_after_activations(
        context: dg.RunStatusSensorContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        dataset = context.dagster_run.tags.get("dagster/partition")
        if not dataset:
            return dg.SkipReason("the run had no dataset partition")
        return [
            dg.RunRequest(
                partition_key=dg.MultiPartitionKey({"dataset": dataset, "layer": str(layer)}),
                run_key=f"{context.dagster_run.run_id}:{layer}",
            )
            for layer in extracted_layers(home, dataset)
        ] or dg.SkipReason(f"no activations found for {dataset}")

    return train_saes_after_activations


def extracted_layers(home: Home, dataset: str) -> list[int]:
    pointer = home.artefacts / "activations" / dataset / "CURRENT.json"
    if not pointer.exists():
        return []
    manifest = json.loads((Path(json.loads(pointer.read_text())["path"]) / "manifest.json").read_text())
    return [int(layer) for layer in manifest["layers"]]
