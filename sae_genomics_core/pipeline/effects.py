"""Stage runner: what each feature of one dataset × layer does to tahoe-x1's predictions (two tables,
written together in one transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.errors import InputError
from sae_genomics_core.pipeline.features import open_partition
from sae_genomics_core.pipeline.result import Log, StageResult, default_log
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
    from sae_genomics_core.features.associate import attach_gene_ids
    from sae_genomics_core.sae.effects import Intervener, choose_features, feature_effects

    log = log or default_log()
    loaded = _model(model, dataset, store)
    device = str(next(loaded.model.parameters()).device)
    activations, hook, sae = open_partition(store, dataset, layer, device)
    intervener = Intervener(loaded, sae, layer, hook, _dataset_gene_ids(activations))
    evaluated = intervener.evaluate(_held_out_batches(activations, sae, loaded, settings), settings)
    features = choose_features(evaluated.activity, settings, on_gpu=device.startswith("cuda"))
    log.info(
        f"feature effects: {features.size} features on {evaluated.cell_index.size} held-out cells ({device})"
    )
    tables = feature_effects(
        intervener, evaluated, features, _types_of(cells, evaluated.cell_index), settings
    )
    vocab = json.loads((activations.root / "vocab.json").read_text())
    derived_from = {"checkpoint_id": sae.provenance["checkpoint_id"]}

    def keyed(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(
            pl.lit(dataset).alias("dataset"), pl.lit(layer, dtype=pl.Int64).alias("layer"), pl.all()
        ).with_columns(pl.lit(value).alias(name) for name, value in derived_from.items())

    frames = {
        "feature_effects": keyed(attach_gene_ids(tables.genes, vocab, genes).select(GENE_COLUMNS)),
        "feature_effect_cell_types": keyed(tables.cell_types),
    }
    replace_partition(warehouse, frames, {"dataset": dataset, "layer": layer})
    summary = {"features": tables.n_features, "cells": int(evaluated.cell_index.size), "device": device}
    return StageResult(
        tables=frames,
        written=True,
        summary={**summary, **derived_from},
        table_summaries={name: {"rows": frame.height} for name, frame in frames.items()},
    )


def _model(model: FidelityModel, dataset: str, store: ArtefactStore) -> Any:
    loaded = matching_model(model, dataset, store.current_activations(dataset).manifest)
    if isinstance(loaded, str):
        raise InputError(
            f"feature effects need the model the activations came from: {loaded}", fix="see above"
        )
    return loaded


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
