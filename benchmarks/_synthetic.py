"""Synthetic single-cell data for benchmarks: raw Poisson counts, Ensembl ids, written as .h5ad."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def synthetic_h5ad(
    path: Path, n_cells: int, n_genes: int = 2000, genes_per_cell: int = 200, seed: int = 0
) -> Path:
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * genes_per_cell
    # popular genes are expressed more often, as in real data
    popularity = rng.dirichlet(np.full(n_genes, 0.3))
    indices = np.concatenate(
        [np.sort(rng.choice(n_genes, genes_per_cell, replace=False, p=popularity)) for _ in range(n_cells)]
    )
    data = rng.poisson(3.0, size=n_cells * genes_per_cell).astype(np.float32) + 1
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]}, index=[f"G{i}" for i in range(n_genes)]
    )
    obs = pd.DataFrame(
        {"cell_type": rng.choice(["T", "B", "NK", "Mono"], n_cells)}, index=[f"c{i}" for i in range(n_cells)]
    )
    ad.AnnData(X=matrix, obs=obs, var=var).write_h5ad(path)
    return path
