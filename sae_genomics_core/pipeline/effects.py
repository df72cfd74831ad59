"""Stage runner: what each feature of one dataset × layer does to tahoe-x1's predictions (two tables,
written together in one transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import MODEL_ENV
from sae_genomics_core.errors import InputError
from sae_genomics_core.pipeline.features import open_partition
from sae_genomics_core.pipeline.result import Log, StageResult, default_log, keyed
from sae_genomics_core.pipeline.sae import FidelityModel, matching_model
from sae_genomics_core.sae.settings import EffectSettings
from sae_genomics_core.warehouse.writer import replace_partition

EFFECT_TABLES = ("feature_effects", "feature_effect_cell_types")
GENE_COLUMNS = [
    *("feature", "intervention", "strength", "cells", "direction", "rank", "ensembl_id", "symbol", "effect"),
    *("effect_sd", "consistency", "n_cells", "gene_id"),
]


def run_feature_effects(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    warehouse: Path,
    cells: pl.DataFrame,
    genes: pl.DataFrame,
    model: FidelityModel,
    settings: EffectSettings,
    log: Log | None = None,
) -> StageResult:
    """Ablate and steer the SAE's features on held-out cells and write `feature_effects` and
    `feature_effect_cell_types` for the dataset × layer."""
    from sae_genomics_core.sae.effects import choose_features, feature_effects

    log = log or default_log()
    session = _Session.open(dataset, layer, store, model, settings)
    evaluated, device = session.evaluated, session.device
    features = choose_features(evaluated.activity, settings, on_gpu=device.startswith("cuda"))
    log.info(
        f"feature effects: {features.size} features on {evaluated.cell_index.size} held-out cells ({device})"
    )
    types = _types_of(cells, evaluated.cell_index)
    tables = feature_effects(session.intervener, evaluated, features, types, settings)
    derived_from = {"checkpoint_id": session.sae.provenance["checkpoint_id"]}

    frames = {
        "feature_effects": keyed(
            session.named(tables.genes, genes).select(GENE_COLUMNS), dataset, layer, derived_from
        ),
        "feature_effect_cell_types": keyed(tables.cell_types, dataset, layer, derived_from),
    }
    replace_partition(warehouse, frames, {"dataset": dataset, "layer": layer})
    summary = {"features": tables.n_features, "cells": int(evaluated.cell_index.size), "device": device}
    return StageResult(
        tables=frames,
        written=True,
        summary={**summary, **derived_from},
        table_summaries={name: {"rows": frame.height} for name, frame in frames.items()},
    )


@dataclass
class _Session:
    """A dataset × layer's model, SAE and held-out cells, evaluated once: what every intervention needs."""

    activations: Any
    sae: Any
    intervener: Any  # sae_genomics_core.sae.effects.Intervener
    evaluated: Any  # sae_genomics_core.sae.effects.EvaluatedCells
    device: str

    @classmethod
    def open(
        cls, dataset: str, layer: int, store: ArtefactStore, model: FidelityModel, settings: EffectSettings
    ) -> _Session:
        from sae_genomics_core.sae.effects import Intervener

        loaded = matching_model(model, dataset, store.current_activations(dataset).manifest)
        if isinstance(loaded, str):
            raise InputError(
                f"interventions need the model the activations came from: {loaded}",
                fix=f"point the model resource (${MODEL_ENV}) at the model that extracted {dataset}'s "
                "activations, or extract them again with this one (materialise `activations`)",
            )
        device = str(next(loaded.model.parameters()).device)
        activations, hook, sae = open_partition(store, dataset, layer, device)
        intervener = Intervener(loaded, sae, layer, hook, _dataset_gene_ids(activations))
        evaluated = intervener.evaluate(_held_out_batches(activations, sae, loaded, settings), settings)
        return cls(activations, sae, intervener, evaluated, device)

    def named(self, gene_rows: pl.DataFrame, genes: pl.DataFrame) -> pl.DataFrame:
        """Rows keyed by vocab `gene_id`, with the dataset's ensembl_id and symbol."""
        from sae_genomics_core.features.associate import attach_gene_ids

        return attach_gene_ids(
            gene_rows, json.loads((self.activations.root / "vocab.json").read_text()), genes
        )


