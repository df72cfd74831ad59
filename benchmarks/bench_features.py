"""Feature analysis speed: the sparse streaming path against the predecessor's dense loop, and SQL on 10M rows.

1. 100,000 tokens × d_sae 4,096 (d_in 256, k 32): `associate` (top-k sparse codes reduced on the fly)
   against two baselines: the predecessor's shape (per cell, dense latents, then Python loops over
   positions × active features for gene scores and over every feature for the cell's maximum), and a
   stronger vectorised one (dense latents for all tokens, then a loop over features computing each
   one's gene scores, per-cell maxima and counts from its dense column). Goal ≥ 20× faster than the
   predecessor's approach, with bounded memory. All read the same store and SAE; each runs in its own
   process, so peak RSS is its own.
2. A synthetic `feature_genes` of 10 million rows laid out as the asset writes it (sorted by
   dataset, layer, feature, rank): one feature's top 20 genes. Goal < 100 ms.

usage: python benchmarks/bench_features.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import torch

from sae_genomics_core.activations.store import ActivationStore
from sae_genomics_core.features.associate import AssociationSettings, associate
from sae_genomics_core.sae.checkpoint import LoadedSae
from sae_genomics_core.sae.train import Normalizer, SaeTrainingConfig, build_sae

N_TOKENS, D_IN, D_SAE, K, N_CELLS, N_GENES = 100_000, 256, 4096, 32, 500, 2000


def build_store(root: Path) -> None:
    rng = np.random.default_rng(0)
    store = ActivationStore.open_for_writing(
        root,
        {
            "dataset": "bench",
            "model_id": "bench",
            "sites": ["L0.resid_post"],
            "layers": [0],
            "hooks": ["resid_post"],
            "dtype": "bfloat16",
            "widths": {"L0.resid_post": D_IN},
            "n_cells_total": N_CELLS,
        },
    )
    per_cell = N_TOKENS // N_CELLS
    for first in range(0, N_CELLS, 100):
        cells = np.arange(first, first + 100)
        writer = store.start_shard(100 * per_cell, 100, {"L0.resid_post": D_IN})
        tokens = {
            "cell_index": np.repeat(cells, per_cell),
            "gene_id": rng.integers(0, N_GENES, 100 * per_cell).astype(np.int32),
            "value": rng.poisson(3, 100 * per_cell).astype(np.float32) + 1,
            "bin": rng.integers(1, 51, 100 * per_cell).astype(np.int16),
        }
        acts = torch.randn(100 * per_cell, D_IN)
        writer.add(tokens, cells, {"L0.resid_post": acts}, {"L0.resid_post": torch.randn(100, D_IN)})
        writer.commit(int(cells[0]), int(cells[-1]), 0)
    store.finish({"n_cells": N_CELLS, "n_tokens": N_TOKENS, "n_cells_skipped": 0})


def sae() -> LoadedSae:
    torch.manual_seed(0)
    model = build_sae(D_IN, SaeTrainingConfig(expansion_factor=D_SAE // D_IN, k=K))
    return LoadedSae(model.eval(), Normalizer(torch.zeros(D_IN), 1.0), {})


def run_ours(root: Path) -> None:
    cells = pl.DataFrame(
        {
            "cell_index": np.arange(N_CELLS),
            "cell_id": [f"c{i}" for i in range(N_CELLS)],
            "cell_type": [f"T{i % 5}" for i in range(N_CELLS)],
            "umap_1": np.zeros(N_CELLS),  # every cell on the map (a dataset's map holds up to 2,000)
        }
    )
    associate(ActivationStore(root), 0, "resid_post", sae(), cells, AssociationSettings())


@torch.no_grad()
def run_dense_baseline(root: Path) -> None:
    """The predecessor's shape: dense latents for every token, then a Python loop over features."""
    store, loaded = ActivationStore(root), sae()
    shards = store.manifest["shards"]
    tokens = {
        k: np.concatenate([store.tokens(s["name"])[k] for s in shards])
        for k in ("gene_id", "value", "cell_index")
    }
    from sae_genomics_core.activations.store import from_storage

    raw = torch.cat(
        [from_storage(np.asarray(store.acts(0, "resid_post", s["name"])), "bfloat16").float() for s in shards]
    )
    dense = torch.cat([loaded.encode(batch) for batch in raw.split(8192)]).numpy()  # tokens × d_sae
    for feature in range(dense.shape[1]):
        column = dense[:, feature]
        np.bincount(tokens["gene_id"], weights=column * tokens["value"], minlength=N_GENES)  # gene scores
        np.bincount(tokens["gene_id"], weights=column, minlength=N_GENES)
        cell_max = np.zeros(N_CELLS)
        np.maximum.at(cell_max, tokens["cell_index"], column)
        int((column > 0).sum())


