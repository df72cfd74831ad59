"""Feature effects (issue: what a feature does, item 7): the cost per feature of the default plan
(ablation on 16 cells where the feature fires, four steering strengths on those and on 16 silent cells:
144 edited cells, each beside a clean copy of its cell in the same pass), and every feature of a layer.

Random weights in two shapes. tiny-random's (d_model 64, 4 layers) with an SAE of d_sae 4,096 (k 64),
cells of 200 genes (the demo's cells express about that many of its 765): every firing feature is run.
tahoe-x1-70m's (d_model 512, 12 layers, 8 heads) with d_sae 4,096, cells of 512 genes: a few features
are timed and the layer extrapolated. 64 cells, the edit at layer 1's resid_post (the layers before it
run once per cell). CPU, or the GPU when there is one.

usage: python benchmarks/bench_effects.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.tokenize import TokenBatch
from sae_genomics_core.model.tx import TXModel
from sae_genomics_core.sae.checkpoint import LoadedSae
from sae_genomics_core.sae.effects import Intervener, choose_features, feature_effects
from sae_genomics_core.sae.settings import EffectSettings
from sae_genomics_core.sae.train import Normalizer, SaeTrainingConfig, build_sae

# d_model, layers, heads, SAE expansion, genes per cell, features timed (None: every firing one)
SHAPES = {"tiny-random": (64, 4, 4, 64, 200, None), "tahoe-x1-70m": (512, 12, 8, 8, 512, 4)}
N_CELLS, VOCAB, LAYER = 64, 4000, 1


def _setup(
    d_model: int, n_layers: int, n_heads: int, expansion: int, n_genes: int, device: str
) -> tuple[Intervener, TokenBatch]:
    torch.manual_seed(0)
    config = TahoeConfig(
        vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads, kv_n_heads=n_heads
    )
    model = TXModel(config).to(device).eval()
    sae = LoadedSae(
        build_sae(d_model, SaeTrainingConfig(expansion_factor=expansion, k=64)).to(device).eval(),
        Normalizer(torch.zeros(d_model), 1.0),
        {},
    )
    rng = np.random.default_rng(0)
    genes = np.stack(
        [
            np.concatenate([[1], rng.choice(np.arange(3, VOCAB), n_genes, replace=False)])
            for _ in range(N_CELLS)
        ]
    )
    values = np.concatenate([np.full((N_CELLS, 1), -2.0), rng.integers(1, 51, (N_CELLS, n_genes))], axis=1)
    batch = TokenBatch(
        torch.as_tensor(genes),
        torch.as_tensor(values, dtype=torch.float32),
        torch.as_tensor(values, dtype=torch.float32),
        torch.ones(genes.shape, dtype=torch.bool),
        np.arange(N_CELLS),
    )
    loaded = SimpleNamespace(model=model, drug_id=None)
    return Intervener(loaded, sae, LAYER, "resid_post", np.arange(3, VOCAB)), batch


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = EffectSettings(batch_rows=64)
    for name, (*shape, timed) in SHAPES.items():
        intervener, batch = _setup(*shape, device)
        started = time.perf_counter()
        cells = intervener.evaluate(iter([batch]), settings)
        evaluated = time.perf_counter() - started
        features = choose_features(cells.activity, settings, on_gpu=True)
        run = features if timed is None else features[:timed]
        started = time.perf_counter()
        tables = feature_effects(intervener, cells, run, None, settings)
        elapsed = time.perf_counter() - started
        per_feature = elapsed / run.size
        whole = (
            f"ran all {run.size} in {elapsed / 60:.1f} min"
            if timed is None
            else (f"all {features.size}: {per_feature * features.size / 60:.1f} min (extrapolated)")
        )
        print(
            f"{name} ({device}, d_sae {cells.activity.shape[1]}): evaluate {N_CELLS} cells {evaluated:.2f} s; "
            f"{per_feature:.3f} s per feature ({tables.genes.height // run.size} gene rows each); {whole}"
        )


if __name__ == "__main__":
    main()