def _dataset_gene_ids(activations: Any) -> np.ndarray:
    """The vocab ids of the dataset's genes (those that became tokens): the genes whose predicted
    expression is read out."""
    shards = activations.manifest["shards"]
    return np.unique(np.concatenate([np.asarray(activations.tokens(s["name"])["gene_id"]) for s in shards]))


def _held_out_batches(activations: Any, sae: Any, loaded: Any, settings: EffectSettings) -> Iterator[Any]:
    """The SAE's held-out cells (a seeded sample of `evaluated_cells`), rebuilt from the store."""
    from sae_genomics_core.sae.fidelity import store_batches
    from sae_genomics_core.sae.train import StoreSource

    provenance = sae.provenance
    config = provenance["config"]
    held_out = StoreSource(
        activations, provenance["layer"], provenance["hook"], config["holdout_fraction"], config["seed"]
    ).held_out_cells
    chosen = np.sort(np.random.default_rng(settings.seed).permutation(held_out)[: settings.evaluated_cells])
    prefix, model_config = loaded.tokenizer().prefix, loaded.config
    return store_batches(
        activations, chosen, prefix, model_config.pad_token_id, model_config.pad_value, settings.batch_rows
    )


def _types_of(cells: pl.DataFrame, cell_index: np.ndarray) -> np.ndarray | None:
    """The evaluated cells' types (None when the dataset has none)."""
    typed = pl.DataFrame({"cell_index": cell_index}).join(
        cells.select("cell_index", "cell_type"), on="cell_index", how="left"
    )
    if typed["cell_type"].null_count() == typed.height:
        return None
    return typed["cell_type"].cast(pl.String).fill_null("None").to_numpy()


@dataclass
class Steering:
    """One feature steered on held-out cells: the genes whose predicted expression moves most (up and
    down), each cell's change, and the embedding's shift toward each cell type."""

    genes: pl.DataFrame
    cells: pl.DataFrame
    cell_types: pl.DataFrame


def steer_feature(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    cells: pl.DataFrame,
    genes: pl.DataFrame,
    model: FidelityModel,
    feature: int,
    strength: float,
    settings: EffectSettings,
) -> Steering:
    """Add strength × the feature's mean activation along its decoder direction at every gene token of up
    to `evaluated_cells` held-out cells, and read the model's predictions."""
    import torch

    from sae_genomics_core.sae.effects import run_plan, steering_plan

    session = _Session.open(dataset, layer, store, model, settings)
    evaluated = session.evaluated
    _require_firing(evaluated, feature)
    plan = steering_plan(evaluated, feature, strength, np.arange(evaluated.cell_index.size), "all")
    deltas, embeddings = [], []

    def keep(rows: np.ndarray, delta: Any, embedding: Any) -> None:  # one plan row per cell, in order
        deltas.append(delta.abs().mean(dim=1).cpu().double().numpy())
        embeddings.append(embedding)

    summary = run_plan(
        session.intervener, evaluated, plan, _types_of(cells, evaluated.cell_index), settings, keep
    )
    moved = torch.nn.functional.cosine_similarity(torch.cat(embeddings), evaluated.embedding, dim=1)
    per_cell = pl.DataFrame(
        {
            "cell_index": evaluated.cell_index.astype(np.int64),
            "active": evaluated.activity[:, feature] > 0,
            "mean_abs_change": np.concatenate(deltas),
            "embedding_cosine": moved.cpu().double().numpy(),
        }
    ).join(cells.select("cell_index", "cell_id", "cell_type"), on="cell_index", how="left")
    gene_columns = [
        "direction",
        "rank",
        "ensembl_id",
        "symbol",
        "effect",
        "effect_sd",
        "consistency",
        "n_cells",
    ]
    return Steering(
        session.named(summary.genes, genes).select(gene_columns),
        per_cell,
        summary.cell_types.select("cell_type", "cosine_shift", "n_cells").sort(
            "cosine_shift", descending=True
        ),
    )


