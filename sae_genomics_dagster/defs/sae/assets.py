"""SAE training [dataset × layer]: a TopK sparse autoencoder per layer on the dataset's activations.

Runners: sae_genomics_core.pipeline.sae.run_sae and run_sae_tables.
"""

from collections.abc import Iterator
from dataclasses import replace

import dagster as dg
from pydantic import Field

from sae_genomics_core.pipeline.sae import (
    DEAD_CHECK,
    EV_CHECK,
    LOSS_RECOVERED_CHECK,
    FidelityModel,
    run_sae,
    run_sae_tables,
)
from sae_genomics_core.sae.settings import RANDOM_WEIGHTS_K, REAL_MODEL_K, SaeStageSettings, SaeTrainingConfig
from sae_genomics_dagster.common import (
    BY_DATASET_LAYER,
    GPU_POOL,
    GPU_TAGS,
    OWNERS,
    check_result,
    dataset_layer,
    metadata,
    table_out,
    user_errors,
)
from sae_genomics_dagster.partitions import dataset_layer as partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource, ModelResource

GROUP = "sae"
STAGE = SaeStageSettings()  # the core defaults
TRAINING = STAGE.training


class SaeConfig(dg.Config):
    """Run config of `sae_checkpoint`; every default is the core one (SaeStageSettings, SaeTrainingConfig)."""

    hook: str = Field(default=STAGE.hook, description="hook point to train on (must have been extracted)")
    expansion_factor: int = Field(
        default=TRAINING.expansion_factor, description="d_sae = expansion_factor × d_in"
    )
    k: int | None = Field(
        default=STAGE.k,
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
        default=STAGE.explained_variance_floor,
        description="asset check: held-out explained variance at least this",
    )
    dead_fraction_ceiling: float = Field(
        default=STAGE.dead_fraction_ceiling,
        description="asset check: at most this fraction of latents never fire in a full pass over every token",
    )
    loss_recovered_floor: float = Field(
        default=STAGE.loss_recovered_floor,
        description="asset check: loss recovered against zero-ablation of the layer, for both decoders, at least "
        "this",
    )
    fidelity_cells: int = Field(
        default=STAGE.fidelity.cells,
        description="held-out cells on which loss recovered is measured, at most",
    )

    def settings(self) -> SaeStageSettings:
        training = SaeTrainingConfig(
            expansion_factor=self.expansion_factor,
            training_tokens=self.training_tokens,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            dead_window_tokens=self.dead_window_tokens,
        )
        return SaeStageSettings(
            hook=self.hook,
            k=self.k,
            training=training,
            explained_variance_floor=self.explained_variance_floor,
            dead_fraction_ceiling=self.dead_fraction_ceiling,
            loss_recovered_floor=self.loss_recovered_floor,
            fidelity=replace(STAGE.fidelity, cells=self.fidelity_cells),
        )


@dg.asset(
    partitions_def=partitions,
    # dataset × layer depends on the dataset's activations (Dagster infers the dimension mapping)
    deps=["activations"],
    group_name=GROUP,
    kinds={"torch", "safetensors"},
    owners=OWNERS,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            EV_CHECK, asset="sae_checkpoint", description="held-out explained variance ≥ the configured floor"
        ),
        dg.AssetCheckSpec(
            DEAD_CHECK,
            asset="sae_checkpoint",
            description="fraction of latents that never fire in a full pass over every token (held-out and "
            "training cells) ≤ the configured ceiling",
        ),
        dg.AssetCheckSpec(
            LOSS_RECOVERED_CHECK,
            asset="sae_checkpoint",
            description="tahoe-x1's masked-expression loss with the SAE spliced in: (L_zero-ablation − L_SAE) / "
            "(L_zero-ablation − L_clean) ≥ the configured floor, for the expression and the MVC decoder",
        ),
    ],
    description=(
        "A TopK sparse autoencoder (sae-lens) for one dataset × layer, trained on that layer's activations "
        "(hook from run config) with AuxK dead-latent revival, mean-centred and scaled inputs and 10% of cells "
        "held out for metrics, then its loss recovered: tahoe-x1's masked-expression loss on held-out cells with the "
        "SAE's reconstruction spliced into the layer (`fidelity.json`). Checkpoint in sae-lens format plus provenance "
        "under "
        "`$SAE_GENOMICS_HOME/artefacts/sae/{dataset}/L{layer}/`."
    ),
)
def sae_checkpoint(
    context: dg.AssetExecutionContext,
    config: SaeConfig,
    artefacts: ArtefactsResource,
    home: HomeResource,
    model: ModelResource,
) -> dg.MaterializeResult:
    dataset, layer = dataset_layer(context)
    source = FidelityModel(model.choice(), home.home.warehouse, model.settings().seed)
    with user_errors():
        result = run_sae(dataset, layer, artefacts.store, config.settings(), context.log, source)
    return dg.MaterializeResult(
        metadata=metadata(result.summary), check_results=[check_result(c) for c in result.checks]
    )


@dg.multi_asset(
    outs={
        "sae_checkpoints": table_out(
            "One row per dataset × layer: the SAE's shape, training and final held-out metrics, uri. Table "
            "`sae_checkpoints`; dead_fraction: latents that never fire in a full pass over every token, "
            "dead_fraction_heldout: over the held-out cells' tokens.",
            GROUP,
            BY_DATASET_LAYER,
        ),
        "sae_training_log": table_out(
            "Metrics every N steps of training (held-out cells). Table `sae_training_log`; its dead_fraction is "
            "the windowed estimate (latents silent for the last dead window of the training stream, 0 until "
            "one window has passed), not the full-pass value in `sae_checkpoints`.",
            GROUP,
            BY_DATASET_LAYER,
        ),
    },
    deps=[sae_checkpoint],
    partitions_def=partitions,
    pool="duckdb",
)
def sae_tables(context: dg.AssetExecutionContext, artefacts: ArtefactsResource) -> Iterator[dg.Output]:
    dataset, layer = dataset_layer(context)
    with user_errors():
        result = run_sae_tables(dataset, layer, artefacts.store)
    for name, table in result.tables.items():
        yield dg.Output(table, name, metadata=metadata(result.table_summaries[name]))
