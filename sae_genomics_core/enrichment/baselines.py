"""Baselines for every enrichment claim: PCA and random directions of the same activations.

A claim that "x% of SAE features are biologically meaningful" means little until simpler directions
go through the very same path (bio-sae's revision: top PCA axes annotated at 0.98 vs 0.90–0.93 for SAE
features). Each baseline is an encoder with the SAE's interface, so `associate` ties it to genes
exactly as it does the SAE, and `enrich` tests its gene sets with the same settings:

- PCA: principal axes of the SAE's (normalised, centred) input, each taken with both signs (a ReLU
  unit reads one side of an axis), up to `n_units`;
- random: as many random unit directions (seeded), centred the same way.

Both keep the SAE's sparsity: each token activates its top k' units with k' = k · n_units / d_sae
(at least 1), so a baseline unit fires on about as many tokens as an SAE feature does.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import torch

from sae_genomics_core.activations.store import ActivationStore, from_storage


@dataclass
class DirectionEncoder:
    """The slice of a sae-lens TopK SAE that `encode_topk` and `associate` use, for fixed directions."""

    W_enc: torch.Tensor  # d_in × units
    b_enc: torch.Tensor
    b_dec: torch.Tensor  # subtracted from the input: the centring mean
    cfg: Any

    def to(self, device: str) -> DirectionEncoder:
        return DirectionEncoder(self.W_enc.to(device), self.b_enc.to(device), self.b_dec.to(device), self.cfg)


@dataclass
class BaselineModel:
    """Shaped like sae_genomics_core.sae.checkpoint.LoadedSae for `associate`."""

    sae: DirectionEncoder
    normalizer: Any
    method: str


def _encoder(directions: torch.Tensor, mean: torch.Tensor, k: int) -> DirectionEncoder:
    units = directions.shape[1]
    config = SimpleNamespace(k=max(1, min(k, units)), d_sae=units, apply_b_dec_to_input=True)
    return DirectionEncoder(directions.contiguous(), torch.zeros(units), mean, config)


@torch.no_grad()
def input_moments(
    store: ActivationStore, layer: int, hook: str, normalizer: Any, max_tokens: int = 200_000
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and covariance of the normalised activations over up to `max_tokens` tokens spread evenly
    over the shards (accumulated in float64, one shard at a time)."""
    shards = [s for s in store.manifest["shards"] if s["n_tokens"]]
    total = sum(s["n_tokens"] for s in shards)
    if total == 0:
        raise ValueError("the activation store holds no tokens")
    stride = max(1, -(-total // max_tokens))
    storage = store.manifest["dtype"]
    count, first, second = 0, None, None
    for shard in shards:
        x = normalizer(
            from_storage(np.asarray(store.acts(layer, hook, shard["name"])[::stride]), storage).float()
        )
        x = x.double()
        first = x.sum(0) if first is None else first + x.sum(0)
        second = x.T @ x if second is None else second + x.T @ x
        count += x.shape[0]
    assert first is not None and second is not None
    mean = first / count
    covariance = second / count - torch.outer(mean, mean)
    return mean.float(), covariance, count


def pca_model(
    mean: torch.Tensor, covariance: torch.Tensor, normalizer: Any, n_units: int, k: int
) -> BaselineModel:
    """±principal axes by decreasing variance, `n_units` in all (at most 2 · d_in)."""
    _, vectors = torch.linalg.eigh(covariance)
    axes = vectors.flip(1).float()  # columns by decreasing eigenvalue
    n_axes = min(axes.shape[1], -(-n_units // 2))
    signed = torch.stack([axes[:, :n_axes], -axes[:, :n_axes]], dim=2).reshape(axes.shape[0], 2 * n_axes)
    return BaselineModel(_encoder(signed[:, :n_units], mean, k), normalizer, "pca")


def random_model(mean: torch.Tensor, normalizer: Any, n_units: int, k: int, seed: int) -> BaselineModel:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(mean.shape[0], n_units, generator=generator)
    return BaselineModel(_encoder(directions / directions.norm(dim=0), mean, k), normalizer, "random")


def matched_k(k: int, d_sae: int, n_units: int) -> int:
    """Top-k of a baseline with n_units so that each unit fires about as often as an SAE feature."""
    return max(1, round(k * n_units / d_sae))


def compare(summaries: dict[str, pl.DataFrame], unit_counts: dict[str, int]) -> pl.DataFrame:
    """Per method × database: units tested, units with ≥ 1 significant term, and the fraction.

    summaries: method → EnrichmentResult.summary_frame(); unit_counts: method → all units (d_sae, or
    the number of directions), so dead units and units with no gene in the universe stay visible.
    A database with nothing to test (no term within the size bounds) tested no unit: its fractions are
    null, not 0, so that "no unit is significant" is never claimed where nothing could have been."""
    frames = []
    for method, frame in summaries.items():
        tested = pl.when(pl.col("n_tests") > 0).then(pl.col("n_units")).otherwise(0)
        frames.append(
            frame.with_columns(n_units_tested=tested).select(
                pl.lit(method).alias("method"), "database", "statistic",
                pl.lit(unit_counts[method], dtype=pl.Int64).alias("n_units"), "n_units_tested", "n_units_significant",
                pl.when(pl.col("n_units_tested") > 0).then(pl.col("n_units_significant") / pl.col("n_units_tested"))
                .alias("fraction_significant"),
                pl.when(pl.col("n_units_tested") > 0).then(pl.col("n_units_significant") / max(unit_counts[method], 1))
                .alias("fraction_of_all_units"),
                "n_tests", pl.col("n_significant").alias("n_significant_pairs"), "background_size",
            )
        )  # fmt: skip
    return pl.concat(frames).sort("database", "method")
