"""SAE training [dataset × layer]: a TopK sparse autoencoder per layer on the dataset's activations.

Logic: sae_genomics_core.sae.train.train_sae (sae-lens TopKTrainingSAE) and sae.checkpoint.
"""

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.sae.settings import RANDOM_WEIGHTS_K, REAL_MODEL_K, SaeTrainingConfig, default_k
from sae_genomics_dagster.assets.activations import CURRENT, activations
from sae_genomics_dagster.assets.common import BY_DATASET_LAYER, OWNERS, sae_device, table_out
from sae_genomics_dagster.resources import HomeResource

GROUP = "sae"
TRAINING = SaeTrainingConfig()  # the core defaults
EV_CHECK = "explained_variance_floor"
DEAD_CHECK = "dead_fraction_ceiling"


class SaeConfig(dg.Config):
    """Run config of `sae_checkpoint`; every default is the core one (SaeTrainingConfig)."""

    hook: str = Field(default="resid_post", description="hook point to train on (must have been extracted)")
    expansion_factor: int = Field(
        default=TRAINING.expansion_factor, description="d_sae = expansion_factor × d_in"
    )
    k: int | None = Field(
        default=None,
        description=f"active latents per token; None: {REAL_MODEL_K} for real models, {RANDOM_WEIGHTS_K} for "
        "random-weight ones",
    )
    training_tokens: int = Field(
        default=TRAINING.training_tokens,
        description="tokens to train on (epochs repeat when the data is smaller)",
    )
    batch_size: int = Field(default=TRAINING.batch_size)
    lr: float | None = Field(default=TRAINING.lr, description="None: 2e-4 / sqrt(d_sae / 2^14)")
    seed: int = Field(default=TRAINING.seed)
    dead_window_tokens: int | None = Field(
        default=TRAINING.dead_window_tokens,
        description="a latent silent this many training tokens is dead (AuxK trains it); None: scaled to the run "
        "(SaeTrainingConfig: dead_window_fraction of training_tokens, at most dead_window_max_tokens); a value "
        "that does not fit in the run is replaced and reported",
    )
    explained_variance_floor: float = Field(
        default=0.7, description="asset check: held-out explained variance at least this"
    )
    dead_fraction_ceiling: float = Field(
        default=0.1,
        description="asset check: at most this fraction of latents never fire in a full pass over every token",
    )


def _sae_dir(home: HomeResource, dataset: str, layer: int) -> Path:
    return home.home.artefacts / "sae" / dataset / f"L{layer}"


