"""Where the files of external/ are found: sources.yaml and the databases' snapshots.

In order: the environment's setting (read in `config`), else the copy a wheel ships inside the package
(pyproject's force-include), else the checkout's external/ folder (a source tree or an editable install).
"""

from __future__ import annotations

from pathlib import Path

from sae_genomics_core.config import Environment

# a wheel ships external/ as _external/ inside the package (the name external is this module's)
PACKAGED_DIR = Path(__file__).resolve().parent / "_external"
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "external"  # beside the package in a checkout


def external_path(name: str, configured: Path | None = None) -> Path:
    """`configured` when set, else external/<name> from the installed package or the checkout."""
    if configured is not None:
        return configured
    packaged = PACKAGED_DIR / name
    return packaged if packaged.exists() else CHECKOUT_DIR / name


def sources_file() -> Path:
    return external_path("sources.yaml", Environment.read().sources_file)


def snapshots_dir() -> Path:
    return external_path("snapshots", Environment.read().snapshots_dir)
