"""The persistent Dagster instance under the home, and in-process runs against it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg

from sae_genomics_core.config import Environment, Home
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.profiles import GPU_POOL, instance_template


def instance_yaml_template() -> Path:
    """The dagster.yaml of the configured profile ($SAE_GENOMICS_PROFILE)."""
    return instance_template(Environment.read().profile)


def prepare_home(home: Home) -> Home:
    """Create the home layout, install the profile's dagster.yaml into it, and point DAGSTER_HOME there."""
    home.ensure()
    template = instance_yaml_template()
    target = home.dagster_home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != template.read_bytes():
        shutil.copyfile(template, target)
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    return home


def get_instance(home: Home) -> dg.DagsterInstance:
    prepare_home(home)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    environment = Environment.read()
    if environment.profile != "local":  # one slot of the `gpu` pool per GPU of the cluster
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, environment.gpus)
    return instance


def add_dataset_partition(instance: dg.DagsterInstance, name: str) -> None:
    partitions_name = dataset_partitions.name or "dataset"
    if not instance.has_dynamic_partition(partitions_name, name):
        instance.add_dynamic_partitions(partitions_name, [name])


def run_failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            data = event.step_failure_data
            user = data.user_failure_data
            messages.append(
                user.description if user and user.description else (data.error.message if data.error else "")
            )
    return [m for m in messages if m] or ["the run failed; see the run's logs in the Dagster UI"]
