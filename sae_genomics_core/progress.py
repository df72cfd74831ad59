"""Progress of a long step with its rate and an ETA, for whoever watches the run: a tqdm bar when the
command runs on a terminal, else a log line each tenth of the way (the Dagster run log, CI logs)."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import IO, Any

from sae_genomics_core.pipeline.result import Log, default_log

LOG_EVERY = 0.1  # of the total, between log lines when there is no terminal


class Progress:
    """`update(done, total, note)` with absolute counts; the total may be learnt from the first update."""

    def __init__(
        self,
        what: str,
        unit: str,
        log: Log | None = None,
        total: int | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.what, self.unit, self.log, self.total = what, unit, log or default_log(), total
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.next_line = 0.0
        self.bar: Any = None

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        self.total = total or self.total or max(done, 1)
        if self.stream.isatty():
            self._draw(done, note)
        elif done >= self.next_line * self.total or done >= self.total:
            self.log.info(self.line(done, note))
            self.next_line = (int(done / self.total / LOG_EVERY) + 1) * LOG_EVERY

    def line(self, done: int, note: str = "") -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        eta = timedelta(seconds=round((self.total - done) / rate)) if rate > 0 and self.total else None
        share = 100 * done / max(1, self.total or 1)
        text = f"{self.what}: {done:,}/{self.total:,} {self.unit} ({share:.0f}%), {rate:,.1f} {self.unit}/s"
        return (
            text
            + (f", ETA {eta}" if eta is not None and done < (self.total or 0) else "")
            + (f"; {note}" if note else "")
        )

    def _draw(self, done: int, note: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=self.total, desc=self.what, unit=f" {self.unit}", file=self.stream, leave=False
            )
        self.bar.total = self.total
        self.bar.update(done - self.bar.n)
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        if done >= (self.total or 0):
            self.bar.close()
            self.log.info(self.line(done, note))  # the bar goes; the run log keeps the last line
