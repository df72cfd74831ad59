"""Stage runners: a TopK SAE (sae-lens) for one dataset × layer, and its rows in `sae_checkpoints` and
`sae_training_log`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import sae_device
from sae_genomics_core.errors import InputError
from sae_genomics_core.model.choice import ModelChoice
from sae_genomics_core.pipeline.result import CheckOutcome, Log, Markdown, StageResult, default_log
from sae_genomics_core.sae.settings import SaeStageSettings, SaeTrainingConfig

EV_CHECK = "explained_variance_floor"
DEAD_CHECK = "dead_fraction_ceiling"
LOSS_RECOVERED_CHECK = "loss_recovered_floor"
FIDELITY = "fidelity.json"  # in the checkpoint folder: the losses and loss recovered (sae.fidelity)
# its columns in `sae_checkpoints`, NULL where it was not measured
FIDELITY_COLUMNS = tuple(
    f"loss_recovered_{decoder}_{ablation}" for decoder in ("expr", "mvc") for ablation in ("zero", "mean")
) + tuple(
    f"loss_{decoder}_{variant}" for decoder in ("expr", "mvc") for variant in ("clean", "sae", "zero", "mean")
)


@dataclass(frozen=True)
class FidelityModel:
    """The model the activations came from, for loss recovered: the user's choice, the warehouse (whose
    `genes` build tiny-random's vocab) and the extraction seed (tiny-random's weights)."""

    choice: ModelChoice
    warehouse: Path
    seed: int = 0


def training_key(activations_checksum: str, hook: str, training: SaeTrainingConfig) -> str:
    """The content key of a training run: the same activations and settings resume the same folder."""
    identity = json.dumps([activations_checksum, hook, training.to_dict()], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_sae(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    settings: SaeStageSettings,
    log: Log | None = None,
    model: FidelityModel | None = None,
) -> StageResult:
    """Train (or resume) the SAE of one dataset × layer on its current activations and publish it; with
    `model`, measure its loss recovered on the held-out cells too."""
    from sae_genomics_core.progress import Progress
    from sae_genomics_core.sae.checkpoint import save_checkpoint
    from sae_genomics_core.sae.train import StoreSource, resolve_schedule, train_sae
    from sae_genomics_core.viz.charts import chart_markdown, save_chart, training_curves

    log = log or default_log()
    activations = store.current_activations(dataset)
    manifest = activations.manifest
    if f"L{layer}.{settings.hook}" not in manifest["sites"]:
        raise InputError(
            f"{dataset} has no activations for layer {layer}, hook {settings.hook}; it has "
            f"{', '.join(manifest['sites'])}",
            fix="extract that layer and hook (model resource `layers`, `hooks`) or choose one of these",
        )
    training = replace(settings.training_for(manifest["random_weights"]), device=sae_device())
    work = store.new_sae_run(
        dataset, layer, settings.hook, training_key(manifest["checksum"], settings.hook, training)
    )
    source = StoreSource(activations, layer, settings.hook, training.holdout_fraction, training.seed)
    steps = Progress(f"{dataset} layer {layer}: SAE training", "steps", log)
    total_steps = resolve_schedule(training).total_steps
    outcome = train_sae(
        source,
        training,
        state_path=work / "train_state.pt",
        on_log=lambda row: steps.update(
            int(row["step"]),
            total_steps,
            f"EV {row['explained_variance']:.4f}, dead {row['dead_fraction']:.3f}",
        ),
    )
    for note in outcome.warnings:
        log.warning(note)
    checkpoint = work / "checkpoint"
    save_checkpoint(
        checkpoint, outcome, _provenance(dataset, layer, settings.hook, manifest, source, training)
    )
    (work / "train_state.pt").unlink(missing_ok=True)
    fidelity = None
    if model is not None:
        fidelity = _fidelity(model, (dataset, layer, settings), activations, source, checkpoint, log)
    chart = training_curves(outcome.log, f"{dataset} layer {layer} {settings.hook}")
    save_chart(chart, work / "training_curves")
    store.publish_checkpoint(dataset, layer, checkpoint)
    final = outcome.final
    return StageResult(
        summary={
            "uri": store.uri(checkpoint),
            "path": checkpoint,
            "hook": settings.hook,
            "d_in": source.d_in,
            "d_sae": source.d_in * training.expansion_factor,
            "k": training.k,
            **{name: final[name] for name in FINAL_METRICS},
            "training_warnings": Markdown("\n".join(f"- {note}" for note in outcome.warnings) or "none"),
            "tokens_seen": outcome.tokens_seen,
            "steps": outcome.steps,
            "gamma": outcome.gamma,
            "resumed_from_step": outcome.resumed_from_step,
            "random_weights": manifest["random_weights"],
            "training_curves": Markdown(chart_markdown(chart, "training curves")),
            **{name: (fidelity or {}).get(name) for name in FIDELITY_COLUMNS[:4] if fidelity},
        },
        checks=_quality_checks(final, settings) + ([_fidelity_check(fidelity, settings)] if fidelity else []),
    )


def _fidelity(
    model: FidelityModel,
    target: tuple[str, int, SaeStageSettings],
    activations: Any,
    source: Any,
    checkpoint: Path,
    log: Log,
) -> dict[str, Any]:
    """Loss recovered of the new checkpoint (written beside it), or why it could not be measured."""
    from sae_genomics_core.sae.fidelity import measure_loss_recovered

    dataset, layer, settings = target
    loaded = matching_model(model, dataset, activations.manifest)
    if isinstance(loaded, str):
        log.warning(f"loss recovered not measured: {loaded}")
        result: dict[str, Any] = {"not_measured": loaded}
    else:
        result = measure_loss_recovered(
            loaded, checkpoint, activations, source.held_out_cells, layer, settings
        )
        log.info(
            "loss recovered vs zero-ablation: expression decoder "
            f"{result['loss_recovered_expr_zero']}, MVC decoder {result['loss_recovered_mvc_zero']}"
        )
    (checkpoint / FIDELITY).write_text(json.dumps(result, indent=1))
    return result


def matching_model(model: FidelityModel, dataset: str, manifest: dict[str, Any]) -> Any:
    """The model the activations came from, or why it cannot be had (then nothing is measured)."""
    from sae_genomics_core.annotations.store import read_table

    genes = read_table(model.warehouse, "genes")
    if genes is None or genes.filter(pl.col("dataset") == dataset).height == 0:
        return f"the warehouse has no `genes` rows of {dataset} (materialise `datasets` first)"
    genes = genes.filter(pl.col("dataset") == dataset).sort("gene_index")
    loaded = model.choice.load(genes, model.choice.resolved_device(), model.seed)
    if loaded.model_id != manifest["model_id"]:
        return (
            f"the activations came from {manifest['model_id']} but the model resource is {loaded.model_id}; "
            "set it back or extract again"
        )
    loaded.model.eval()
    return loaded


def _fidelity_check(fidelity: dict[str, Any], settings: SaeStageSettings) -> CheckOutcome:
    measured = [fidelity.get(f"loss_recovered_{decoder}_zero") for decoder in ("expr", "mvc")]
    measured = [value for value in measured if value is not None]
    return CheckOutcome(
        LOSS_RECOVERED_CHECK,
        passed=bool(measured) and min(measured) >= settings.loss_recovered_floor,
        description=fidelity.get("not_measured", ""),
        metadata={
            **{name: fidelity.get(name) for name in FIDELITY_COLUMNS[:4]},
            "floor": settings.loss_recovered_floor,
        },
    )


FINAL_METRICS = (
    *("explained_variance", "mse", "l0", "dead_fraction", "dead_fraction_heldout", "dead_fraction_window"),
    *("dense_fraction", "dead_window_tokens", "warmup_steps", "auxk_steps"),
)


def _provenance(
    dataset: str, layer: int, hook: str, manifest: dict[str, Any], source: Any, training: SaeTrainingConfig
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "layer": layer,
        "hook": hook,
        "model_id": manifest["model_id"],
        "revision": manifest["revision"],
        "random_weights": manifest["random_weights"],
        "dataset_checksum": manifest["dataset_checksum"],
        "activations_checksum": manifest["checksum"],
        "seed": training.seed,
        "held_out_cells": int(source.held_out_cells.size),
        "config": training.to_dict(),
    }


def _quality_checks(final: dict[str, Any], settings: SaeStageSettings) -> list[CheckOutcome]:
    return [
        CheckOutcome(
            EV_CHECK,
            passed=final["explained_variance"] >= settings.explained_variance_floor,
            metadata={
                "explained_variance": final["explained_variance"],
                "floor": settings.explained_variance_floor,
            },
        ),
        CheckOutcome(
            DEAD_CHECK,
            passed=final["dead_fraction"] <= settings.dead_fraction_ceiling,
            metadata={
                "dead_fraction": final["dead_fraction"],
                "dead_fraction_heldout": final["dead_fraction_heldout"],
                "ceiling": settings.dead_fraction_ceiling,
                "auxk_steps": final["auxk_steps"],
            },
        ),
    ]


# metrics older checkpoints lack: NULL in the table, not a failure
OPTIONAL_METRICS = {
    "dead_fraction_heldout": pl.Float64,
    "dead_window_tokens": pl.Int64,
    "warmup_steps": pl.Int64,
    "auxk_steps": pl.Int64,
}


def run_sae_tables(dataset: str, layer: int, store: ArtefactStore) -> StageResult:
    """The current checkpoint's row in `sae_checkpoints` and its training log in `sae_training_log`."""
    from sae_genomics_core.sae.checkpoint import METRICS, PROVENANCE

    checkpoint = store.require_checkpoint(dataset, layer)
    provenance = json.loads((checkpoint / PROVENANCE).read_text())
    metrics = json.loads((checkpoint / METRICS).read_text())
    final = metrics["final"]
    row = {
        "dataset": dataset,
        "layer": layer,
        **{name: provenance[name] for name in ("hook", "d_in", "d_sae", "k")},
        "train_tokens": provenance["tokens_seen"],
        "seed": provenance["seed"],
        **{
            name: final[name]
            for name in ("explained_variance", "mse", "l0", "dead_fraction", "dense_fraction")
        },
        "uri": store.uri(checkpoint),
        "model_id": provenance["model_id"],
        "random_weights": provenance["random_weights"],
        "gamma": provenance["gamma"],
        "created_at": datetime.now(UTC),
        **{name: final.get(name) for name in OPTIONAL_METRICS},
        **_stored_fidelity(checkpoint),
        "training_warnings": metrics.get("warnings", []),
    }
    summary = pl.DataFrame(
        [row],
        schema_overrides={
            **OPTIONAL_METRICS,
            **dict.fromkeys(FIDELITY_COLUMNS, pl.Float64),
            "training_warnings": pl.List(pl.String),
        },
    )
    log = pl.DataFrame(metrics["log"]).select(
        pl.lit(dataset).alias("dataset"),
        pl.lit(layer, dtype=pl.Int64).alias("layer"),
        pl.col("step").cast(pl.Int64),
        pl.col("tokens_seen").cast(pl.Int64),
        *("mse", "explained_variance", "l0", "dead_fraction", "dense_fraction", "aux_loss", "lr"),
    )
    return StageResult(
        tables={"sae_checkpoints": summary, "sae_training_log": log},
        table_summaries={
            "sae_checkpoints": {"explained_variance": final["explained_variance"]},
            "sae_training_log": {"rows": log.height},
        },
    )


def _stored_fidelity(checkpoint: Path) -> dict[str, float | None]:
    """The checkpoint's loss-recovered columns; NULL where they were not measured (or it predates them)."""
    stored = checkpoint / FIDELITY
    fidelity = json.loads(stored.read_text()) if stored.exists() else {}
    return {name: fidelity.get(name) for name in FIDELITY_COLUMNS}
