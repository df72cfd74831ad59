"""Fault injection: `kill -9` of the real CLI at a random point of each stage (an annotation refresh,
activations, SAE training, feature tables, enrichment), then the next run completes and every warehouse
table equals that of a home whose runs were never killed.

One victim home takes the kills in pipeline order, each followed by a new run of the same command (the
next kill lands in that new run, after it has redone everything before it), and a last run to completion;
fresh homes per stage would double the time past the CI budget. A kill point is a step, which of its
runs (the SAE job runs once per layer), and a delay after its start drawn within that run's duration in
the reference home, from a seeded RNG (`SAE_GENOMICS_FAULT_SEED` picks another); every assertion names
the seed and the kills, with the steps in flight when the process died (a step that ran faster than in
the reference may have ended: the kill then lands in the next one, is checked all the same, and the stage
is killed again with a new draw, up to KILL_ATTEMPTS times).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sae_genomics_core.config import Home
from tests.conftest import cli

SEED = int(os.environ.get("SAE_GENOMICS_FAULT_SEED", "14"))
DATASET = "chr21"
SAE_TOKENS = "5000"  # one training step per layer: the kill points, not the SAEs, are under test
POLL_S = 0.05
KILL_ATTEMPTS = 3  # per stage, while the kill lands after the stage's step has ended
STAGE_TIMEOUT_S = 240.0
# Row columns that record when a row was written, so they differ between any two runs: they are left out.
WRITE_TIMES = frozenset({"created_at", "retrieved_at", "ingested_at"})
# Paths under the home (artefact uris) differ by the home's own path, which is replaced by this mark.
HOME_MARK = "<home>"


@dataclass(frozen=True)
class Stage:
    """A stage to kill: the step key, and which command runs it."""

    name: str
    step: str | None  # None: any step of the annotation refresh runs
    command: tuple[str, ...]


ANNOTATE = ("annotate", "--mode", "snapshot")
MATERIALIZE = ("materialize", DATASET, "--sae-tokens", SAE_TOKENS)
STAGES = [
    Stage("annotation refresh", None, ANNOTATE),
    Stage("activations", "activations", MATERIALIZE),
    Stage("SAE training", "sae_checkpoint", MATERIALIZE),
    Stage("feature tables", "feature_tables", MATERIALIZE),
    Stage("enrichment", "enrichment", MATERIALIZE),
]


@dataclass
class Kill:
    stage: str
    step: str
    occurrence: int  # which run of the step (the SAE job runs once per layer)
    delay_s: float
    in_flight: list[str]  # the steps of the step's run started but not finished when the process died
    interrupted: list[str]  # the runs the kill left unfinished (the next run must mark them failed)

    def __str__(self) -> str:
        return (
            f"{self.stage}: {self.step} #{self.occurrence} + {self.delay_s:.2f} s "
            f"(in flight: {', '.join(self.in_flight) or 'between steps'}; runs {', '.join(self.interrupted) or 'none'})"
        )


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "SAE_GENOMICS_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return env


def _ok(home: Path, *args: str, context: str = "") -> None:
    try:
        result = cli(home, *args, timeout_s=STAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:  # e.g. waiting for a pool slot a killed run still holds
        output = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr or ""
        raise AssertionError(
            f"{' '.join(args)} did not end within {STAGE_TIMEOUT_S:.0f} s {context}\n{output[-3000:]}"
        ) from None
    assert result.returncode == 0, f"{' '.join(args)} failed {context}\n{result.stderr[-3000:]}"


def _register(home: Path, h5ad: Path) -> None:
    _ok(home, "register", str(h5ad), "--name", DATASET, "--ensembl-column", "gene_ids", "--no-run")


def warehouse_rows(home: Path) -> dict[str, list[tuple]]:
    """Every table and view of the warehouse: its column names, then its rows sorted, write times left out
    and the home's path masked."""
    tables: dict[str, list[tuple]] = {}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        names = connection.execute(
            "select table_name from information_schema.tables where table_schema = 'main'"
        ).fetchall()
        for (name,) in names:
            columns = connection.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'main' and table_name = ? order by ordinal_position",
                [name],
            ).fetchall()
            kept = [(column, kind) for column, kind in columns if column not in WRITE_TIMES]
            select = ", ".join(
                f"replace(\"{column}\", $home, '{HOME_MARK}')" if kind == "VARCHAR" else f'"{column}"'
                for column, kind in kept
            )
            rows = connection.execute(f'select {select} from "{name}" order by all', {"home": str(home)})
            tables[name] = [tuple(column for column, _ in kept), *rows.fetchall()]
    return tables


