"""Cost as work grows (issue: beyond one machine, item 7): the whole pipeline, local profile, tiny-random
model, on synthetic raw counts over the demo's genes at 1×, 10× and 100× the demo's 700 cells. Each stage
runs in its own process (its wall time and peak RSS are its own); then the warehouse and artefact sizes,
and each stage's slope: log(cost at 100×) − log(cost at 1×) over log(100); 1 is linear.

The SAE trains on a fixed 200,000 tokens at every scale (its cost follows the tokens asked for, not the
cells), so its row shows the fixed cost; every other stage reads every cell.

usage: python benchmarks/bench_scale.py [SCALES...]   (default 1 10 100)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLS_PER_SCALE = 700
STAGES = ("ingest", "activations", "activation_sets", "sae", "sae_tables", "features", "enrichment", "pages")
DATASET, LAYER = "scale", 1


def synthetic_over_demo_genes(path: Path, n_cells: int, seed: int = 0) -> Path:
    """Raw Poisson counts over the demo's 765 genes (symbols that map to Ensembl), four cell types."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    genes = sc.datasets.pbmc68k_reduced().raw.var_names
    rng = np.random.default_rng(seed)
    per_cell = 200
    popularity = rng.dirichlet(np.full(len(genes), 0.3))
    indices = np.concatenate(
        [np.sort(rng.choice(len(genes), per_cell, replace=False, p=popularity)) for _ in range(n_cells)]
    )
    data = rng.poisson(3.0, size=n_cells * per_cell).astype(np.float32) + 1
    matrix = sp.csr_matrix((data, indices, np.arange(n_cells + 1) * per_cell), shape=(n_cells, len(genes)))
    obs = pd.DataFrame(
        {"cell_type": rng.choice(["T", "B", "NK", "Mono"], n_cells)}, index=[f"c{i}" for i in range(n_cells)]
    )
    ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=list(genes))).write_h5ad(path)
    return path


def run_stage(stage: str, home_dir: str, h5ad: str) -> None:
    """One stage, by the core runners alone (what a notebook would do)."""
    from sae_genomics_core import pipeline
    from sae_genomics_core.activations.settings import ExtractionSettings
    from sae_genomics_core.annotations.store import read_table
    from sae_genomics_core.artefacts import ArtefactStore
    from sae_genomics_core.config import Home
    from sae_genomics_core.data.registry import Registry
    from sae_genomics_core.enrichment.settings import EnrichmentSettings
    from sae_genomics_core.features.settings import AssociationSettings
    from sae_genomics_core.model.choice import ModelChoice
    from sae_genomics_core.sae.settings import SaeStageSettings, SaeTrainingConfig

    home = Home(Path(home_dir)).ensure()
    store, warehouse = ArtefactStore(home.artefacts), home.warehouse
    if stage == "annotate":
        snapshot = pipeline.RefreshSettings(mode="snapshot")
        pipeline.refresh_gene_identifiers(snapshot, warehouse, home.cache).save(warehouse)
        for database in ("hpo", "gencc"):
            pipeline.refresh_annotations(database, snapshot, warehouse, home.cache).save(warehouse)
        pipeline.refresh_hpo_ontology(snapshot, home.cache).save(warehouse)
        Registry(home).register(h5ad, DATASET)
        return
    entry = Registry(home).get(DATASET)
    genes = read_table(warehouse, "genes")
    if stage == "ingest":
        pipeline.run_ingest(entry, warehouse).save(warehouse, dataset=DATASET)
    elif stage == "activations":
        pipeline.run_activations(entry, store, warehouse, ModelChoice(), ExtractionSettings(layers=(LAYER,)))
    elif stage == "activation_sets":
        pipeline.run_activation_sets(DATASET, store, warehouse).save(warehouse, dataset=DATASET)
    elif stage == "sae":
        training = SaeTrainingConfig(training_tokens=200_000, batch_size=4096)
        pipeline.run_sae(DATASET, LAYER, store, SaeStageSettings(training=training))
    elif stage == "sae_tables":
        pipeline.run_sae_tables(DATASET, LAYER, store).save(warehouse, dataset=DATASET, layer=LAYER)
    elif stage == "features":
        cells = read_table(warehouse, "cells")
        pipeline.run_features(DATASET, LAYER, store, warehouse, cells, genes, AssociationSettings())
    elif stage == "enrichment":
        feature_genes = read_table(warehouse, "feature_genes")
        result = pipeline.run_enrichment(
            DATASET, LAYER, store, warehouse, feature_genes, genes, EnrichmentSettings()
        )
        result.save(warehouse, dataset=DATASET, layer=LAYER)
    elif stage == "pages":
        pipeline.run_pages(DATASET, LAYER, store, warehouse)


def measured(stage: str, home: Path, h5ad: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one stage in its own process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--stage", stage, str(home), str(h5ad)])
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(scales: list[int]) -> None:
    work = Path(tempfile.mkdtemp(prefix="sae-genomics-scale-"))
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for scale in scales:
        home, h5ad = work / f"home{scale}", work / f"x{scale}.h5ad"
        # made in a child: a forked child's peak RSS counts the parent's memory at the fork
        subprocess.run(
            [sys.executable, __file__, "--make", str(CELLS_PER_SCALE * scale), str(h5ad)], check=True
        )
        measured("annotate", home, h5ad)
        results[scale] = {stage: measured(stage, home, h5ad) for stage in STAGES}
        sizes = f"warehouse {folder_mb(home) - folder_mb(home / 'artefacts') - folder_mb(home / 'cache'):.1f} MiB, artefacts {folder_mb(home / 'artefacts'):.1f} MiB"
        print(f"{scale}× ({CELLS_PER_SCALE * scale:,} cells): {sizes}", flush=True)
        for stage, (seconds, rss) in results[scale].items():
            print(f"  {stage:16s} {seconds:8.2f} s  {rss:8.0f} MiB", flush=True)
    low, high = min(scales), max(scales)
    if high > low:
        print(f"slope of wall time from {low}× to {high}× (1 = linear):")
        for stage in STAGES:
            slope = math.log(results[high][stage][0] / results[low][stage][0]) / math.log(high / low)
            print(
                f"  {stage:16s} {slope:5.2f}   peak RSS {results[low][stage][1]:.0f} → {results[high][stage][1]:.0f} MiB"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stage"]:
        run_stage(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--make"]:
        synthetic_over_demo_genes(Path(sys.argv[3]), int(sys.argv[2]))
    else:
        main([int(arg) for arg in sys.argv[1:]] or [1, 10, 100])
