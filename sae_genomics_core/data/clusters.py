"""A dataset's cells by expression, with scanpy: Leiden clusters as the cell-type column of a dataset that
has none (labelled as clusters, never as types), and the UMAP map of its cells that the feature pages
colour by a feature's activation.

The usual scanpy recipe on the dataset's own matrix: counts normalised to 10,000 per cell and log1p
(skipped when the matrix is already log1p), the most variable genes, PCA, a k-nearest-neighbour graph
with a Gaussian kernel on exact neighbours (UMAP's own connectivities and pynndescent compile numba code
for seconds per process), then Leiden (igraph) at resolution 1 or UMAP. Memory is bounded:
at most CLUSTER_CELLS cells are clustered (the others join the cluster of the nearest centroid in the
same PCA space) and MAP_CELLS drawn, read chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix

CLUSTER_KEY = "leiden (computed: the file has no cell-type column)"
MIN_CELLS = 50  # fewer cells make no useful neighbourhood graph
VARIABLE_GENES, COMPONENTS, NEIGHBOURS, RESOLUTION = 2_000, 50, 15, 1.0
CLUSTER_CELLS = 50_000  # cells clustered at most; a 50k × 2,000-gene sparse matrix fits any machine
MAP_CELLS = 2_000  # cells drawn on the map: its shape shows, and a page embeds each feature's values
MAP_EPOCHS = 200  # UMAP's optimisation epochs (scanpy's default is 500 below 10k cells; the layout settles)
CHUNK_CELLS = 8_192
EXACT_NEIGHBOURS = 8_192  # where scanpy would switch from exact to approximate (pynndescent) neighbours


def leiden_clusters(
    path: Path, options: DatasetOptions, value_kind: str, seed: int = 0, max_cells: int = CLUSTER_CELLS
) -> np.ndarray:
    """A label ("cluster 0", "cluster 1", … by decreasing size) per cell of the registered matrix."""
    import scanpy as sc

    with open_matrix(path, options) as opened:
        n_cells = opened.n_cells
        sample = _sample(n_cells, max_cells, seed)
        adata = _neighbourhood(_rows(opened, sample), value_kind, seed)
        sc.tl.leiden(adata, resolution=RESOLUTION, flavor="igraph", n_iterations=2, random_state=seed)
        labels = np.empty(n_cells, dtype=np.int64)
        labels[sample] = adata.obs["leiden"].astype(int).to_numpy()
        if sample.size < n_cells:
            _nearest_centroid(opened, adata, labels, sample, value_kind)
    by_size = np.argsort(np.argsort(-np.bincount(labels), kind="stable"), kind="stable")
    return np.array([f"cluster {k}" for k in by_size[labels]], dtype=object)


def cell_map(path: Path, options: DatasetOptions, value_kind: str, seed: int = 0) -> pl.DataFrame:
    """UMAP coordinates (`umap_1`, `umap_2`) of at most MAP_CELLS cells (a seeded sample), by cell_index."""
    import scanpy as sc

    with open_matrix(path, options) as opened:
        sample = _sample(opened.n_cells, MAP_CELLS, seed)
        adata = _neighbourhood(_rows(opened, sample), value_kind, seed)
    with sc.settings.verbosity.override("error"):  # its notice that the graph is not UMAP's own
        sc.tl.umap(adata, random_state=seed, maxiter=MAP_EPOCHS)
    xy = adata.obsm["X_umap"].astype(np.float64)
    return pl.DataFrame({"cell_index": sample, "umap_1": xy[:, 0], "umap_2": xy[:, 1]})


def with_clusters(cells: pl.DataFrame, labels: np.ndarray) -> pl.DataFrame:
    """`cells` with the clusters as its cell_type (cells are rows of the matrix, in order)."""
    return cells.with_columns(pl.Series("cell_type", labels[cells["cell_index"].to_numpy()], dtype=pl.String))


def _sample(n_cells: int, at_most: int, seed: int) -> np.ndarray:
    if n_cells <= at_most:
        return np.arange(n_cells, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_cells, at_most, replace=False)).astype(np.int64)


def _rows(opened: Any, rows: np.ndarray) -> sp.csr_matrix:
    """The chosen (sorted) rows of the matrix, read a chunk at a time."""
    blocks = []
    for first, block in opened.row_chunks(CHUNK_CELLS):
        inside = rows[(rows >= first) & (rows < first + block.shape[0])] - first
        if inside.size:
            blocks.append(block[inside])
    return sp.vstack(blocks, format="csr").astype(np.float32)


def _normalised(matrix: sp.csr_matrix, value_kind: str) -> sp.csr_matrix:
    if value_kind == "log1p":
        return matrix
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    scaled = sp.diags(np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)) @ matrix
    return scaled.log1p().tocsr()


def _neighbourhood(matrix: sp.csr_matrix, value_kind: str, seed: int) -> Any:
    """An AnnData of the cells with PCA (`X_pca`, loadings in varm, genes' means in var) and neighbours."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=_normalised(matrix, value_kind))
    adata.var["column"] = np.arange(adata.n_vars)  # the genes kept by the variable-gene subset
    if adata.n_vars > VARIABLE_GENES:
        sc.pp.highly_variable_genes(adata, n_top_genes=VARIABLE_GENES, subset=True)
    adata.var["mean"] = np.asarray(adata.X.mean(axis=0)).ravel()
    components = min(COMPONENTS, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=components, random_state=seed)
    sc.pp.neighbors(
        adata,
        n_neighbors=NEIGHBOURS,
        method="gauss",
        knn=True,
        random_state=seed,
        transformer=_exact_neighbours(adata.n_obs),
    )
    return adata


def _exact_neighbours(n_cells: int) -> Any:
    """None below EXACT_NEIGHBOURS cells (scanpy's own exact neighbours); above, the same exact search
    (sklearn, brute force) instead of scanpy's pynndescent: pynndescent 0.7 can return a sparse array,
    which has no `getnnz` in scipy 1.17, and scanpy 1.11 calls it (datasets of 12,000 cells failed here);
    its numba code also compiled for 15-40 s per process. At most CLUSTER_CELLS cells are searched."""
    if n_cells < EXACT_NEIGHBOURS:
        return None
    import scanpy as sc
    from sklearn.neighbors import KNeighborsTransformer

    return KNeighborsTransformer(n_neighbors=NEIGHBOURS, algorithm="brute", n_jobs=sc.settings.n_jobs)


def _nearest_centroid(
    opened: Any, adata: Any, labels: np.ndarray, clustered: np.ndarray, value_kind: str
) -> None:
    """Label the cells outside the clustered sample by the nearest cluster centroid in its PCA space."""
    own = adata.obs["leiden"].astype(int).to_numpy()
    centroids = np.stack([adata.obsm["X_pca"][own == k].mean(axis=0) for k in range(own.max() + 1)])
    columns, mean, loadings = adata.var["column"].to_numpy(), adata.var["mean"].to_numpy(), adata.varm["PCs"]
    outside = np.ones(labels.size, dtype=bool)
    outside[clustered] = False
    for first, block in opened.row_chunks(CHUNK_CELLS):
        rows = np.flatnonzero(outside[first : first + block.shape[0]])
        if rows.size:
            normalised = _normalised(block[rows].astype(np.float32), value_kind)
            projected = (normalised[:, columns].toarray() - mean) @ loadings
            distances = ((projected[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
            labels[first + rows] = distances.argmin(axis=1)