def _differences(expected: dict[str, list[tuple]], got: dict[str, list[tuple]]) -> list[str]:
    """What differs, table by table: missing tables, columns, row counts, and the columns of unequal rows."""
    problems = [f"table {name} missing" for name in sorted(set(expected) - set(got))]
    problems += [f"table {name} not in the reference" for name in sorted(set(got) - set(expected))]
    for name in sorted(set(expected) & set(got)):
        (columns, *want), (got_columns, *have) = expected[name], got[name]
        if columns != got_columns:
            problems.append(f"{name}: columns {got_columns}, expected {columns}")
        elif len(want) != len(have):
            problems.append(f"{name}: {len(have)} rows, expected {len(want)}")
        elif unequal := [(a, b) for a, b in zip(want, have, strict=True) if a != b]:
            differ = sorted({c for a, b in unequal for c, x, y in zip(columns, a, b, strict=True) if x != y})
            problems.append(
                f"{name}: {len(unequal)} of {len(want)} rows differ in {differ}; first: {unequal[0]}"
            )
    return problems


def _steps(instance: dg.DagsterInstance, run_id: str) -> tuple[list[str], set[str]]:
    """Steps started (in order) and steps ended in a run, from its event log."""
    started, ended = [], set()
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started.append(event.step_key)
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ended.add(event.step_key)
    return started, ended


def step_durations(home: Path) -> dict[str, list[float]]:
    """Per step key, its durations in the order its runs started (the reference for kill delays)."""
    durations: dict[str, list[float]] = {}
    with dg.DagsterInstance.from_config(str(Home(home).dagster_home)) as instance:
        for run in reversed(instance.get_runs()):
            starts: dict[str, float] = {}
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None or event.step_key is None:
                    continue
                if event.event_type == dg.DagsterEventType.STEP_START:
                    starts[event.step_key] = record.timestamp
                elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                    durations.setdefault(event.step_key, []).append(record.timestamp - starts[event.step_key])
    return durations


def _pick(stage: Stage, durations: dict[str, list[float]], rng: random.Random) -> tuple[str, int, float]:
    """The step, which of its runs, and the delay after its start (within its reference duration)."""
    if stage.step is None:
        steps = sorted(
            key
            for key in durations
            if key.startswith("annotations_") or key in {"gene_identifiers", "hpo_ontology"}
        )
        step = rng.choice(steps)
    else:
        step = stage.step
    occurrence = rng.randrange(len(durations[step]))
    return step, occurrence, rng.uniform(0.0, 0.8 * durations[step][occurrence])


