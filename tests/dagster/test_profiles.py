"""Deployment profiles: the executor each one runs steps with, the instance it installs, and the GPU steps'
Kubernetes Job specs (built as dagster-k8s builds them, without a cluster)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from sae_genomics_core.config import Environment, Home
from sae_genomics_core.errors import SettingsError
from sae_genomics_dagster.definitions import build_definitions
from sae_genomics_dagster.profiles import (
    CELERY_QUEUE_TAG,
    K8S_CONFIG_TAG,
    executor,
    gpu_op_tags,
    instance_template,
)

GPU_ASSETS = {"activations", "sae_checkpoint", "feature_stats", "enrichment_baselines"}


def _profile(name: str, **overrides: object) -> Environment:
    return dataclasses.replace(Environment.read(), profile=name, **overrides)


def test_each_profile_has_its_executor() -> None:
    assert executor(_profile("local")) is None  # Dagster's default: the multiprocess executor
    assert executor(_profile("cluster")).name == "celery"  # type: ignore[union-attr]
    assert executor(_profile("kubernetes")).name == "k8s"  # type: ignore[union-attr]


def test_the_cluster_instance_keeps_run_history_in_postgres_and_step_logs_on_s3() -> None:
    config = yaml.safe_load(instance_template("cluster").read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "SAE_GENOMICS_POSTGRES_URL"}
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    celery = yaml.safe_load(instance_template("cluster").with_name("celery.yaml").read_text())
    # untagged steps would otherwise go to a queue named `dagster` that no worker listens on
    assert celery["execution"]["config"]["config_source"]["task_default_queue"] == "default"
    assert (
        yaml.safe_load(instance_template("kubernetes").read_text())["run_launcher"]["class"]
        == "K8sRunLauncher"
    )


def test_gpu_steps_go_to_the_gpu_queue_and_the_rest_to_default(tmp_path: Path) -> None:
    graph = build_definitions(Home(tmp_path / "home")).resolve_asset_graph()
    queues = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assets = graph.assets_def_for_key(key)
            queues[key.to_user_string()] = assets.op.tags.get(CELERY_QUEUE_TAG, "default")
    assert {name for name, queue in queues.items() if queue == "gpu"} >= GPU_ASSETS
    assert queues["cells"] == queues["enrichment"] == queues["feature_pages"] == "default"


def test_a_gpu_step_becomes_a_kubernetes_job_asking_for_a_gpu() -> None:
    tags = {
        name: json.dumps(value) if isinstance(value, dict) else value for name, value in gpu_op_tags().items()
    }
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="registry.example.org/sae-genomics:cuda", dagster_home="/opt/dagster"),
        args=["dagster", "api", "execute_step"],
        job_name="sae-checkpoint-step",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
    )
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}  # a Kubernetes quantity
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"


def test_the_gpu_request_is_configurable_and_a_bad_one_is_refused() -> None:
    custom = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 2, "memory": "64Gi"}}}}
    tags = gpu_op_tags(_profile("kubernetes", k8s_gpu_config=json.dumps(custom)))
    assert tags[K8S_CONFIG_TAG] == custom
    with pytest.raises(SettingsError, match="not JSON"):
        gpu_op_tags(_profile("kubernetes", k8s_gpu_config="{gpu: 2"))
    with pytest.raises(Exception, match="container_confg"):  # dagster-k8s rejects an unknown key
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps({"container_confg": {}})})


def test_an_unknown_profile_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAE_GENOMICS_PROFILE", "clutser")
    with pytest.raises(SettingsError, match="'clutser'") as refused:
        Environment.read()
    assert "local, cluster, kubernetes" in refused.value.explain()


def test_the_cluster_definitions_load_with_the_celery_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAE_GENOMICS_PROFILE", "cluster")
    defs = build_definitions(Home(tmp_path / "home"))
    assert defs.resolve_job_def("sae_pipeline").executor_def.name == "celery"
    assert isinstance(defs.resolve_job_def("dataset_pipeline"), dg.JobDefinition)


def test_the_doctor_says_what_a_cluster_profile_lacks(tmp_path: Path) -> None:
    from sae_genomics_core.doctor import diagnose

    local = {f.check: f for f in diagnose(Home(tmp_path / "local"), _profile("local"))}
    assert all(finding.ok for finding in local.values()) and "postgres" not in local
    cluster = _profile(
        "cluster",
        postgres_url="postgresql+psycopg2://x@127.0.0.1:1/nothing",
        celery_broker=None,
        artefacts_root=None,
    )
    findings = {f.check: f for f in diagnose(Home(tmp_path / "cluster"), cluster)}
    assert not findings["postgres"].ok and "start PostgreSQL" in findings["postgres"].fix
    assert not findings["object storage"].ok and "SAE_GENOMICS_ARTEFACTS" in findings["object storage"].fix
    assert (
        not findings["celery workers"].ok and "SAE_GENOMICS_CELERY_BROKER" in findings["celery workers"].fix
    )


def test_the_doctor_command_passes_on_the_local_profile(
    home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's `sae-genomics doctor` on a laptop: every check of the local profile passes."""
    from sae_genomics_dagster.cli import main

    monkeypatch.delenv("SAE_GENOMICS_PROFILE", raising=False)
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "profile: local"
    assert [line.split(":")[0] for line in lines[1:]] == ["ok  home", "ok  artefacts", "ok  accelerator"]
