"""Crashed runs free their pool slots, blocked runs say what they wait for and obey Ctrl-C, steps die with their run.

Real processes on a real instance (a temporary DAGSTER_HOME with the project's dagster.yaml): a run
holding a pool is `kill -9`ed, then a new run needing that pool must complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.monitoring import concurrency as concurrency_daemon
from dagster._daemon.monitoring.run_monitoring import monitor_started_run
from dagster._time import get_current_datetime

from sae_genomics_core.config import Home
from sae_genomics_dagster import run_health
from sae_genomics_dagster.instance import get_instance

# A step process of the multiprocess test job imports this module first (the code location), as
# the real step processes import sae_genomics_dagster.definitions.
run_health.die_with_parent()

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 45.0  # a run behind a crashed one must finish well within this
Spawn = Callable[[str], subprocess.Popen[str]]


def _pool_job(pool: str, seconds: float, marker: str) -> dg.JobDefinition:
    @dg.asset(name=f"hold_{pool}", pool=pool)
    def hold() -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(seconds)

    job = dg.define_asset_job(f"hold_{pool}_job", selection=[hold.key])
    return dg.Definitions(assets=[hold], jobs=[job]).resolve_job_def(job.name)


def run_in_pool(root: str, pool: str, seconds: float, marker: str) -> None:
    """Subprocess entry: one in-process run through the CLI's `_execute`, in `pool`."""
    from sae_genomics_dagster.cli import _execute

    instance = get_instance(Home(Path(root)))
    sys.exit(0 if _execute(_pool_job(pool, seconds, marker), None, instance) else 1)


