"""Leiden clusters as the cell-type column of a dataset that has none, so that features are still tested
against groups of cells (labelled as clusters, never as types).

The usual scanpy recipe on the dataset's own matrix: counts normalised to 10,000 per cell and log1p
(skipped when the matrix is already log1p), the most variable genes, PCA, a k-nearest-neighbour graph
with a Gaussian kernel (exact neighbours, no compiled UMAP code) and Leiden (igraph) at resolution 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix

CLUSTER_KEY = "leiden (computed: the file has no cell-type column)"
MIN_CELLS = 50  # fewer cells make no useful neighbourhood graph
VARIABLE_GENES, COMPONENTS, NEIGHBOURS, RESOLUTION = 2_000, 50, 15, 1.0


def leiden_clusters(path: Path, options: DatasetOptions, value_kind: str, seed: int = 0) -> np.ndarray:
    """A label ("cluster 0", "cluster 1", … by decreasing size) per cell of the registered matrix."""
    import anndata as ad
    import scanpy as sc

    with open_matrix(path, options) as opened:
        matrix = sp.vstack([block for _, block in opened.row_chunks(8192)], format="csr").astype(np.float32)
    adata = ad.AnnData(X=matrix)
    if value_kind != "log1p":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    if adata.n_vars > VARIABLE_GENES:
        sc.pp.highly_variable_genes(adata, n_top_genes=VARIABLE_GENES, subset=True)
    components = min(COMPONENTS, adata.n_obs - 1, adata.n_vars - 1)
    sc.pp.pca(adata, n_comps=components, random_state=seed)
    sc.pp.neighbors(adata, n_neighbors=NEIGHBOURS, method="gauss", knn=True, random_state=seed)
    sc.tl.leiden(adata, resolution=RESOLUTION, flavor="igraph", n_iterations=2, random_state=seed)
    labels = adata.obs["leiden"].astype(int).to_numpy()
    by_size = np.argsort(np.argsort(-np.bincount(labels), kind="stable"), kind="stable")
    return np.array([f"cluster {k}" for k in by_size[labels]], dtype=object)


def with_clusters(cells: pl.DataFrame, labels: np.ndarray) -> pl.DataFrame:
    """`cells` with the clusters as its cell_type (cells are rows of the matrix, in order)."""
    return cells.with_columns(pl.Series("cell_type", labels[cells["cell_index"].to_numpy()], dtype=pl.String))
