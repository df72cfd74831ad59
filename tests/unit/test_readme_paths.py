"""The README points at files that exist: every repository path it names in backticks."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("sae_genomics_core/", "sae_genomics_dagster/", "tests/", "benchmarks/", "external/", "examples/")


def test_every_repository_path_in_the_readme_exists() -> None:
    named = set(re.findall(r"`([\w./-]+)`", (REPO / "README.md").read_text()))
    paths = {name.rstrip("/") for name in named if name.startswith(TOP_LEVEL) and "*" not in name}
    assert len(paths) >= 10
    assert sorted(path for path in paths if not (REPO / path).exists()) == []
