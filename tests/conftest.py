"""Shared fixtures: temporary homes and real .h5ad files built from bundled data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.config import Home

TESTS_DIR = Path(__file__).resolve().parent
TENX_H5 = TESTS_DIR / "data" / "10x_v3_pbmc_chr21_subset.h5"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    root = tmp_path / "home"
    monkeypatch.setenv("SAE_GENOMICS_HOME", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster"))
    return Home(root).ensure()


@pytest.fixture(scope="session")
def demo_h5ad() -> Path:
    from sae_genomics_dagster.cli import demo_source_file

    return demo_source_file()


@pytest.fixture(scope="session")
def tenx_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 10x chr21 subset (raw integer counts, Ensembl ids in var['gene_ids']) as .h5ad."""
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.read_10x_h5(TENX_H5)
    path = tmp_path_factory.mktemp("tenx") / "pbmc_chr21.h5ad"
    adata.write_h5ad(path)
    return path


def write_h5ad(path: Path, x: np.ndarray | sp.spmatrix, **fields: object) -> Path:
    """Write a small AnnData; `fields` go to the constructor (obs, var, layers, uns, raw via `raw_x`)."""
    raw_x = fields.pop("raw_x", None)
    n_cells, n_genes = x.shape
    fields.setdefault("obs", {"cell_type": np.array(["T", "B"] * (n_cells // 2) + ["T"] * (n_cells % 2))})
    fields.setdefault("var", {"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]})
    import pandas as pd

    obs = pd.DataFrame(fields.pop("obs"), index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(fields.pop("var"), index=[f"GENE{i}" for i in range(n_genes)])
    adata = ad.AnnData(X=x, obs=obs, var=var, **fields)
    if raw_x is not None:
        adata.raw = ad.AnnData(X=raw_x, obs=obs, var=var)
    adata.write_h5ad(path)
    return path


def counts(n_cells: int = 40, n_genes: int = 30, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.0, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 0] += 1  # every cell expresses something
    return sp.csr_matrix(dense)


def cli(home: Path, *args: str, timeout_s: float = 300, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAE_GENOMICS_HOME": str(home), **env_vars}
    env.pop("DAGSTER_HOME", None)  # the CLI must set it from the home itself
    return subprocess.run(
        [sys.executable, "-m", "sae_genomics_dagster.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_pages_url() -> str:
    """Where the demo home's feature_pages asset links: the UI test serves the pages there."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory, demo_pages_url: str) -> Path:
    """The whole graph of the demo, built once: the CLI, cookbook, enrichment and UI tests read it."""
    home = tmp_path_factory.mktemp("cli") / "home"
    # on 2 busy cores
    result = cli(home, "demo", "--sae-tokens", "60000", timeout_s=900, SAE_GENOMICS_PAGES_URL=demo_pages_url)
    assert result.returncode == 0, result.stderr
    assert "registered pbmc68k" in result.stdout
    return home


SNAPSHOTS = TESTS_DIR.parent / "external" / "snapshots"


@pytest.fixture(scope="session")
def gene_resolver() -> GeneResolver:

    return GeneResolver.from_hgnc_file(SNAPSHOTS / "hgnc" / "hgnc_complete_set.txt.gz")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the session."""
    from tests.servers import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 for the session; yields its SQLAlchemy URL (database dagster)."""
    from tests.servers import postgres

    with postgres() as url:
        yield url
