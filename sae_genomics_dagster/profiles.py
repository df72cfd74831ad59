"""Deployment profiles ($SAE_GENOMICS_PROFILE): where runs, steps and state live.

- local (default): the multiprocess executor, SQLite run history, artefacts and tables on this machine.
- cluster: steps on Celery workers (a `gpu` queue for the GPU steps, `default` for the rest), run history
  in Postgres, step logs on object storage (deploy/dagster.cluster.yaml, deploy/celery.yaml).
- kubernetes: one Kubernetes Job per step (`k8s_job_executor`), GPU steps requesting `nvidia.com/gpu`
  (deploy/dagster.kubernetes.yaml, deploy/helm-values.yaml).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from sae_genomics_core.config import K8S_GPU_CONFIG_ENV, Environment
from sae_genomics_core.errors import SettingsError

PACKAGE_DIR = Path(__file__).resolve().parent
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_QUEUE = "gpu"
GPU_POOL = "gpu"  # one slot per GPU (the cluster profiles set it from $SAE_GENOMICS_GPUS)
# one GPU per GPU step, on nodes that have one (the NVIDIA device plugin's taint tolerated)
DEFAULT_K8S_GPU_CONFIG: dict[str, Any] = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def instance_template(profile: str) -> Path:
    """The dagster.yaml of a profile: packaged next to this module in a wheel, else in the checkout."""
    name = "dagster.yaml" if profile == "local" else f"dagster.{profile}.yaml"
    folders = (
        (PACKAGE_DIR, PACKAGE_DIR.parent)
        if profile == "local"
        else (PACKAGE_DIR / "deploy", PACKAGE_DIR.parent / "deploy")
    )
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{name} is missing from the installation; reinstall sae-genomics")


def gpu_op_tags(environment: Environment | None = None) -> dict[str, Any]:
    """Tags of the steps that run on a GPU: the Celery `gpu` queue and a Kubernetes GPU request (ignored
    by the executors that do not read them)."""
    environment = environment or Environment.read()
    k8s = DEFAULT_K8S_GPU_CONFIG
    if environment.k8s_gpu_config:
        try:
            k8s = json.loads(environment.k8s_gpu_config)
        except json.JSONDecodeError as error:
            raise SettingsError(
                f"${K8S_GPU_CONFIG_ENV} is not JSON: {error}",
                fix=f"set {K8S_GPU_CONFIG_ENV} to a dagster-k8s/config object, or unset it",
            ) from error
    return {CELERY_QUEUE_TAG: GPU_QUEUE, K8S_CONFIG_TAG: k8s}


def executor(environment: Environment) -> dg.ExecutorDefinition | None:
    """The profile's executor (None: Dagster's default, the multiprocess executor)."""
    if environment.profile == "cluster":
        from dagster_celery import celery_executor

        celery = dg.config_from_files([str(instance_template("cluster").with_name("celery.yaml"))])
        return celery_executor.configured(celery["execution"]["config"])
    if environment.profile == "kubernetes":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": 8, "step_k8s_config": {}})
    return None
