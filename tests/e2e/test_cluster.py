"""The cluster profile end to end on real servers on 127.0.0.1: PostgreSQL (run history), Redis (the Celery
broker), SeaweedFS (artefacts and step logs on S3) and two Celery workers standing for two machines, one on
the `gpu` queue and one on `default`. Two datasets materialise concurrently through the whole graph; the
GPU steps run only on the gpu worker, and the tables equal those of a local run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from sae_genomics_core.warehouse.sql import connect_read_only
from tests.servers import S3Server, new_database, postgres, redis

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GPU_STEPS = {
    *(
        "activations",
        "sae_checkpoint",
        "seed_stability",
        "feature_tables",
        "feature_effects",
        "enrichment_baselines",
    )
}
TABLES = (
    "cells",
    "genes",
    "activation_sets",
    "sae_checkpoints",
    "feature_genes",
    "feature_cell_types",
    "enrichment",
)
LOCATION_COLUMNS = {"uri", "created_at", "retrieved_at", "ingested_at", "source_path", "dataset"}
RUN = ["--layers", "1", "--sae-tokens", "20000"]


@dataclass(frozen=True)
class Cluster:
    environment: dict[str, str]
    home: Path
    logs_bucket: str
    workers: dict[str, subprocess.Popen]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "sae-genomics"), *args],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _start_worker(queue: str, environment: dict[str, str], log: Path) -> subprocess.Popen:
    command = [
        *(str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"),
        *("-y", str(REPO / "deploy" / "celery.yaml"), "-q", queue, "-n", queue),
        *("--", "--concurrency=1"),
    ]
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 90
    while " ready." not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {queue} worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    artefacts, logs, lake = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("artefacts", "logs", "lake"))
    for bucket in (artefacts, logs, lake):
        s3_server.bucket(bucket)
    with postgres() as postgres_url, redis(folder / "redis") as broker:
        home = folder / "home"
        environment = {
            **os.environ,
            **s3_server.environment,
            "SAE_GENOMICS_PROFILE": "cluster",
            "SAE_GENOMICS_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "SAE_GENOMICS_POSTGRES_URL": postgres_url,
            "SAE_GENOMICS_CELERY_BROKER": f"{broker}/0",
            "SAE_GENOMICS_CELERY_BACKEND": f"{broker}/1",
            "SAE_GENOMICS_ARTEFACTS": f"s3://{artefacts}/sae-genomics",
            "SAE_GENOMICS_LOGS_BUCKET": logs,
            "SAE_GENOMICS_GPUS": "1",
            # the tables in DuckLake: its catalog in the same Postgres, its Parquet files on S3
            "SAE_GENOMICS_WAREHOUSE": f"ducklake:postgres:{new_database(postgres_url, 'lake')}",
            "SAE_GENOMICS_LAKE_DATA": f"s3://{lake}/tables/",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the workers start `celery` from the venv
        }
        environment.pop("SAE_GENOMICS_MODEL", None)
        init = subprocess.run(
            [str(BIN / "sae-genomics"), "init"], env=environment, capture_output=True, text=True
        )
        assert init.returncode == 0, init.stderr
        workers = {
            queue: _start_worker(queue, environment, folder / f"{queue}.log") for queue in ("gpu", "default")
        }
        try:
            yield Cluster(environment, home, logs, workers)
        finally:
            for worker in workers.values():
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _tables(
    warehouse: Path, dataset: str, environment: dict[str, str] | None = None
) -> dict[str, pl.DataFrame]:
    with _environment(environment or {}), connect_read_only(warehouse) as connection:
        frames = {
            table: connection.execute(f"select * from {table} where dataset = ?", [dataset]).pl()
            for table in TABLES
        }
    return {name: frame.drop(LOCATION_COLUMNS & set(frame.columns)) for name, frame in frames.items()}


def _celery_steps(cluster: Cluster, partition: str | None = None) -> list[tuple[str, str]]:
    """(step, Celery worker) of every step a worker started, from the runs' event logs in Postgres."""
    with _environment(cluster.environment), dg.DagsterInstance.get() as instance:
        filters = dg.RunsFilter(tags={"dagster/partition": partition}) if partition else None
        started = []
        for record in instance.get_run_records(filters=filters):
            for entry in instance.all_logs(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
            ):
                data = entry.dagster_event.event_specific_data if entry.dagster_event else None
                worker = data.metadata.get("Celery worker") if data and data.metadata else None
                if worker is not None and entry.step_key:
                    started.append((entry.step_key, str(worker.value)))
        return started


