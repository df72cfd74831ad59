"""The cost of the cell map (UMAP for the feature pages) and of Leiden clusters at ingest, on a synthetic
counts matrix of N cells in 8 planted programs: time, peak RSS, and how well the clusters recover the
programs (ARI). Above CLUSTER_CELLS (50,000) only a sample is clustered and the rest join the nearest
centroid, and the map always draws at most MAP_CELLS (2,000), so both stay bounded in memory.

usage: python benchmarks/bench_cell_map.py [--cells N] [--genes G]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from sae_genomics_core.data.clusters import cell_map, leiden_clusters
from sae_genomics_core.data.h5ad import DatasetOptions

PROGRAMS = 8


def synthetic(path: Path, n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    """Poisson counts (about 5 % non-zero), each program's 50 genes at 8× the rate; written in blocks."""
    rng = np.random.default_rng(seed)
    programs = rng.integers(0, PROGRAMS, n_cells)
    blocks = []
    for start in range(0, n_cells, 10_000):
        group = programs[start : start + 10_000]
        rate = np.full((group.size, n_genes), 0.05, dtype=np.float32)
        for k in range(PROGRAMS):
            rate[np.ix_(group == k, np.arange(k * 50, (k + 1) * 50))] = 0.4
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    ad.AnnData(X=sp.vstack(blocks, format="csr")).write_h5ad(path)
    return programs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=60_000)
    parser.add_argument("--genes", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "synthetic.h5ad"
        programs = synthetic(path, args.cells, args.genes)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        drawn = cell_map(path, DatasetOptions(), "raw_counts")
        map_s = time.perf_counter() - started
        started = time.perf_counter()
        labels = leiden_clusters(path, DatasetOptions(), "raw_counts")
        leiden_s = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.cells:,} cells × {args.genes:,} genes: map of {drawn.height:,} cells {map_s:.1f} s; "
        f"Leiden {leiden_s:.1f} s, {len(set(labels))} clusters, ARI {adjusted_rand_score(programs, labels):.3f}; "
        f"peak RSS {peak:,.0f} MB (after writing the file: {before:,.0f} MB)"
    )


if __name__ == "__main__":
    main()
