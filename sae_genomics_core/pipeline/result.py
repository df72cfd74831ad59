"""What a stage runner returns: its tables, a plain summary for the run's metadata, and its checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl


class Markdown(str):
    """A summary value meant to be rendered (a table, a chart image), not shown as text."""


class Url(str):
    """A summary value that is a link to open."""


class Log(Protocol):
    """Where a runner reports progress: a `logging.Logger`, or the orchestrator's run log."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


def default_log() -> Log:
    return logging.getLogger("sae_genomics")


def keyed(frame: pl.DataFrame, dataset: str, layer: int, derived_from: dict[str, str]) -> pl.DataFrame:
    """A dataset × layer table's rows: the partition's keys first, what they were derived from last."""
    return frame.select(
        pl.lit(dataset).alias("dataset"), pl.lit(layer, dtype=pl.Int64).alias("layer"), pl.all()
    ).with_columns(pl.lit(value).alias(name) for name, value in derived_from.items())


@dataclass(frozen=True)
class CheckOutcome:
    """The verdict of a quality check on what a stage produced; `blocking` False makes a failure a warning."""

    name: str
    passed: bool
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True


@dataclass
class StageResult:
    """Tables by name, a summary of the whole stage, one summary per table, and the checks' verdicts.
    `skipped` says why a stage produced nothing when that is not a failure."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    table_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)
    skipped: str | None = None
    written: bool = False  # the runner wrote its tables itself (several in one transaction)

    def save(self, warehouse: Path, **partition: Any) -> None:
        """Write the tables to the warehouse, replacing the partition's rows (no partition: whole tables),
        as the orchestrator's IO manager does: for a run without Dagster."""
        from sae_genomics_core.warehouse.writer import replace_partition

        if self.tables and not self.written:
            replace_partition(warehouse, self.tables, partition)
