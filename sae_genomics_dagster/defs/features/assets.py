"""Feature analysis [dataset × layer]: SAE features tied to genes, cells and cell types, as DuckDB tables.

Runner: sae_genomics_core.pipeline.features.run_features.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.config import sae_device
from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.pipeline.features import run_features
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

GROUP = "features"
ASSOCIATION = AssociationSettings()  # the core defaults


class FeatureConfig(dg.Config):
    """Run config of the feature tables; every default is the core one (AssociationSettings)."""

    top_genes: int = Field(
        default=ASSOCIATION.top_genes, description="genes kept per feature in feature_genes"
    )
    top_cells: int = Field(
        default=ASSOCIATION.top_cells, description="cells kept per feature in feature_cells"
    )
    cells_with_genes: int = Field(
        default=ASSOCIATION.cells_with_genes,
        description="top cells per feature whose firing genes feature_cell_genes keeps",
    )
    genes_per_cell: int = Field(
        default=ASSOCIATION.genes_per_cell, description="firing genes kept per such cell, strongest first"
    )
    min_gene_tokens: int = Field(
        default=ASSOCIATION.min_gene_tokens, description="a gene needs this many firing tokens to be ranked"
    )
    batch_tokens: int = Field(default=ASSOCIATION.batch_tokens, description="tokens encoded at once")
    fdr: float = Field(
        default=ASSOCIATION.fdr, description="BH level of a selected claim and of its held-out replication"
    )
    holdout_seed: int = Field(
        default=ASSOCIATION.holdout_seed, description="seed of the selection / evaluation halves of the cells"
    )

    def settings(self) -> AssociationSettings:
        return AssociationSettings(
            top_genes=self.top_genes,
            top_cells=self.top_cells,
            cells_with_genes=self.cells_with_genes,
            genes_per_cell=self.genes_per_cell,
            min_gene_tokens=self.min_gene_tokens,
            batch_tokens=self.batch_tokens,
            fdr=self.fdr,
            holdout_seed=self.holdout_seed,
            device=sae_device(),
        )


def _spec(name: str, description: str) -> dg.AssetSpec:
    return written_table(
        name, description, GROUP, {"duckdb", "polars"}, ["sae_checkpoint", "activations", "cells", "genes"]
    )


@dg.multi_asset(
    specs=[
        _spec(
            "feature_stats",
            "Per feature: fire count, frequency, mean and max activation, cells active. Table `feature_stats`.",
        ),
        _spec(
            "feature_genes",
            "Per feature: top genes by specificity (lift shrunk by empirical Bayes) with score = Σ activation × "
            "expression bin. Held out: `selected` (also a top gene on the selection half of cells), "
            "`replicated` (selected and above the feature's mean on the evaluation half, BH). Table `feature_genes`.",
        ),
        _spec("feature_cells", "Per feature: top cells by max activation. Table `feature_cells`."),
        _spec(
            "feature_cell_genes",
            "Per feature × top cell: the genes where the feature fires in that cell, strongest first, with "
            "their expression bins. Table `feature_cell_genes`.",
        ),
        _spec(
            "feature_cell_map",
            "Per feature: its (max) activation in each cell drawn on the dataset's UMAP map (`cells.umap_1`), "
            "where it fires; the feature pages colour the map by it. Table `feature_cell_map`.",
        ),
        _spec(
            "feature_cell_types",
            "Per feature × cell type: a cell's mean activation over its tokens, type vs rest by Welch's t "
            "(cells) or a paired t over samples (pseudobulk), log2 FC with its lower bound, BH q. Held out: "
            "`selected` on one half of the cells (or samples), `replicated` when the other half agrees (BH). "
            "Table `feature_cell_types`.",
        ),
        _spec(
            "feature_histograms",
            "Per feature: its active cells binned by (max) activation, 20 equal bins from 0 to at most twice its maximum; "
            "the feature pages' activation histograms. Table `feature_histograms`.",
        ),
    ],
    can_subset=False,  # the seven tables are written together, in one transaction
    ins={"cells": dg.AssetIn(), "genes": dg.AssetIn()},
    partitions_def=partitions,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
)
def feature_tables(
    context: dg.AssetExecutionContext,
    config: FeatureConfig,
    home: HomeResource,
    artefacts: ArtefactsResource,
    cells: pl.DataFrame,
    genes: pl.DataFrame,
) -> Iterator[dg.MaterializeResult]:
    dataset, layer = dataset_layer(context)
    with user_errors():
        result = run_features(
            dataset, layer, artefacts.store, home.home.warehouse, cells, genes, config.settings(), context.log
        )
    yield from table_results(result)