def build_sae_assets(partitions: dg.MultiPartitionsDefinition) -> list:
    @dg.asset(
        partitions_def=partitions,
        # dataset × layer depends on the dataset's activations (Dagster infers the dimension mapping)
        deps=[activations],
        group_name=GROUP,
        kinds={"torch", "safetensors"},
        owners=OWNERS,
        pool="gpu",
        check_specs=[
            dg.AssetCheckSpec(
                EV_CHECK,
                asset="sae_checkpoint",
                description="held-out explained variance ≥ the configured floor",
            ),
            dg.AssetCheckSpec(
                DEAD_CHECK,
                asset="sae_checkpoint",
                description="fraction of latents that never fire in a full pass over every token (held-out and "
                "training cells) ≤ the configured ceiling",
            ),
        ],
        description=(
            "A TopK sparse autoencoder (sae-lens) for one dataset × layer, trained on that layer's activations "
            "(hook from run config) with AuxK dead-latent revival, mean-centred and scaled inputs and 10% of cells "
            "held out for metrics. Checkpoint in sae-lens format plus provenance under "
            "`$SAE_GENOMICS_HOME/artefacts/sae/<dataset>/L<layer>/`."
        ),
    )
    def sae_checkpoint(
        context: dg.AssetExecutionContext, config: SaeConfig, home: HomeResource
    ) -> dg.MaterializeResult:
        # torch, sae-lens and altair load here, not when Dagster imports the definitions
        from sae_genomics_core.activations.store import ActivationStore
        from sae_genomics_core.sae.checkpoint import save_checkpoint
        from sae_genomics_core.sae.train import StoreSource, train_sae
        from sae_genomics_core.viz.charts import chart_markdown, save_chart, training_curves

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        pointer = home.home.artefacts / "activations" / dataset / CURRENT
        if not pointer.exists():
            raise dg.Failure(
                description=f"no activations for {dataset}; materialise `activations` for it first"
            )
        store = ActivationStore(Path(json.loads(pointer.read_text())["path"]))
        manifest = store.manifest
        if f"L{layer}.{config.hook}" not in manifest["sites"]:
            raise dg.Failure(
                description=f"{dataset} has no activations for layer {layer}, hook {config.hook}; it has "
                f"{', '.join(manifest['sites'])}. Extract that layer and hook (model resource `layers`, `hooks`) "
                "or choose one of these."
            )
        k = config.k if config.k is not None else default_k(manifest["random_weights"])
        training = SaeTrainingConfig(
            expansion_factor=config.expansion_factor,
            k=k,
            training_tokens=config.training_tokens,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            dead_window_tokens=config.dead_window_tokens,
            device=sae_device(),
        )
        key = hashlib.sha256(
            json.dumps([manifest["checksum"], config.hook, training.to_dict()], sort_keys=True).encode()
        ).hexdigest()[:16]
        work = _sae_dir(home, dataset, layer) / f"{config.hook}-{key}"
        work.mkdir(parents=True, exist_ok=True)
        source = StoreSource(store, layer, config.hook, training.holdout_fraction, training.seed)
        outcome = train_sae(
            source,
            training,
            state_path=work / "train_state.pt",
            on_log=lambda row: context.log.info(
                f"step {row['step']}: EV {row['explained_variance']:.4f}, dead {row['dead_fraction']:.3f}"
            ),
        )
        provenance = {
            "dataset": dataset,
            "layer": layer,
            "hook": config.hook,
            "model_id": manifest["model_id"],
            "revision": manifest["revision"],
            "random_weights": manifest["random_weights"],
            "dataset_checksum": manifest["dataset_checksum"],
            "activations_checksum": manifest["checksum"],
            "seed": training.seed,
            "held_out_cells": int(source.held_out_cells.size),
            "config": training.to_dict(),
        }
        checkpoint = work / "checkpoint"
        for note in outcome.warnings:
            context.log.warning(note)
        save_checkpoint(checkpoint, outcome, provenance)
        (work / "train_state.pt").unlink(missing_ok=True)
        chart = training_curves(outcome.log, f"{dataset} layer {layer} {config.hook}")
        save_chart(chart, work / "training_curves")
        tmp = _sae_dir(home, dataset, layer) / (CURRENT + ".tmp")
        tmp.write_text(json.dumps({"path": str(checkpoint)}))
        os.replace(tmp, _sae_dir(home, dataset, layer) / CURRENT)
        final = outcome.final
        return dg.MaterializeResult(
            metadata={
                "dagster/uri": checkpoint.as_uri(),
                "path": dg.MetadataValue.path(str(checkpoint)),
                "hook": config.hook,
                "d_in": source.d_in,
                "d_sae": source.d_in * training.expansion_factor,
                "k": k,
                "explained_variance": final["explained_variance"],
                "mse": final["mse"],
                "l0": final["l0"],
                "dead_fraction": final["dead_fraction"],
                "dead_fraction_heldout": final["dead_fraction_heldout"],
                "dead_fraction_window": final["dead_fraction_window"],
                "dense_fraction": final["dense_fraction"],
                "dead_window_tokens": final["dead_window_tokens"],
                "warmup_steps": final["warmup_steps"],
                "auxk_steps": final["auxk_steps"],
                "training_warnings": dg.MetadataValue.md(
                    "\n".join(f"- {note}" for note in outcome.warnings) or "none"
                ),
                "tokens_seen": outcome.tokens_seen,
                "steps": outcome.steps,
                "gamma": outcome.gamma,
                "resumed_from_step": outcome.resumed_from_step,
                "random_weights": manifest["random_weights"],
                "training_curves": dg.MetadataValue.md(chart_markdown(chart, "training curves")),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=EV_CHECK,
                    passed=final["explained_variance"] >= config.explained_variance_floor,
                    metadata={
                        "explained_variance": final["explained_variance"],
                        "floor": config.explained_variance_floor,
                    },
                ),
                dg.AssetCheckResult(
                    check_name=DEAD_CHECK,
                    passed=final["dead_fraction"] <= config.dead_fraction_ceiling,
                    metadata={
                        "dead_fraction": final["dead_fraction"],
                        "dead_fraction_heldout": final["dead_fraction_heldout"],
                        "ceiling": config.dead_fraction_ceiling,
                        "auxk_steps": final["auxk_steps"],
                    },
                ),
            ],
        )

    def _table_out(description: str) -> dg.AssetOut:
        return table_out(description, GROUP, BY_DATASET_LAYER)

    @dg.multi_asset(
        outs={
            "sae_checkpoints": _table_out(
                "One row per dataset × layer: the SAE's shape, training and final held-out metrics, uri. Table "
                "`sae_checkpoints`; dead_fraction: latents that never fire in a full pass over every token, "
                "dead_fraction_heldout: over the held-out cells' tokens."
            ),
            "sae_training_log": _table_out(
                "Metrics every N steps of training (held-out cells). Table `sae_training_log`; its dead_fraction is "
                "the windowed estimate (latents silent for the last dead window of the training stream, 0 until "
                "one window has passed), not the full-pass value in `sae_checkpoints`."
            ),
        },
        deps=[sae_checkpoint],
        partitions_def=partitions,
        pool="duckdb",
    )
    def sae_tables(context: dg.AssetExecutionContext, home: HomeResource):
        from sae_genomics_core.sae.checkpoint import METRICS, PROVENANCE

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        pointer = _sae_dir(home, dataset, layer) / CURRENT
        if not pointer.exists():
            raise dg.Failure(
                description=f"no SAE for {dataset} layer {layer}; materialise `sae_checkpoint` first"
            )
        checkpoint = Path(json.loads(pointer.read_text())["path"])
        provenance = json.loads((checkpoint / PROVENANCE).read_text())
        metrics = json.loads((checkpoint / METRICS).read_text())
        final = metrics["final"]
        summary = pl.DataFrame(
            [
                {
                    "dataset": dataset,
                    "layer": layer,
                    "hook": provenance["hook"],
                    "d_in": provenance["d_in"],
                    "d_sae": provenance["d_sae"],
                    "k": provenance["k"],
                    "train_tokens": provenance["tokens_seen"],
                    "seed": provenance["seed"],
                    "explained_variance": final["explained_variance"],
                    "mse": final["mse"],
                    "l0": final["l0"],
                    "dead_fraction": final["dead_fraction"],
                    "dense_fraction": final["dense_fraction"],
                    "uri": checkpoint.as_uri(),
                    "model_id": provenance["model_id"],
                    "random_weights": provenance["random_weights"],
                    "gamma": provenance["gamma"],
                    "created_at": datetime.now(UTC),
                    # older checkpoints lack these: NULL, not a failure
                    **{
                        name: final.get(name)
                        for name in (
                            "dead_fraction_heldout",
                            "dead_window_tokens",
                            "warmup_steps",
                            "auxk_steps",
                        )
                    },
                    "training_warnings": metrics.get("warnings", []),
                }
            ],
            schema_overrides={
                "dead_fraction_heldout": pl.Float64,
                "dead_window_tokens": pl.Int64,
                "warmup_steps": pl.Int64,
                "auxk_steps": pl.Int64,
                "training_warnings": pl.List(pl.String),
            },
        )
        log = pl.DataFrame(metrics["log"]).select(
            pl.lit(dataset).alias("dataset"),
            pl.lit(layer, dtype=pl.Int64).alias("layer"),
            pl.col("step").cast(pl.Int64),
            pl.col("tokens_seen").cast(pl.Int64),
            "mse",
            "explained_variance",
            "l0",
            "dead_fraction",
            "dense_fraction",
            "aux_loss",
            "lr",
        )
        yield dg.Output(
            summary, "sae_checkpoints", metadata={"explained_variance": final["explained_variance"]}
        )
        yield dg.Output(log, "sae_training_log", metadata={"rows": log.height})

    return [sae_checkpoint, sae_tables]
