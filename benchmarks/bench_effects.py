"""Feature effects: cost per feature of the default plan (ablate on 16 cells where the feature fires, four
steering strengths on those and on 16 silent cells: 144 edited cells, each beside a clean copy), and the
time to run every feature of a layer, extrapolated.

Two models with random weights: tiny-random's shape (d_model 64, 4 layers) and tahoe-x1-70m's (d_model
512, 12 layers, 8 heads), cells of 512 genes, a TopK SAE of 8 × d_model latents (k 64), the edit at
layer 1 (the rest of the model runs after it). CPU, or the GPU when there is one.

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

SHAPES = {"tiny-random": (64, 4, 4), "tahoe-x1-70m": (512, 12, 8)}  # d_model, layers, heads
N_CELLS, N_GENES, VOCAB, LAYER, FEATURES_TIMED = 64, 512, 4000, 1, 4


def _setup(d_model: int, n_layers: int, n_heads: int, device: str) -> tuple[Intervener, TokenBatch]:
    torch.manual_seed(0)
    config = TahoeConfig(
        vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads, kv_n_heads=n_heads
    )
    model = TXModel(config).to(device).eval()
    sae = LoadedSae(
        build_sae(d_model, SaeTrainingConfig(expansion_factor=8, k=64)).to(device).eval(),
        Normalizer(torch.zeros(d_model), 1.0),
        {},
    )
    rng = np.random.default_rng(0)
    genes = np.stack(
        [
            np.concatenate([[1], rng.choice(np.arange(3, VOCAB), N_GENES, replace=False)])
            for _ in range(N_CELLS)
        ]
    )
    values = np.concatenate([np.full((N_CELLS, 1), -2.0), rng.integers(1, 51, (N_CELLS, N_GENES))], axis=1)
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
    for name, shape in SHAPES.items():
        intervener, batch = _setup(*shape, device)
        started = time.perf_counter()
        cells = intervener.evaluate(iter([batch]), settings)
        evaluated = time.perf_counter() - started
        features = choose_features(cells.activity, settings, on_gpu=True)
        started = time.perf_counter()
        tables = feature_effects(intervener, cells, features[:FEATURES_TIMED], None, settings)
        per_feature = (time.perf_counter() - started) / FEATURES_TIMED
        d_sae = cells.activity.shape[1]
        print(
            f"{name} ({device}): evaluate {N_CELLS} cells {evaluated:.2f} s; {per_feature:.2f} s per feature "
            f"({tables.genes.height // FEATURES_TIMED} gene rows each); all {features.size} firing of {d_sae} "
            f"features: {per_feature * features.size / 60:.1f} min"
        )


if __name__ == "__main__":
    main()