@torch.no_grad()
def run_predecessor_loop(root: Path) -> None:
    """The predecessor's shape: per cell, dense latents; then Python loops over positions and active
    features for gene scores, and over every feature for the cell's maximum (written here anew)."""
    from collections import defaultdict

    from sae_genomics_core.activations.store import from_storage

    store, loaded = ActivationStore(root), sae()
    gene_scores: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    cell_scores: dict[int, dict[int, float]] = defaultdict(dict)
    for shard in store.manifest["shards"]:
        tokens = store.tokens(shard["name"])
        acts = from_storage(np.asarray(store.acts(0, "resid_post", shard["name"])), "bfloat16").float()
        owners = np.asarray(tokens["cell_index"])
        for cell in np.unique(owners):
            rows = np.flatnonzero(owners == cell)
            latents = loaded.encode(acts[rows])  # (tokens of the cell × d_sae), dense
            for position, row in enumerate(rows):
                gene, expression = int(tokens["gene_id"][row]), float(tokens["value"][row])
                for feature in (latents[position] > 0).nonzero(as_tuple=True)[0]:
                    gene_scores[int(feature)][gene] += latents[position, feature].item() * expression
            maxima = latents.max(dim=0).values
            for feature in range(maxima.shape[0]):
                if (value := maxima[feature].item()) > 0:
                    cell_scores[feature][int(cell)] = value


def child(kind: str, root: str) -> None:
    import sae_lens  # noqa: F401 - imported before the clock starts: both sides pay it equally

    started = time.perf_counter()
    {"ours": run_ours, "baseline": run_dense_baseline, "predecessor": run_predecessor_loop}[kind](Path(root))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def measure(kind: str, root: Path) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(root)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def sql_speed(work: Path) -> dict:
    database = work / "features.duckdb"
    n_features, per_feature = 100_000, 100  # 10 million rows
    with duckdb.connect(str(database)) as connection:
        connection.execute(f"""
            create table feature_genes as
            select 'bench' as dataset, 6::bigint as layer, f::bigint as feature, 'ENSG' || lpad((hash(f, r) % 60000)::varchar, 11, '0') as ensembl_id,
                   'G' || (hash(f, r) % 60000)::varchar as symbol, random() as score, 5::bigint as n_tokens,
                   random() as mean_activation, random() as specificity, r::bigint as rank
            from range({n_features}) t(f), range(1, {per_feature + 1}) s(r)
            order by dataset, layer, feature, rank
        """)
        rows = connection.execute("select count(*) from feature_genes").fetchone()[0]
    timings = []
    with duckdb.connect(str(database), read_only=True) as connection:
        for feature in np.random.default_rng(1).integers(0, n_features, 20):
            started = time.perf_counter()
            connection.execute(
                "select symbol, score, specificity from feature_genes where dataset = 'bench' and layer = 6 "
                "and feature = ? order by rank limit 20",
                [int(feature)],
            ).fetchall()
            timings.append(time.perf_counter() - started)
    return {
        "rows": rows,
        "median_ms": round(1000 * float(np.median(timings)), 2),
        "max_ms": round(1000 * max(timings), 2),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_store(work / "store")
        ours = measure("ours", work / "store")
        baseline = measure("baseline", work / "store")
        predecessor = measure("predecessor", work / "store")
        print(
            json.dumps(
                {
                    "tokens": N_TOKENS,
                    "d_sae": D_SAE,
                    "k": K,
                    "ours": ours,
                    "predecessor_loop": predecessor,
                    "dense_feature_loop": baseline,
                    "speedup_vs_predecessor": round(predecessor["seconds"] / ours["seconds"], 1),
                    "speedup_vs_dense_feature_loop": round(baseline["seconds"] / ours["seconds"], 1),
                }
            ),
            flush=True,
        )
        print(json.dumps({"sql_one_feature_top_genes": sql_speed(work)}))


if __name__ == "__main__":
    main()