def _wait_for_step(
    instance: dg.DagsterInstance, process: subprocess.Popen, before: set[str], step: str, occurrence: int
) -> str:
    """Block until the `occurrence`-th run (of this command) of `step` has started; its run id."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = 0
        for run in reversed(instance.get_runs()):
            if run.run_id in before:
                continue
            if step in _steps(instance, run.run_id)[0]:
                if seen == occurrence:
                    return run.run_id
                seen += 1
        if process.poll() is not None:
            raise AssertionError(
                f"seed {SEED}: the command ended (exit {process.returncode}) before {step} #{occurrence}"
            )
        time.sleep(POLL_S)
    raise AssertionError(f"seed {SEED}: {step} #{occurrence} did not start within {STAGE_TIMEOUT_S:.0f} s")


def kill_during(home: Path, stage: Stage, durations: dict[str, list[float]], rng: random.Random) -> Kill:
    """Start the stage's command, `kill -9` its process group at a random point of the stage."""
    step, occurrence, delay_s = _pick(stage, durations, rng)
    log_path = home.parent / f"killed-{stage.name.replace(' ', '_')}.log"
    log = log_path.open("w")
    with dg.DagsterInstance.from_config(str(Home(home).dagster_home)) as instance:
        before = {run.run_id for run in instance.get_runs()}
        process = subprocess.Popen(
            [sys.executable, "-m", "sae_genomics_dagster.cli", *stage.command],
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes any child with it
        )
        try:
            run_id = _wait_for_step(instance, process, before, step, occurrence)
            time.sleep(delay_s)
        except AssertionError as error:
            raise AssertionError(f"{error}; its output ends:\n{log_path.read_text()[-3000:]}") from None
        finally:
            with contextlib.suppress(ProcessLookupError):  # the command may have ended by itself
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.close()
        started, ended = _steps(instance, run_id)
        interrupted = [
            run.run_id for run in instance.get_runs() if run.run_id not in before and not run.is_finished
        ]
    kill = Kill(stage.name, step, occurrence, delay_s, [s for s in started if s not in ended], interrupted)
    print(f"seed {SEED}: killed {kill}")
    return kill


def kill_in_stage(
    home: Path, stage: Stage, durations: dict[str, list[float]], rng: random.Random
) -> list[Kill]:
    """Kills until one lands while the stage's step runs (a step that ran faster than in the reference may
    have ended first; that kill counts as one more), at most KILL_ATTEMPTS."""
    kills = [kill_during(home, stage, durations, rng)]
    while kills[-1].step not in kills[-1].in_flight and len(kills) < KILL_ATTEMPTS:
        kills.append(kill_during(home, stage, durations, rng))
    return kills


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tenx_h5ad: Path) -> Path:
    """A home whose runs were never killed, on the 10x chr21 subset (1107 cells × 507 real genes, so
    enrichment finds annotated genes)."""
    home = tmp_path_factory.mktemp("reference") / "home"
    _ok(home, *ANNOTATE)
    _register(home, tenx_h5ad)
    _ok(home, *MATERIALIZE)
    return home


def _assert_same(expected: dict[str, list[tuple]], home: Path, after: str) -> None:
    problems = _differences(expected, warehouse_rows(home))
    assert not problems, f"seed {SEED}, after {after}:\n" + "\n".join(problems)


@pytest.mark.slow
def test_killed_runs_are_recovered_and_tables_equal_a_clean_run(
    reference: Path, tenx_h5ad: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    durations = step_durations(reference)
    expected = warehouse_rows(reference)
    home = tmp_path / "home"
    _ok(home, "init")
    kills = kill_in_stage(home, STAGES[0], durations, rng)
    history = "; ".join(map(str, kills))
    _ok(home, *ANNOTATE, context=f"after seed {SEED}, {history}")
    # before any dataset: the tables of the annotation refresh (those without a dataset column)
    _assert_same({name: rows for name, rows in expected.items() if "dataset" not in rows[0]}, home, history)
    _register(home, tenx_h5ad)
    # each materialize redoes what the killed one before it had done, then is killed one stage further
    for stage in STAGES[1:]:
        kills += kill_in_stage(home, stage, durations, rng)
    history = "; ".join(map(str, kills))
    _ok(home, *MATERIALIZE, context=f"after seed {SEED}: {history}")
    _assert_same(expected, home, history)
    with dg.DagsterInstance.from_config(str(Home(home).dagster_home)) as instance:
        statuses = {run: instance.get_run_by_id(run).status for kill in kills for run in kill.interrupted}  # type: ignore[union-attr]
        hanging = [run.run_id for run in instance.get_runs() if run.status == dg.DagsterRunStatus.STARTED]
    not_failed = {run: status for run, status in statuses.items() if status != dg.DagsterRunStatus.FAILURE}
    assert not not_failed, f"seed {SEED}: killed runs not marked failed: {not_failed}"
    assert not hanging, f"seed {SEED}: runs left STARTED after the kills {history}: {hanging}"
