"""Crashed runs must not hold pool slots, blocked runs must say what they wait for, and steps die with their run.

A run records its worker process (pid, host, start time); a process that is gone (or whose pid now
belongs to a younger process) means the run crashed. `sweep` fails such runs and frees their
`gpu`/`duckdb` slots: the CLI sweeps before each in-process run and while a run waits for a slot,
and under `dagster dev` the daemon's run monitoring asks `LocalRunLauncher.check_run_worker_health`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._utils.interrupts import check_captured_interrupt

PID_TAG = "sae_genomics/worker_pid"
HOST_TAG = "sae_genomics/worker_host"
START_TAG = "sae_genomics/worker_start"
# /proc start times come from clock ticks and a boot time rounded to seconds
START_TOLERANCE_S = 2.0
ACTIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
WAIT_REPORT_EVERY_S = 30.0  # how often a blocked run repeats what it waits for (and sweeps)
INTERRUPT_POLL_S = 0.2  # how quickly a blocked run notices Ctrl-C / SIGTERM
PROC_STAT = Path("/proc/stat")
WORKER_STARTED_PREFIX = "Started process for run (pid: "  # Dagster's engine event for a launched run worker


@dataclass(frozen=True)
class Worker:
    """A run's worker process; `started_by` is the latest time that process can have started."""

    pid: int
    host: str
    started_by: float


def process_start_time(pid: int) -> float | None:
    """When a live process started (epoch seconds); None if there is none (zombies count as gone)."""
    if not PROC_STAT.exists():  # no /proc (macOS): existence only
        return _exists(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    if fields[0] in {"Z", "X"}:
        return None
    boot = next(line for line in PROC_STAT.read_text().splitlines() if line.startswith("btime"))
    return float(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _exists(pid: int) -> float | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0  # alive, start time unknown (so a reused pid passes for the worker)


def worker_tags() -> dict[str, str]:
    """Tags naming this process as the run's worker (the CLI runs in-process)."""
    pid = os.getpid()
    return {
        PID_TAG: str(pid),
        HOST_TAG: socket.gethostname(),
        START_TAG: f"{process_start_time(pid) or time.time():.2f}",
    }


def run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Worker | None:
    """The worker of a CLI run (tags) or of a launched run (Dagster's "Started process" event)."""
    if PID_TAG in run.tags:
        started = float(run.tags.get(START_TAG, "inf"))
        return Worker(int(run.tags[PID_TAG]), run.tags.get(HOST_TAG, ""), started + START_TOLERANCE_S)
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, ascending=False
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event and (event.message or "").startswith(WORKER_STARTED_PREFIX):
            pid = int(event.engine_event_data.metadata["pid"].value)  # type: ignore[arg-type]
            return Worker(pid, socket.gethostname(), record.timestamp + START_TOLERANCE_S)
    return None


def worker_alive(worker: Worker) -> bool | None:
    """False when the worker is gone or its pid was reused; None when it runs on another host."""
    if worker.host and worker.host != socket.gethostname():
        return None
    started = process_start_time(worker.pid)
    return started is not None and started <= worker.started_by


def _describe(worker: Worker | None) -> str:
    return "no worker process recorded" if worker is None else f"pid {worker.pid} on {worker.host}"


def sweep(instance: dg.DagsterInstance) -> list[str]:
    """Fail active runs whose worker is gone and free the pool slots of runs that are over; say what was done."""
    done = []
    # NOT_STARTED too: a CLI run killed between its creation and its start never starts
    swept = [*ACTIVE_STATUSES, dg.DagsterRunStatus.NOT_STARTED]
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=swept)):
        run = record.dagster_run
        worker = run_worker(instance, run)
        if worker is not None and worker_alive(worker) is False:
            instance.report_run_failed(
                run, f"The run's worker ({_describe(worker)}) is gone: the run crashed or was killed."
            )
            done.append(f"run {run.run_id} crashed ({_describe(worker)} is gone): marked failed")
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return done
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        worker = run and run_worker(instance, run)
        if run is None or (run.is_finished and (worker is None or worker_alive(worker) is False)):
            freed = storage.free_concurrency_slots_for_run(run_id)
            if freed:
                done.append(f"freed {freed} pool slot(s) of run {run_id}, which is over")
    return done


