"""Seed stability [dataset × layer]: the SAE trained again with other seeds, its features matched by
decoder cosine against a null of random directions.

Runner: sae_genomics_core.pipeline.stability.run_sae_stability.
"""

from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from sae_genomics_core.pipeline.stability import run_sae_stability
from sae_genomics_core.sae.settings import RANDOM_WEIGHTS_SEEDS, REAL_MODEL_SEEDS, SaeStageSettings
from sae_genomics_dagster.common import (
    GPU_POOL,
    GPU_TAGS,
    dataset_layer,
    table_results,
    user_errors,
    written_table,
)
from sae_genomics_dagster.partitions import dataset_layer as partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource

GROUP = "sae"
STAGE = SaeStageSettings()  # the core defaults


class StabilityConfig(dg.Config):
    """Run config of the seed-stability check; the default is the core one (SaeStageSettings)."""

    stability_seeds: int | None = Field(
        default=STAGE.stability_seeds,
        description=f"SAEs trained per layer, the checkpoint's seed first; None: {REAL_MODEL_SEEDS} for real "
        f"models, {RANDOM_WEIGHTS_SEEDS} for random-weight ones",
    )


def _spec(name: str, description: str) -> dg.AssetSpec:
    return written_table(name, description, GROUP, {"torch", "duckdb"}, ["sae_checkpoint"])


@dg.multi_asset(
    specs=[
        _spec(
            "feature_stability",
            "Per feature × other seed: the cosine of its best-matching decoder direction in the SAE trained with "
            "that seed, and of its partner in the one-to-one matching; `stable` when the partner is at least 0.7 "
            "in every other seed. Table `feature_stability`.",
        ),
        _spec(
            "sae_stability",
            "Per SAE: the share of features matched above 0.9 and 0.7 across seeds against random unit directions "
            "of the same shape (the null), the share stable, and explained variance, L0, MSE and dead fraction as "
            "mean ± s.d. over the seeds. Table `sae_stability`.",
        ),
    ],
    can_subset=False,  # both tables are written together, in one transaction
    partitions_def=partitions,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def seed_stability(
    context: dg.AssetExecutionContext,
    config: StabilityConfig,
    home: HomeResource,
    artefacts: ArtefactsResource,
) -> Iterator[dg.MaterializeResult]:
    dataset, layer = dataset_layer(context)
    settings = SaeStageSettings(stability_seeds=config.stability_seeds)
    with user_errors():
        result = run_sae_stability(
            dataset, layer, artefacts.store, home.home.warehouse, settings, context.log
        )
    yield from table_results(result)
