"""A notebook runs the whole pipeline from core alone: examples/pipeline_from_core.py, in a fresh
interpreter that must never import dagster; with artefacts on a local disk and on a real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pytest
from upath import UPath

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.sae.checkpoint import load_checkpoint
from tests.servers import S3Server

REPO = Path(__file__).resolve().parents[2]
RUN_WITHOUT_DAGSTER = """
import runpy, sys
sys.argv = ["pipeline_from_core.py", *sys.argv[1:]]
runpy.run_path({example!r}, run_name="__main__")
assert "dagster" not in sys.modules, "core imported dagster"
"""
TABLES = (
    "cells",
    "genes",
    "activation_sets",
    "sae_checkpoints",
    "feature_genes",
    "feature_cell_types",
    "feature_effects",
    "feature_effect_cell_types",
    "enrichment",
)
# where a row says its artefact is, and when it was written: the only columns that differ between homes
LOCATION_COLUMNS = {"uri", "created_at", "retrieved_at", "ingested_at", "source_path"}


def _run_notebook(h5ad: Path, home: Path, environment: dict[str, str] | None = None) -> None:
    script = RUN_WITHOUT_DAGSTER.format(example=str(REPO / "examples" / "pipeline_from_core.py"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(h5ad), str(home), "bulk_labels"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(environment or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _tables(home: Path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        frames = {table: connection.execute(f"select * from {table}").pl() for table in TABLES}
    return {name: frame.drop(LOCATION_COLUMNS & set(frame.columns)) for name, frame in frames.items()}


@pytest.fixture(scope="module")
def local_run(demo_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("notebook") / "home"
    _run_notebook(demo_h5ad, home)
    return home


def test_the_whole_pipeline_runs_from_core_without_dagster(local_run: Path) -> None:
    store = ArtefactStore(local_run / "artefacts")
    assert store.extracted_layers("notebook") == [1]
    assert load_checkpoint(store.require_checkpoint("notebook", 1)).provenance["layer"] == 1
    assert (store.pages("notebook", 1) / "index.html").stat().st_size > 10_000
    tables = _tables(local_run)
    assert tables["cells"].height == 700 and tables["activation_sets"].height == 2
    assert tables["sae_checkpoints"].height == 1
    assert tables["feature_genes"].height > 0 and tables["enrichment"].height > 0
    with duckdb.connect(str(local_run / "warehouse.duckdb"), read_only=True) as connection:
        assert connection.execute("select count(top_cell_type) from feature_summary").fetchone()[0] > 0


def test_artefacts_on_s3_give_the_same_tables(
    local_run: Path, demo_h5ad: Path, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = f"b{uuid.uuid4().hex[:10]}"
    s3_server.bucket(bucket)
    home = tmp_path / "home"
    _run_notebook(
        demo_h5ad, home, {**s3_server.environment, "SAE_GENOMICS_ARTEFACTS": f"s3://{bucket}/artefacts"}
    )
    assert not (home / "artefacts").exists() or not any((home / "artefacts").iterdir())
    root = UPath(f"s3://{bucket}/artefacts", **s3_server.storage_options)
    assert (root / "activations" / "notebook" / "CURRENT.json").exists()
    assert (root / "pages" / "notebook" / "L1" / "index.html").exists()
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        (uri,) = connection.execute("select uri from sae_checkpoints").fetchone()
    assert uri.startswith(f"s3://{bucket}/artefacts/sae/notebook/L1/")
    local, remote = _tables(local_run), _tables(home)
    for table in TABLES:
        assert remote[table].equals(local[table]), table