def _overhead_per_step(environment: dict[str, str], partitions: tuple[str, ...]) -> float:
    """(Σ run wall time − Σ step compute time) / steps over the runs of `partitions`: what orchestration adds
    to each step (the graph is a chain, so its steps run one after another)."""
    wall = compute = steps = 0.0
    with _environment(environment), dg.DagsterInstance.get() as instance:
        for partition in partitions:
            for record in instance.get_run_records(
                filters=dg.RunsFilter(tags={"dagster/partition": partition})
            ):
                wall += (record.end_time or 0) - (record.start_time or 0)
                started: dict[str, float] = {}
                for entry in instance.all_logs(record.dagster_run.run_id):
                    event = entry.dagster_event
                    if event is not None and event.event_type == dg.DagsterEventType.STEP_START:
                        started[entry.step_key] = entry.timestamp  # type: ignore[index]
                    elif event is not None and event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                        compute += entry.timestamp - started.pop(entry.step_key, entry.timestamp)  # type: ignore[arg-type]
                        steps += 1
    return (wall - compute) / max(steps, 1)


def _workers_by_step(cluster: Cluster) -> dict[str, set[str]]:
    """Which Celery worker ran each step."""
    workers: dict[str, set[str]] = {}
    for step, worker in _celery_steps(cluster):
        workers.setdefault(step, set()).add(worker)
    return workers


