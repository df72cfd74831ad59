"""The incoming/ folder: each new or changed .h5ad dropped there is registered (all-or-nothing). The
folder is the home's incoming/, or $SAE_GENOMICS_INCOMING: another folder or an object-storage prefix
(s3://bucket/incoming/), whose files are copied into the home's cache before they are registered."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from upath import UPath

from sae_genomics_core.config import Environment, Home
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
    """Register every settled .h5ad in the incoming folder that changed since `seen`; a file that fails is
    logged and left alone until it changes again, and leaves no entry."""
    log = log or default_log()
    registry = Registry(home)
    scan = IncomingScan(seen=dict(seen))
    for source, mtime in _settled_changes(incoming_folder(home), seen):
        scan.seen[source.name] = mtime
        try:
            path = _local_copy(home, source, mtime)
            known = registry.find_by_path(path)
            if known is not None and known.mtime == path.stat().st_mtime:
                continue  # registered from the shell already (with its own name and options)
            entry, _ = registry.register(
                path,
                name=known.name if known else None,
                options=known.options if known else None,
                source="sensor",
                model_spec=model_spec,
            )
        except Exception as error:  # one bad file must not stop the others (nor be retried every time)
            log.warning(str(error))
            scan.refused.append(f"{source.name} ({_why(error)})")
            continue
        scan.registered.append((entry.name, mtime))
    return scan


def incoming_folder(home: Home) -> UPath:
    configured = Environment.read().incoming
    return UPath(configured) if configured else UPath(home.incoming)


def _modified(path: UPath) -> float:
    if path.protocol in ("", "file", "local"):
        return Path(path.path).stat().st_mtime
    modified = path.fs.info(path.path).get("LastModified")
    return modified.timestamp() if modified is not None else 0.0


def _settled_changes(incoming: UPath, seen: dict[str, float]) -> list[tuple[UPath, float]]:
    """The .h5ad files that changed since `seen` and have not been written to for SETTLE_SECONDS."""
    if not incoming.exists():
        return []
    now = time.time()
    files = [(path, _modified(path)) for path in sorted(incoming.glob("*.h5ad"), key=lambda p: p.name)]
    return [
        (path, mtime)
        for path, mtime in files
        if seen.get(path.name) != mtime and now - mtime >= SETTLE_SECONDS
    ]


def _local_copy(home: Home, source: UPath, mtime: float) -> Path:
    """A local file is registered where it is; an object is copied into the home's cache first."""
    if source.protocol in ("", "file", "local"):
        return Path(source.path)
    target = home.cache / "incoming" / source.name
    if not target.exists() or target.stat().st_mtime != mtime:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        source.fs.get_file(source.path, str(partial))
        os.utime(partial, (mtime, mtime))
        partial.replace(target)
    return target


def _why(error: Exception) -> str:
    problems = error.problems if isinstance(error, DatasetError) else []
    return "; ".join(p.problem for p in problems) or type(error).__name__