@pytest.fixture
def spawn(home: Home) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start `python -c <call>` with this module imported on the test's home; kill what is left at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(call: str) -> subprocess.Popen[str]:
        code = f"from tests.dagster.test_run_health import *; {call}"
        env = {**os.environ, "SAE_GENOMICS_HOME": str(home.root), "DAGSTER_HOME": str(home.dagster_home)}
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", code], cwd=REPO, env=env, text=True, stderr=subprocess.PIPE
            )
        )
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def _stderr_lines(process: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Collect stderr in a thread (so a silent process cannot hang the test); join the thread for the rest."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    return lines, reader


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _holders(instance: dg.DagsterInstance, pool: str) -> set[str]:
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


def _start_holder(spawn: Spawn, home: Home, pool: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    marker = tmp_path / f"holding_{pool}"
    holder = spawn(f"run_in_pool({str(home.root)!r}, {pool!r}, 600, {str(marker)!r})")
    _wait_for(marker.exists, 60, f"the holder to claim pool {pool}")
    (run_id,) = _holders(get_instance(home), pool)
    return holder, run_id


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["gpu", "duckdb"])
def test_killed_run_frees_its_pool(spawn: Spawn, home: Home, pool: str, tmp_path: Path) -> None:
    holder, crashed = _start_holder(spawn, home, pool, tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    instance = get_instance(home)
    assert instance.get_run_by_id(crashed).status == dg.DagsterRunStatus.STARTED  # the crash left it
    started = time.monotonic()
    after = spawn(f"run_in_pool({str(home.root)!r}, {pool!r}, 0, {str(tmp_path / 'next')!r})")
    _, stderr = after.communicate(timeout=BOUND_S)
    assert after.returncode == 0, stderr
    assert time.monotonic() - started < BOUND_S
    assert f"run {crashed} crashed" in stderr
    assert instance.get_run_by_id(crashed).status == dg.DagsterRunStatus.FAILURE
    assert not _holders(instance, pool)


def _pending(instance: dg.DagsterInstance, pool: str) -> list[str]:
    steps = instance.event_log_storage.get_concurrency_info(pool).pending_steps
    return [step.run_id for step in steps if step.assigned_timestamp is None]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_blocked_run_names_its_pool_and_obeys_ctrl_c(
    spawn: Spawn, home: Home, tmp_path: Path, stop: signal.Signals
) -> None:
    _, holding = _start_holder(spawn, home, "gpu", tmp_path)
    waiter = spawn(f"run_in_pool({str(home.root)!r}, 'gpu', 0, {str(tmp_path / 'w')!r})")
    lines, reader = _stderr_lines(waiter)
    _wait_for(lambda: any(line.startswith("waiting for") for line in lines), 60, "the waiting message")
    assert f"waiting for pool gpu (limit 1) held by run {holding}" in "".join(lines)
    before = _cpu_seconds(waiter.pid)
    time.sleep(2)
    assert _cpu_seconds(waiter.pid) - before < 0.5  # it sleeps, it does not spin a core
    waiter.send_signal(stop)
    with contextlib.suppress(subprocess.TimeoutExpired):
        waiter.wait(timeout=10)
    reader.join(timeout=5)
    assert waiter.returncode == 130
    assert f"while waiting for pool gpu (limit 1) held by run {holding}" in "".join(lines)
    assert _holders(get_instance(home), "gpu") == {holding}  # the holder keeps its slot
    assert not _pending(get_instance(home), "gpu")  # the interrupted run queues no more


@pytest.mark.slow
def test_ctrl_c_in_a_running_step_stops_the_command(spawn: Spawn, home: Home, tmp_path: Path) -> None:
    """`annotate` runs one job per database: Ctrl-C must end the command, not only the current run."""
    holder, _ = _start_holder(spawn, home, "duckdb", tmp_path)
    holder.send_signal(signal.SIGINT)
    stderr = holder.communicate(timeout=10)[1]
    assert holder.returncode == 130
    assert "while running step hold_duckdb; it is marked failed" in stderr
    assert not _holders(get_instance(home), "duckdb")  # a step stopped by Ctrl-C gives its slot back


def test_health_check_and_sweep_see_dead_and_reused_workers(home: Home) -> None:
    instance = get_instance(home)
    launcher = run_health.LocalRunLauncher()
    launcher.register_instance(instance)
    me = run_health.worker_tags()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reused = {**me, run_health.START_TAG: str(float(me[run_health.START_TAG]) - 100)}
    cases = {
        "alive": (me, dg.DagsterRunStatus.STARTED),
        "dead": ({**me, run_health.PID_TAG: str(dead.pid)}, dg.DagsterRunStatus.FAILURE),
        "reused": (reused, dg.DagsterRunStatus.FAILURE),  # the pid now names a younger process
        "unknown": ({}, dg.DagsterRunStatus.STARTED),  # no worker recorded: left alone
    }
    runs = {
        name: create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags=tags)
        for name, (tags, _) in cases.items()
    }
    health = {name: launcher.check_run_worker_health(run).status for name, run in runs.items()}
    assert health == {
        "alive": run_health.WorkerStatus.RUNNING,
        "dead": run_health.WorkerStatus.FAILED,
        "reused": run_health.WorkerStatus.FAILED,
        "unknown": run_health.WorkerStatus.RUNNING,
    }
    run_health.sweep(instance)
    assert {n: instance.get_run_by_id(r.run_id).status for n, r in runs.items()} == {
        n: status for n, (_, status) in cases.items()
    }


def test_launched_run_worker_comes_from_dagsters_event(home: Home) -> None:
    """Runs launched by `dagster dev` carry no tags; their worker is in the "Started process" event."""
    instance = get_instance(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs = {
        pid: create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED)
        for pid in (os.getpid(), dead.pid)
    }
    for pid, run in runs.items():
        instance.report_engine_event(
            f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
        )
    run_health.sweep(instance)
    assert instance.get_run_by_id(runs[os.getpid()].run_id).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(runs[dead.pid].run_id).status == dg.DagsterRunStatus.FAILURE


@dg.op
def sleeping_step() -> None:
    Path(os.environ["STEP_PID_FILE"]).write_text(str(os.getpid()))
    time.sleep(600)


@dg.job(executor_def=dg.multiprocess_executor)
def sleeping_job() -> None:
    sleeping_step()


def run_multiprocess(root: str) -> None:
    """Subprocess entry: the run worker of a multiprocess run (its step runs in a child process)."""
    dg.execute_job(dg.reconstructable(sleeping_job), get_instance(Home(Path(root))))


@pytest.mark.slow
def test_step_process_dies_with_its_run_worker(
    spawn: Spawn, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "step.pid"
    monkeypatch.setenv("STEP_PID_FILE", str(pid_file))
    worker = spawn(f"run_multiprocess({str(home.root)!r})")
    _wait_for(pid_file.exists, 60, "the step process to start")
    step = int(pid_file.read_text())
    try:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _wait_for(lambda: run_health.process_start_time(step) is None, 5, f"step process {step} to die")
    finally:
        if run_health.process_start_time(step) is not None:
            os.kill(step, signal.SIGKILL)


def test_daemon_monitoring_fails_a_dead_run_and_frees_its_slot(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `dagster dev` the daemon does the sweep: the installed dagster.yaml names the health-checking launcher."""
    instance = get_instance(home)
    assert isinstance(instance.run_launcher, run_health.LocalRunLauncher)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tags = {**run_health.worker_tags(), run_health.PID_TAG: str(dead.pid)}
    run = create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "train").is_claimed
    logger = logging.getLogger("test")
    monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), logger)  # type: ignore[arg-type]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    later = get_current_datetime() + timedelta(
        seconds=instance.run_monitoring_settings["free_slots_after_run_end_seconds"] + 1
    )
    monkeypatch.setattr(concurrency_daemon, "get_current_datetime", lambda: later)
    list(concurrency_daemon.execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), logger))  # type: ignore[arg-type]
    assert not _holders(instance, "gpu")
