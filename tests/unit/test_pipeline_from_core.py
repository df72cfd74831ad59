"""A notebook runs the whole pipeline from core alone: examples/pipeline_from_core.py, in a fresh
interpreter that must never import dagster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.sae.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
RUN_WITHOUT_DAGSTER = """
import runpy, sys
sys.argv = ["pipeline_from_core.py", *sys.argv[1:]]
runpy.run_path({example!r}, run_name="__main__")
assert "dagster" not in sys.modules, "core imported dagster"
"""


def test_the_whole_pipeline_runs_from_core_without_dagster(demo_h5ad: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = RUN_WITHOUT_DAGSTER.format(example=str(REPO / "examples" / "pipeline_from_core.py"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(demo_h5ad), str(home), "bulk_labels"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    store = ArtefactStore(home / "artefacts")
    assert store.extracted_layers("notebook") == [1]
    assert load_checkpoint(store.require_checkpoint("notebook", 1)).provenance["layer"] == 1
    assert (store.pages("notebook", 1) / "index.html").stat().st_size > 10_000
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        counts = {
            table: connection.execute(f"select count(*) from {table} where dataset = 'notebook'").fetchone()[
                0
            ]
            for table in (
                "cells",
                "genes",
                "activation_sets",
                "sae_checkpoints",
                "feature_genes",
                "enrichment",
            )
        }
        summary = connection.execute(
            "select count(*), count(top_cell_type) from feature_summary where dataset = 'notebook'"
        ).fetchone()
    assert counts["cells"] == 700 and counts["activation_sets"] == 2 and counts["sae_checkpoints"] == 1
    assert counts["feature_genes"] > 0 and counts["enrichment"] > 0
    assert summary[0] > 0
