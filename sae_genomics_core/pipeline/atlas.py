"""Stage runner: one atlas of the SAE features, matched by decoder direction across the layers of each
dataset and across datasets for each layer (sae_genomics_core.sae.matching).

Only SAEs of one model, hook and width are compared (their decoders live in the same space). Each
ordered pair gets one row per feature of the first: its best match in the second, whether that match
is mutual, its one-to-one partner, and the cosine that random unit directions reach against the
second SAE (their 99th percentile), the line below which a match means nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sae_genomics_core.annotations.store import read_table
from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.pipeline.result import StageResult

SAME_SPACE = ("model_id", "hook", "d_in")  # SAEs comparable by decoder cosine
CHANCE_QUANTILE = 0.99


def run_feature_matches(store: ArtefactStore, warehouse: Path) -> StageResult:
    """`feature_matches` over every pair of comparable current SAEs (same dataset, or same layer)."""
    saes = read_table(warehouse, "sae_checkpoints")
    if saes is None or saes.height < 2:
        return StageResult(skipped="fewer than two SAEs: nothing to match yet")
    decoders = _decoders(store, saes)
    frames = [
        _pair_rows(a, b, decoders)
        for a in saes.iter_rows(named=True)
        for b in saes.iter_rows(named=True)
        if _comparable(a, b)
        and (a["dataset"], a["layer"]) in decoders
        and (b["dataset"], b["layer"]) in decoders
    ]
    if not frames:
        return StageResult(skipped="no two SAEs of one model, hook and width share a dataset or a layer")
    matches = pl.concat(frames)
    return StageResult(
        tables={"feature_matches": matches},
        summary={"pairs": len(frames), "rows": matches.height, "mutual": int(matches["mutual"].sum())},
    )


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same_space = all(a[name] == b[name] for name in SAME_SPACE)
    across_layers = a["dataset"] == b["dataset"] and a["layer"] != b["layer"]
    across_datasets = a["dataset"] != b["dataset"] and a["layer"] == b["layer"]
    return same_space and (across_layers or across_datasets)


def _decoders(store: ArtefactStore, saes: pl.DataFrame) -> dict[tuple[str, int], Any]:
    from sae_genomics_core.sae.checkpoint import load_checkpoint

    found = {}
    for dataset, layer in saes.select("dataset", "layer").iter_rows():
        checkpoint = store.current_checkpoint(dataset, layer)
        if checkpoint is not None:
            found[dataset, layer] = load_checkpoint(checkpoint).sae.W_dec.detach().cpu()
    return found


def _pair_rows(a: dict[str, Any], b: dict[str, Any], decoders: dict[tuple[str, int], Any]) -> pl.DataFrame:
    from sae_genomics_core.sae.matching import match, random_directions

    first, second = decoders[a["dataset"], a["layer"]], decoders[b["dataset"], b["layer"]]
    found = match(first, second)
    chance = match(random_directions(*first.shape, seed=0), second, one_to_one=False).best_cosine
    n = found.best_cosine.size
    return pl.DataFrame(
        {
            "dataset": [a["dataset"]] * n,
            "layer": np.full(n, a["layer"], dtype=np.int64),
            "feature": np.arange(n, dtype=np.int64),
            "other_dataset": [b["dataset"]] * n,
            "other_layer": np.full(n, b["layer"], dtype=np.int64),
            "best_match": found.best_match,
            "best_cosine": found.best_cosine,
            "mutual": found.mutual,
            "matched_feature": found.matched_feature,
            "matched_cosine": found.matched_cosine,
            "chance_cosine": np.full(n, float(np.quantile(chance, CHANCE_QUANTILE))),
        }
    )
