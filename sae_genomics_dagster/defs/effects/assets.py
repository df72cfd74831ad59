"""Feature effects [dataset × layer]: what ablating or steering each SAE feature does to tahoe-x1's
predicted expression and cell embedding.

Runner: sae_genomics_core.pipeline.effects.run_feature_effects.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.pipeline.effects import run_feature_effects
from sae_genomics_core.pipeline.sae import FidelityModel
from sae_genomics_core.sae.settings import EffectSettings
from sae_genomics_dagster.common import (
    GPU_POOL,
    GPU_TAGS,
    dataset_layer,
    table_results,
    user_errors,
    written_table,
)
from sae_genomics_dagster.partitions import dataset_layer as partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource, ModelResource

GROUP = "effects"
EFFECTS = EffectSettings()  # the core defaults


class EffectConfig(dg.Config):
    """Run config of the feature effects; every default is the core one (EffectSettings)."""

    strengths: list[float] = Field(
        default=list(EFFECTS.strengths),
        description="steering strengths, in units of each feature's mean activation where it fires (negative "
        "suppresses)",
    )
    cells: int = Field(
        default=EFFECTS.cells,
        description="held-out cells where a feature is active, and as many where silent",
    )
    evaluated_cells: int = Field(
        default=EFFECTS.evaluated_cells, description="held-out cells encoded to choose them"
    )
    max_features: int | None = Field(
        default=EFFECTS.max_features,
        description="features evaluated, at most; None: all on a GPU, max_features_cpu on CPU",
    )
    max_features_cpu: int = Field(
        default=EFFECTS.max_features_cpu, description="the CPU default of max_features"
    )
    top_genes: int = Field(
        default=EFFECTS.top_genes, description="genes kept per feature × intervention, up and down"
    )
    batch_rows: int = Field(default=EFFECTS.batch_rows, description="cell copies per forward pass")

    def settings(self) -> EffectSettings:
        return EffectSettings(
            strengths=tuple(self.strengths),
            cells=self.cells,
            evaluated_cells=self.evaluated_cells,
            max_features=self.max_features,
            max_features_cpu=self.max_features_cpu,
            top_genes=self.top_genes,
            batch_rows=self.batch_rows,
        )


def _spec(name: str, description: str) -> dg.AssetSpec:
    return written_table(
        name, description, GROUP, {"torch", "duckdb"}, ["sae_checkpoint", "activations", "cells", "genes"]
    )


@dg.multi_asset(
    specs=[
        _spec(
            "feature_effects",
            "Per feature × intervention (ablate where it fires; steer by ± its mean activation along its decoder "
            "direction, on cells where it fires and where it is silent): the genes whose predicted expression "
            "(MVC decoder) moves most, up and down, with the mean change, its s.d. over cells and the share of "
            "cells that agree. Table `feature_effects`.",
        ),
        _spec(
            "feature_effect_cell_types",
            "Per feature × intervention × cell type: the mean change of the cells' cosine similarity to the "
            "type's centroid (clean cell embeddings). Table `feature_effect_cell_types`.",
        ),
    ],
    can_subset=False,  # both tables are written together, in one transaction
    ins={"cells": dg.AssetIn(), "genes": dg.AssetIn()},
    partitions_def=partitions,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def feature_effects(
    context: dg.AssetExecutionContext,
    config: EffectConfig,
    home: HomeResource,
    artefacts: ArtefactsResource,
    model: ModelResource,
    cells: pl.DataFrame,
    genes: pl.DataFrame,
) -> Iterator[dg.MaterializeResult]:
    dataset, layer = dataset_layer(context)
    source = FidelityModel(model.choice(), home.home.warehouse, model.settings().seed)
    with user_errors():
        result = run_feature_effects(
            dataset,
            layer,
            artefacts.store,
            home.home.warehouse,
            cells,
            genes,
            source,
            config.settings(),
            context.log,
        )
    yield from table_results(result)