def test_two_datasets_run_concurrently_on_celery_workers_like_a_local_run(
    cluster: Cluster, demo_h5ad: Path, tmp_path: Path
) -> None:
    doctor = cluster.cli("doctor")
    assert doctor.returncode == 0 and "2 worker(s) on default, gpu" in doctor.stdout, doctor.stdout
    annotated = cluster.cli("annotate", "--mode", "snapshot", "--only", "hpo", "gencc")
    assert annotated.returncode == 0, annotated.stderr[-3000:]
    for name in ("d1", "d2"):
        registered = cluster.cli(
            "register", str(demo_h5ad), "--name", name, "--cell-type-key", "bulk_labels", "--no-run"
        )
        assert registered.returncode == 0, registered.stderr[-3000:]
    started = time.monotonic()
    runs = [
        subprocess.Popen(
            [str(BIN / "sae-genomics"), "materialize", name, *RUN],
            env=cluster.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("d1", "d2")
    ]
    outputs = [run.communicate(timeout=900) for run in runs]
    cluster_seconds = time.monotonic() - started
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-4000:]

    # every step ran on a Celery worker, the GPU steps only on the gpu one
    workers = _workers_by_step(cluster)
    assert set(workers) >= GPU_STEPS
    for step, names in workers.items():
        # Celery names a worker <name>@<host>: the name is its queue here
        assert {name.split("@")[0] for name in names} == {"gpu" if step in GPU_STEPS else "default"}, (
            step,
            names,
        )

    # artefacts and step logs on S3; the SQL command reads the tables
    import s3fs

    environment = cluster.environment
    s3 = s3fs.S3FileSystem(
        key=environment["AWS_ACCESS_KEY_ID"],
        secret=environment["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": environment["AWS_ENDPOINT_URL"]},
    )
    root = cluster.environment["SAE_GENOMICS_ARTEFACTS"].removeprefix("s3://")
    assert s3.exists(f"{root}/sae/d1/L1/CURRENT.json") and s3.exists(f"{root}/pages/d2/L1/index.html")
    assert s3.find(f"{cluster.logs_bucket}/dagster-step-logs")
    counted = cluster.cli("sql", "select dataset, count(*) as n from feature_genes group by all order by 1")
    assert counted.returncode == 0 and "d1" in counted.stdout and "d2" in counted.stdout, counted.stderr

    # the same data on the local profile gives the same tables
    local_home = tmp_path / "local"
    local = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAE_GENOMICS_")},
        "SAE_GENOMICS_HOME": str(local_home),
        "DAGSTER_HOME": str(local_home / "dagster"),
    }
    seconds = {}
    for args in (
        ("annotate", "--mode", "snapshot", "--only", "hpo", "gencc"),
        ("register", str(demo_h5ad), "--name", "d1", "--cell-type-key", "bulk_labels", *RUN),
    ):
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "sae-genomics"), *args], env=local, capture_output=True, text=True, timeout=600
        )
        seconds[args[0]] = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-3000:]
    lake = Path(cluster.environment["SAE_GENOMICS_WAREHOUSE"])
    assert not (cluster.home / "warehouse.duckdb").exists()  # every table went to the lake
    on_cluster, here = (
        _tables(lake, "d1", cluster.environment),
        _tables(local_home / "warehouse.duckdb", "d1"),
    )
    twin = _tables(lake, "d2", cluster.environment)
    for table in TABLES:
        assert on_cluster[table].height > 0, table
        assert on_cluster[table].equals(here[table]), table
        assert twin[table].equals(on_cluster[table]), table
    # for benchmarks/RESULTS.md: the same 9 steps per dataset, local in-process vs on the Celery workers
    print(
        f"cluster: two datasets at once in {cluster_seconds:.1f} s; local: one in {seconds['register']:.1f} s"
    )
    overheads = [_overhead_per_step(env, ("d1", "d1|1")) for env in (cluster.environment, local)]
    print("orchestration per step: cluster {:.2f} s, local {:.2f} s".format(*overheads))


def test_a_step_whose_worker_process_dies_runs_again_and_the_run_succeeds(
    cluster: Cluster, demo_h5ad: Path
) -> None:
    import psutil

    registered = cluster.cli(
        "register", str(demo_h5ad), "--name", "d3", "--cell-type-key", "bulk_labels", "--no-run"
    )
    assert registered.returncode == 0, registered.stderr[-3000:]
    run = subprocess.Popen(
        [str(BIN / "sae-genomics"), "materialize", "d3", "--layers", "1", "--sae-tokens", "400000"],
        env=cluster.environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while ("sae_checkpoint", "gpu") not in {(s, w.split("@")[0]) for s, w in _celery_steps(cluster, "d3|1")}:
        assert run.poll() is None and time.monotonic() < deadline, "the SAE step never started"
        time.sleep(0.3)
    # the process running the step: a pool process of the gpu worker (dagster-celery CLI → celery → pool)
    (celery,) = psutil.Process(cluster.workers["gpu"].pid).children()
    pool = celery.children()
    assert pool
    for process in pool:
        process.kill()
    _, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr[-4000:]
    # the step ran again (a second start on the gpu worker) and left one result: no duplicate rows
    starts = [step for step, _ in _celery_steps(cluster, "d3|1") if step == "sae_checkpoint"]
    assert len(starts) == 2
    with (
        _environment(cluster.environment),
        connect_read_only(Path(cluster.environment["SAE_GENOMICS_WAREHOUSE"])) as lake,
    ):
        (checkpoints,) = lake.execute("select count(*) from sae_checkpoints where dataset = 'd3'").fetchone()
        duplicated = lake.execute(
            "select count(*) from (select feature, rank from feature_genes where dataset = 'd3' group by all having count(*) > 1)"
        ).fetchone()[0]
    assert checkpoints == 1 and duplicated == 0
