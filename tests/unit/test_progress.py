"""Progress lines: a rate and an ETA about a tenth of the way apart, the last one complete."""

from __future__ import annotations

import io

import pytest

from sae_genomics_core.progress import Progress


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(msg)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_it_logs_a_tenth_at_a_time_with_rate_and_eta() -> None:
    log = _Lines()
    progress = Progress("pbmc68k: forward pass", "cells", log, stream=io.StringIO())
    for done in range(0, 701, 7):
        progress.update(done, 700, "note" if done == 700 else "")
    assert 10 <= len(log.lines) <= 12
    assert "350/700 cells (50%)" in " ".join(log.lines) and "cells/s, ETA" in log.lines[5]
    assert (
        log.lines[-1].startswith("pbmc68k: forward pass: 700/700 cells (100%)") and "ETA" not in log.lines[-1]
    )
    assert log.lines[-1].endswith("; note")


@pytest.mark.parametrize("total", [None, 50])
def test_on_a_terminal_it_draws_a_bar_and_logs_the_last_line(total: int | None) -> None:
    log, terminal = _Lines(), _Terminal()
    progress = Progress("training", "steps", log, total=total, stream=terminal)
    for done in range(1, 51):
        progress.update(done, 50, f"EV 0.{done:02d}")
    assert "training" in terminal.getvalue() and "steps" in terminal.getvalue()
    assert log.lines == [log.lines[-1]] and "50/50 steps (100%)" in log.lines[-1]
