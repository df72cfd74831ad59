"""The incoming/ folder: each new or changed .h5ad dropped there is registered (all-or-nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetError
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.pipeline.result import Log, default_log

# A file modified more recently than this may still be being copied; it is picked up next time.
SETTLE_SECONDS = 5.0


@dataclass
class IncomingScan:
    """What one look at incoming/ did: datasets registered (name, file mtime), files refused (why), and
    the file → mtime record to pass to the next look."""

    seen: dict[str, float]
    registered: list[tuple[str, float]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def register_incoming(
    home: Home, seen: dict[str, float], model_spec: str, log: Log | None = None
) -> IncomingScan:
    """Register every settled .h5ad in incoming/ that changed since `seen`; a file that fails is logged and
    left alone until it changes again, and leaves no entry."""
    log = log or default_log()
    registry = Registry(home)
    scan = IncomingScan(seen=dict(seen))
    for path in _settled_changes(home.incoming, seen):
        mtime = path.stat().st_mtime
        scan.seen[path.name] = mtime
        known = registry.find_by_path(path)
        if known is not None and known.mtime == mtime:
            continue  # registered from the shell already (with its own name and options)
        try:
            entry, _ = registry.register(
                path,
                name=known.name if known else None,
                options=known.options if known else None,
                source="sensor",
                model_spec=model_spec,
            )
        except Exception as error:  # one bad file must not stop the others (nor be retried every time)
            log.warning(str(error))
            scan.refused.append(f"{path.name} ({_why(error)})")
            continue
        scan.registered.append((entry.name, mtime))
    return scan


def _settled_changes(incoming: Path, seen: dict[str, float]) -> list[Path]:
    """The .h5ad files that changed since `seen` and have not been written to for SETTLE_SECONDS."""
    now = time.time()
    files = sorted(incoming.glob("*.h5ad")) if incoming.exists() else []
    return [
        path
        for path in files
        if seen.get(path.name) != (mtime := path.stat().st_mtime) and now - mtime >= SETTLE_SECONDS
    ]


def _why(error: Exception) -> str:
    problems = error.problems if isinstance(error, DatasetError) else []
    return "; ".join(p.problem for p in problems) or type(error).__name__