def contrast_features(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    cells: pl.DataFrame,
    model: FidelityModel,
    types: tuple[str, str],
    strength: float,
    settings: EffectSettings,
) -> pl.DataFrame:
    """Contrastive steering: which features, steered on cells of the source type, move their embeddings
    toward the target type's centroid most. `relative_shift` is the change of cosine similarity to the
    target minus that to the source (a feature that only moves cells anywhere scores 0), set against
    features of the same frequency (the null: a feature that fires as often but is unrelated)."""
    from sae_genomics_core.sae.effects import STEER, choose_features, make_plan, run_plan

    source, target = types
    session = _Session.open(dataset, layer, store, model, settings)
    evaluated = session.evaluated
    labels = _types_of(cells, evaluated.cell_index)
    _require_types(labels, source, target)
    from_source = np.flatnonzero(labels == source)[: settings.cells]
    # every firing feature by default (a row per source cell each: cheap); max_features caps it
    candidates = choose_features(evaluated.activity, settings, on_gpu=True)
    parts = [
        (
            from_source,
            int(f),
            False,
            strength * evaluated.mean_when_firing[f],
            (int(f), STEER, strength, source),
        )
        for f in candidates
    ]
    shifts = run_plan(session.intervener, evaluated, make_plan(parts), labels, replace(settings, top_genes=0))
    by_type = shifts.cell_types.pivot(on="cell_type", index="feature", values="cosine_shift")
    frequency = pl.DataFrame({"feature": candidates, "frequency": evaluated.token_frequency[candidates]})
    ranked = by_type.select(
        "feature",
        (pl.col(target) - pl.col(source)).alias("relative_shift"),
        pl.col(target).alias("toward_target"),
        pl.col(source).alias("toward_source"),
    )
    return _against_same_frequency(ranked.join(frequency, on="feature"), n_source_cells=from_source.size)


FREQUENCY_BINS = 5  # same-frequency null: features in the same fifth of the candidates' frequencies


def _against_same_frequency(ranked: pl.DataFrame, n_source_cells: int) -> pl.DataFrame:
    """Each feature's relative shift as a percentile and z-score among features firing on a similar
    share of tokens (quantile bins), best first."""
    edges = np.unique(np.quantile(ranked["frequency"].to_numpy(), np.linspace(0, 1, FREQUENCY_BINS + 1)))
    binned = ranked.with_columns(
        pl.Series(
            "frequency_bin",  # the largest frequency closes the last bin, as numpy's histograms do
            np.clip(np.searchsorted(edges, ranked["frequency"], side="right") - 1, 0, max(0, edges.size - 2)),
        )
    )
    shift, in_bin = pl.col("relative_shift"), "frequency_bin"  # .over after each aggregation: per bin
    return (
        binned.with_columns(
            (shift.rank("average").over(in_bin) / pl.len().over(in_bin)).alias("percentile_same_frequency"),
            ((shift - shift.mean().over(in_bin)) / shift.std().over(in_bin)).alias("z_same_frequency"),
            pl.len().over(in_bin).cast(pl.Int64).alias("same_frequency_features"),
            pl.lit(n_source_cells).alias("n_cells"),
        )
        .drop("frequency_bin")
        .sort("relative_shift", descending=True)
        .with_row_index("rank", offset=1)
    )


def _require_firing(evaluated: Any, feature: int) -> None:
    d_sae = evaluated.activity.shape[1]
    if not 0 <= feature < d_sae:
        raise InputError(
            f"feature {feature} does not exist: this SAE has features 0 to {d_sae - 1}", fix="pick one"
        )
    if evaluated.mean_when_firing[feature] == 0:
        raise InputError(
            f"feature {feature} never fires on the {evaluated.cell_index.size} held-out cells evaluated, so its "
            "strength unit (its mean activation where it fires) is undefined",
            fix="pick a feature that fires (feature_stats.fire_count > 0), or evaluate more cells",
        )


def _require_types(labels: np.ndarray | None, *wanted: str) -> None:
    if labels is None:
        raise InputError(
            "contrastive steering needs cell types and this dataset has none",
            fix="register the dataset with --cell-type-key",
        )
    known = sorted(set(labels) - {"None"})
    missing = [name for name in wanted if name not in known]
    if missing:
        raise InputError(
            f"no held-out cells of type {', '.join(missing)}; the types are {', '.join(known)}",
            fix="choose source and target among them",
        )
