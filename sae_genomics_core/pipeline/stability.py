"""Stage runner: are one dataset × layer's SAE features stable across training seeds?

The SAE is trained again with the next seeds (same activations, settings and held-out cells); each
replicate's decoder is matched to the checkpoint's (sae_genomics_core.sae.matching), and random unit
directions of the same shape are matched the same way as the null. Replicates are kept in their
content-keyed run folders (a re-run reuses them) and never published.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import sae_device
from sae_genomics_core.errors import SettingsError
from sae_genomics_core.pipeline.features import open_partition
from sae_genomics_core.pipeline.result import Log, StageResult, default_log, keyed
from sae_genomics_core.pipeline.sae import training_key
from sae_genomics_core.sae.settings import SaeStageSettings, SaeTrainingConfig
from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import replace_partition

STABILITY_TABLES = ("feature_stability", "sae_stability")
SEED_METRICS = ("explained_variance", "l0", "dead_fraction", "mse")  # reported as mean ± sd over seeds


def run_sae_stability(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    warehouse: Path,
    settings: SaeStageSettings,
    log: Log | None = None,
) -> StageResult:
    """Train the replicates, match their decoders to the checkpoint's and write both tables."""
    from sae_genomics_core.sae.checkpoint import METRICS, checkpoint_id
    from sae_genomics_core.sae.matching import STABLE_COSINE, match, random_directions

    log = log or default_log()
    activations, hook, main = open_partition(store, dataset, layer, "cpu")
    training = replace(SaeTrainingConfig(**main.provenance["config"]), device=sae_device())
    n_seeds = settings.seeds_for(bool(main.provenance["random_weights"]))
    if n_seeds < 2:
        raise SettingsError(
            f"stability_seeds is {n_seeds}: stability compares the checkpoint with at least one other seed",
            fix="set stability_seeds to 2 or more (or None: 3 for real models, 2 for random weights)",
        )
    decoder = main.sae.W_dec.detach().cpu()
    finals = [json.loads((store.require_checkpoint(dataset, layer) / METRICS).read_text())["final"]]
    rows, agreements, nulls = [], [], []
    for seed in range(training.seed + 1, training.seed + n_seeds):
        replicate, final = _replicate(
            store, (dataset, layer, hook), activations, replace(training, seed=seed), training.seed, log
        )
        finals.append(final)
        matching = match(decoder, replicate)
        null = match(random_directions(*decoder.shape, seed=seed), replicate, one_to_one=False)
        rows.append(_feature_rows(matching, seed))
        agreements.append(matching)
        nulls.append(null)
    features = _with_stable_flag(
        pl.concat(rows) if rows else pl.DataFrame(schema=FEATURE_SCHEMA), STABLE_COSINE
    )
    summary = _summary(agreements, nulls, finals, n_seeds, features)
    derived_from = {"checkpoint_id": checkpoint_id(store.require_checkpoint(dataset, layer))}
    frames = {
        "feature_stability": keyed(features, dataset, layer, derived_from),
        "sae_stability": keyed(pl.DataFrame([summary]), dataset, layer, derived_from),
    }
    replace_partition(warehouse, frames, {"dataset": dataset, "layer": layer}, after=create_feature_summary)
    log.info(
        f"seed stability over {n_seeds} seeds: {summary['fraction_stable']:.3f} of features stable, best-match "
        f"cosine > 0.9 for {summary['best_above_0_9']:.3f} (random directions {summary['null_best_above_0_9']:.3f})"
    )
    return StageResult(tables=frames, written=True, summary={**summary, **derived_from})


FEATURE_SCHEMA = {
    "feature": pl.Int64,
    "seed": pl.Int64,
    "best_cosine": pl.Float64,
    "best_match": pl.Int64,
    "matched_cosine": pl.Float64,
    "matched_feature": pl.Int64,
    "mutual": pl.Boolean,
}


def _replicate(
    store: ArtefactStore,
    where: tuple[str, int, str],
    activations: Any,
    training: SaeTrainingConfig,
    split_seed: int,
    log: Log,
) -> tuple[Any, dict[str, Any]]:
    """The decoder and final metrics of the SAE trained with `training` (its seed): from its run folder
    when it was trained before, else trained now on the checkpoint's held-out split."""
    from sae_genomics_core.sae.checkpoint import METRICS, load_checkpoint, save_checkpoint
    from sae_genomics_core.sae.train import StoreSource, train_sae

    dataset, layer, hook = where
    work = store.new_sae_run(
        dataset, layer, hook, training_key(activations.manifest["checksum"], hook, training)
    )
    checkpoint = work / "checkpoint"
    if not (checkpoint / METRICS).exists():
        # the held-out cells are the checkpoint's (its seed draws them), so EV compares like with like
        source = StoreSource(activations, layer, hook, training.holdout_fraction, split_seed)
        log.info(f"stability: training the replicate with seed {training.seed}")
        outcome = train_sae(source, training, state_path=work / "train_state.pt")
        save_checkpoint(
            checkpoint, outcome, {"dataset": dataset, "layer": layer, "hook": hook, "seed": training.seed}
        )
        (work / "train_state.pt").unlink(missing_ok=True)
    loaded = load_checkpoint(checkpoint)
    return loaded.sae.W_dec.detach().cpu(), json.loads((checkpoint / METRICS).read_text())["final"]


def _feature_rows(matching: Any, seed: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "feature": np.arange(matching.best_cosine.size, dtype=np.int64),
            "seed": np.full(matching.best_cosine.size, seed, dtype=np.int64),
            "best_cosine": matching.best_cosine,
            "best_match": matching.best_match,
            "matched_cosine": matching.matched_cosine,
            "matched_feature": matching.matched_feature,
            "mutual": matching.mutual,
        },
        schema=FEATURE_SCHEMA,
    )


def _with_stable_flag(rows: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """`stable`: the feature's one-to-one partner clears `threshold` in every other seed."""
    return rows.with_columns((pl.col("matched_cosine") >= threshold).all().over("feature").alias("stable"))


def _summary(
    matchings: list[Any], nulls: list[Any], finals: list[dict[str, Any]], n_seeds: int, features: pl.DataFrame
) -> dict[str, Any]:
    from sae_genomics_core.sae.matching import agreement

    def mean_of(found: list[dict[str, float]]) -> dict[str, float]:
        return {name: float(np.mean([f[name] for f in found])) for name in (found[0] if found else {})}

    observed = mean_of([agreement(m) for m in matchings])
    chance = mean_of([agreement(n) for n in nulls])
    metrics: dict[str, Any] = {}
    for name in SEED_METRICS:
        values = [float(final[name]) for final in finals if final.get(name) is not None]
        metrics[f"{name}_mean"] = float(np.mean(values))
        metrics[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    stable = features.group_by("feature").agg(pl.col("stable").first())["stable"]
    return {
        "n_seeds": n_seeds,
        **{
            name: observed.get(name)
            for name in (
                "best_above_0_9",
                "best_above_0_7",
                "matched_above_0_9",
                "matched_above_0_7",
                "mean_best_cosine",
            )
        },
        **{
            f"null_{name}": chance.get(name)
            for name in ("best_above_0_9", "best_above_0_7", "mean_best_cosine")
        },
        "fraction_stable": float(stable.mean()) if stable.len() else None,
        **metrics,
    }