def pool_waits(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """For each pool the run waits for: the pool, its limit, and which runs (and processes) hold it."""
    storage = instance.event_log_storage
    waits = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        if not any(p.run_id == run_id and p.assigned_timestamp is None for p in info.pending_steps):
            continue
        holders = []
        for slot in info.claimed_slots:
            run = instance.get_run_by_id(slot.run_id)
            worker = run and run_worker(instance, run)
            status = run.status.value if run else "deleted"
            holders.append(f"run {slot.run_id} ({status}, step {slot.step_key}, {_describe(worker)})")
        held = "; ".join(holders) or "no run (a slot is being freed)"
        waits.append(f"pool {pool} (limit {info.limit}) held by {held}")
    return waits


class PoolWaitInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a run waited for a pool slot."""


_INTERRUPTED: dict[str, str] = {}  # run id -> what it was waiting for when interrupted


def interruption(result: dg.ExecuteInProcessResult) -> str | None:
    """What an in-process run was doing when Ctrl-C or SIGTERM stopped it; None if it was not stopped."""
    if waited_for := _INTERRUPTED.pop(result.run_id, None):
        return f"waiting for {waited_for}"
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure and event.step_failure_data else None
        if error and error.cls_name == DagsterExecutionInterruptedError.__name__:
            return f"running step {event.step_key}"
    return None


def _next_claim_check(self: InstanceConcurrencyContext) -> float:
    # Dagster 1.13 returns min(0, ...), which is never positive: a blocked run never sleeps and spins a core
    if not self._pending_claims:
        return 0.0
    now = time.time()
    return max(0.0, min((t - now for t in self._pending_timeouts.values()), default=0.0))


def _sleep_til_ready(self: ActiveExecution) -> None:
    """Sleep until the next retry or slot check in short slices, reporting the wait and honouring Ctrl-C."""
    context = self._instance_concurrency_context
    blocked = context is not None and context.has_pending_claims()
    if blocked:
        _report_wait(context)
    deadline = time.monotonic() + self.sleep_interval()
    while True:
        if check_captured_interrupt():  # Dagster only notes Ctrl-C here; raising ends the run as failed
            if not blocked:
                raise KeyboardInterrupt
            waits = pool_waits(context._instance, context._run_id)
            _INTERRUPTED[context._run_id] = "; ".join(waits) or "a pool slot"
            raise PoolWaitInterrupted(_INTERRUPTED[context._run_id])
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, INTERRUPT_POLL_S))


def _report_wait(context: Any) -> None:
    now = time.monotonic()
    if now < getattr(context, "_sae_next_report", 0.0):
        return
    context._sae_next_report = now + WAIT_REPORT_EVERY_S
    for message in sweep(context._instance):
        print(f"note: {message}", file=sys.stderr)
    for wait in pool_waits(context._instance, context._run_id):
        print(f"waiting for {wait} (Ctrl-C stops this run)", file=sys.stderr, flush=True)


def patch_blocked_wait() -> None:
    """Make the in-process executor's pool wait sleep, report and obey interrupts (Dagster 1.13's spins, deaf)."""
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _next_claim_check  # type: ignore[method-assign]
    ActiveExecution.sleep_til_ready = _sleep_til_ready  # type: ignore[method-assign]


def prepare_in_process_run(instance: dg.DagsterInstance) -> dict[str, str]:
    """Before an in-process run: sweep crashed runs, make pool waits sane; the tags to launch it with."""
    patch_blocked_wait()
    for message in sweep(instance):
        print(f"note: {message}", file=sys.stderr)
    return worker_tags()


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, plus a worker health check so run monitoring fails crashed runs."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run)
        alive = None if worker is None else worker_alive(worker)
        if alive is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"worker {_describe(worker)} is gone")
        # unknown counts as running: monitoring fails every run whose status is not RUNNING or SUCCESS
        return CheckRunHealthResult(WorkerStatus.RUNNING)


# the multiprocessing entry points of Dagster's step processes and of run workers started by a code server
_CHILD_ENTRIES = {
    "_execute_command_in_child_process": signal.SIGKILL,  # a step: nobody is left to report to
    "start_run_in_subprocess": signal.SIGTERM,  # a run worker: fails its run and stops its steps
}
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a Dagster step process or run worker, have Linux signal this process when its parent dies.

    Called on import of the code location, which every such process imports first; the webserver,
    daemon and code server are not started by these entry points and are left alone.
    """
    parent = multiprocessing.parent_process()
    target = getattr(multiprocessing.current_process(), "_target", None)
    sig = _CHILD_ENTRIES.get(getattr(target, "__name__", ""))
    if parent is None or sig is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent.pid:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
