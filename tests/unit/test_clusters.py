"""Leiden clusters stand in for cell types when a file has none: planted groups are found again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, silhouette_score

from sae_genomics_core.data import clusters
from sae_genomics_core.data.clusters import CLUSTER_KEY, cell_map, leiden_clusters
from sae_genomics_core.data.h5ad import DatasetOptions
from sae_genomics_core.data.registry import DatasetEntry
from sae_genomics_core.pipeline.ingest import run_ingest
from tests.conftest import counts, write_h5ad


def _three_programs(path: Path, per_group: int = 100) -> tuple[Path, np.ndarray]:
    """3 × `per_group` cells in three groups, each expressing its own 40 of 300 genes five times more."""
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], per_group)
    rate = np.full((groups.size, 300), 0.5)
    for group in range(3):
        rate[groups == group, group * 40 : (group + 1) * 40] = 2.5
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    return write_h5ad(path, counts, obs={"donor": ["d"] * groups.size}), groups


def test_planted_groups_come_back_as_clusters(tmp_path: Path) -> None:
    path, groups = _three_programs(tmp_path / "programs.h5ad")
    labels = leiden_clusters(path, DatasetOptions(), "raw_counts")
    assert adjusted_rand_score(groups, labels) > 0.9
    assert set(labels) >= {"cluster 0", "cluster 1", "cluster 2"}
    sizes = pl.Series(labels).value_counts().sort("count", descending=True)["count"].to_list()
    assert labels.tolist().count("cluster 0") == sizes[0]  # numbered by decreasing size


def test_ingest_labels_a_file_without_cell_types_by_its_clusters(tmp_path: Path) -> None:
    path, groups = _three_programs(tmp_path / "programs.h5ad")
    entry = DatasetEntry("programs", path, DatasetOptions(), registered_at="now", source="cli", mtime=0.0)
    result = run_ingest(entry, tmp_path / "warehouse.duckdb")
    cells, dataset = result.tables["cells"], result.tables["datasets"]
    assert cells["cell_type"].str.starts_with("cluster ").all()
    assert adjusted_rand_score(groups, cells.sort("cell_index")["cell_type"].to_numpy()) > 0.9
    assert dataset["cell_type_key"][0] == CLUSTER_KEY and dataset["n_cell_types"][0] >= 3


def test_cells_beyond_the_clustered_sample_join_their_groups_cluster(tmp_path: Path, monkeypatch) -> None:
    """Half the cells are clustered; the other half are read in chunks and placed by nearest centroid."""
    path, groups = _three_programs(tmp_path / "programs.h5ad")
    monkeypatch.setattr(clusters, "CHUNK_CELLS", 64)
    labels = leiden_clusters(path, DatasetOptions(), "raw_counts", max_cells=150)
    assert labels.size == groups.size
    assert adjusted_rand_score(groups, labels) > 0.9


def test_the_map_separates_planted_groups_and_draws_a_bounded_seeded_sample(
    tmp_path: Path, monkeypatch
) -> None:
    path, groups = _three_programs(tmp_path / "programs.h5ad")
    everything = cell_map(path, DatasetOptions(), "raw_counts")
    assert everything["cell_index"].to_list() == list(range(300))
    xy = everything.select("umap_1", "umap_2").to_numpy()
    assert silhouette_score(xy, groups) > 0.5  # three islands
    monkeypatch.setattr(clusters, "MAP_CELLS", 120)
    drawn = cell_map(path, DatasetOptions(), "raw_counts", seed=3)
    assert drawn.height == 120 and drawn["cell_index"].is_sorted() and drawn["cell_index"].n_unique() == 120
    assert drawn.equals(cell_map(path, DatasetOptions(), "raw_counts", seed=3))


def test_ingest_draws_a_sample_of_cells_on_the_map_and_none_of_a_tiny_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clusters, "MAP_CELLS", 120)
    path, _ = _three_programs(tmp_path / "programs.h5ad")
    entry = DatasetEntry("programs", path, DatasetOptions(), registered_at="now", source="cli", mtime=0.0)
    cells = run_ingest(entry, tmp_path / "warehouse.duckdb").tables["cells"]
    assert cells.height == 300 and cells["umap_1"].null_count() == cells["umap_2"].null_count() == 180
    tiny = write_h5ad(tmp_path / "tiny.h5ad", counts(n_cells=40))  # under MIN_CELLS: no map
    entry = DatasetEntry("tiny", tiny, DatasetOptions(), registered_at="now", source="cli", mtime=0.0)
    cells = run_ingest(entry, tmp_path / "warehouse.duckdb").tables["cells"]
    assert cells.height == 40 and cells["umap_1"].null_count() == 40


def test_large_datasets_get_a_neighbour_graph_scanpy_can_read() -> None:
    """From 8,192 cells scanpy uses pynndescent; at 12,000 its graph was a sparse array without the
    `getnnz` scanpy 1.11 calls, and `sc.pp.neighbors` failed (every dataset that large without cell
    types). The exact graph we give it instead: three planted blobs come back as three Leiden clusters."""
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 4_000)
    points = rng.normal(size=(groups.size, 20)) + 6.0 * np.eye(3, 20)[groups]
    adata = ad.AnnData(obsm={"X_pca": points.astype(np.float32)}, X=sp.csr_matrix((groups.size, 1)))
    transformer = clusters._exact_neighbours(adata.n_obs)
    sc.pp.neighbors(adata, use_rep="X_pca", method="gauss", knn=True, transformer=transformer)
    sc.tl.leiden(adata, resolution=0.1, flavor="igraph", n_iterations=2, random_state=0)
    assert adjusted_rand_score(groups, adata.obs["leiden"].to_numpy()) > 0.95
