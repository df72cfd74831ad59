"""Feature analysis [dataset × layer]: SAE features tied to genes, cells and cell types, as DuckDB tables.

Logic: sae_genomics_core.features.associate.associate.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import replace_partition
from sae_genomics_dagster.assets.activations import CURRENT
from sae_genomics_dagster.assets.common import (
    BY_DATASET_LAYER,
    OWNERS,
    chart_metadata,
    charts_dir,
    sae_device,
    user_errors,
)
from sae_genomics_dagster.io_manager import table_metadata
from sae_genomics_dagster.resources import HomeResource

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
    min_gene_tokens: int = Field(
        default=ASSOCIATION.min_gene_tokens, description="a gene needs this many firing tokens to be ranked"
    )
    batch_tokens: int = Field(default=ASSOCIATION.batch_tokens, description="tokens encoded at once")

    def settings(self, device: str) -> AssociationSettings:
        return AssociationSettings(
            top_genes=self.top_genes,
            top_cells=self.top_cells,
            min_gene_tokens=self.min_gene_tokens,
            batch_tokens=self.batch_tokens,
            device=device,
        )


def open_partition(home: HomeResource, dataset: str, layer: int) -> tuple[Any, str, Any]:
    """(activation store, hook, loaded SAE) of one dataset × layer; a mismatched checkpoint is refused.
    The loaded SAE's provenance carries `checkpoint_id`, the id its derived rows record."""
    from sae_genomics_core.activations.store import ActivationStore
    from sae_genomics_core.sae.checkpoint import checkpoint_id, load_checkpoint

    sae_pointer = home.home.artefacts / "sae" / dataset / f"L{layer}" / CURRENT
    acts_pointer = home.home.artefacts / "activations" / dataset / CURRENT
    if not sae_pointer.exists() or not acts_pointer.exists():
        raise dg.Failure(
            description=f"{dataset} layer {layer} needs its activations and sae_checkpoint first"
        )
    store = ActivationStore(Path(json.loads(acts_pointer.read_text())["path"]))
    checkpoint = Path(json.loads(sae_pointer.read_text())["path"])
    hook = json.loads((checkpoint / "provenance.json").read_text())["hook"]
    manifest = store.manifest
    with user_errors():
        loaded = load_checkpoint(
            checkpoint,
            expect={
                "model_id": manifest["model_id"],
                "layer": layer,
                "hook": hook,
                "d_in": manifest["widths"][f"L{layer}.{hook}"],
                # an SAE trained on other (older) activations of this dataset is refused too
                "activations_checksum": manifest["checksum"],
            },
            device=sae_device(),
        )
    loaded.provenance["checkpoint_id"] = checkpoint_id(checkpoint)
    return store, hook, loaded


def current_checkpoint_id(home: HomeResource, dataset: str, layer: int) -> str | None:
    """The id of the dataset × layer's current SAE checkpoint (None before the first one)."""
    from sae_genomics_core.sae.checkpoint import checkpoint_id

    pointer = home.home.artefacts / "sae" / dataset / f"L{layer}" / CURRENT
    return checkpoint_id(Path(json.loads(pointer.read_text())["path"])) if pointer.exists() else None


def refuse_stale(rows: pl.DataFrame, home: HomeResource, dataset: str, layer: int, table: str) -> None:
    """Fail the asset when `rows` were not all derived from the current SAE checkpoint."""
    from sae_genomics_core.sae.checkpoint import refuse_rows_of_another_checkpoint

    with user_errors(f"{dataset} layer {layer}"):
        refuse_rows_of_another_checkpoint(rows, current_checkpoint_id(home, dataset, layer) or "", table)


def _spec(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        name,
        description=description,
        group_name=GROUP,
        kinds={"duckdb", "polars"},
        owners=OWNERS,
        metadata=BY_DATASET_LAYER,
        deps=["sae_checkpoint", "activations", "cells", "genes"],
    )


def build_feature_assets(partitions: dg.MultiPartitionsDefinition) -> list:
    @dg.multi_asset(
        specs=[
            _spec(
                "feature_stats",
                "Per feature: fire count, frequency, mean and max activation, cells active. Table `feature_stats`.",
            ),
            _spec(
                "feature_genes",
                "Per feature: top genes by specificity (lift shrunk by empirical Bayes) with score = Σ activation × "
                "expression bin. Table `feature_genes`.",
            ),
            _spec("feature_cells", "Per feature: top cells by max activation. Table `feature_cells`."),
            _spec(
                "feature_cell_types",
                "Per feature × cell type: a cell's mean activation over its tokens, type vs rest by Welch's t "
                "(cells) or a paired t over samples (pseudobulk), log2 FC with its lower bound, BH q. "
                "Table `feature_cell_types`.",
            ),
            _spec(
                "feature_histograms",
                "Per feature: its active cells binned by (max) activation, 20 equal bins from 0 to its maximum; "
                "the feature pages' activation histograms. Table `feature_histograms`.",
            ),
        ],
        can_subset=False,  # the five tables are written together, in one transaction
        ins={"cells": dg.AssetIn(), "genes": dg.AssetIn()},
        partitions_def=partitions,
        pool="gpu",
    )
    def feature_tables(
        context: dg.AssetExecutionContext,
        config: FeatureConfig,
        home: HomeResource,
        cells: pl.DataFrame,
        genes: pl.DataFrame,
    ):
        # torch, scipy and sae-lens load here, not when Dagster imports the definitions
        from sae_genomics_core.features.associate import associate, attach_gene_ids

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        store, hook, loaded = open_partition(home, dataset, layer)
        settings = config.settings(sae_device())
        unit_columns = [
            "cell_index",
            "cell_id",
            "cell_type",
            *(["sample"] if "sample" in cells.columns else []),
        ]
        tables = associate(store, layer, hook, loaded, cells.select(unit_columns), settings)
        vocab = json.loads((store.root / "vocab.json").read_text())
        gene_rows = attach_gene_ids(tables.genes, vocab, genes)

        derived_from = {
            "checkpoint_id": loaded.provenance["checkpoint_id"],
            "activations_checksum": store.manifest["checksum"],
        }

        def keyed(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.select(
                pl.lit(dataset).alias("dataset"), pl.lit(layer, dtype=pl.Int64).alias("layer"), pl.all()
            ).with_columns(pl.lit(value).alias(name) for name, value in derived_from.items())

        from sae_genomics_core.viz.charts import feature_density, l0_histogram

        directory = charts_dir(home.home, dataset, layer)
        label = f"{dataset} layer {layer}"

        def chart(name: str, made: Any) -> dg.MetadataValue:
            return chart_metadata(directory, name, made)

        mean_l0 = float(
            (tables.l0_counts * np.arange(tables.l0_counts.size)).sum() / max(1, tables.l0_counts.sum())
        )
        frames = {
            "feature_stats": keyed(tables.stats),
            "feature_genes": keyed(gene_rows.select(GENE_COLUMNS)),
            "feature_cells": keyed(tables.cells),
            "feature_cell_types": keyed(tables.cell_types),
            "feature_histograms": keyed(tables.histograms),
        }
        # one transaction for the five tables and the view over them: a crash never leaves a partition
        # whose tables come from two SAEs
        replace_partition(
            home.home.warehouse, frames, {"dataset": dataset, "layer": layer}, after=create_feature_summary
        )
        metadata = {
            "feature_stats": {
                "features": tables.stats.height,
                "tokens": tables.n_tokens,
                "alive_features": int((tables.stats["fire_count"] > 0).sum()),
                "mean_l0": mean_l0,
                "feature_density": chart(
                    "feature_density", feature_density(tables.stats, f"feature density, {label}")
                ),
                "l0_histogram": chart(
                    "l0_histogram", l0_histogram(tables.l0_counts, f"L0 per token, {label}")
                ),
                "charts_dir": dg.MetadataValue.path(str(directory)),
            },
            "feature_genes": _gene_metadata(tables.stats, gene_rows, chart, label),
            "feature_cell_types": _cell_type_metadata(tables.cell_types, chart, label),
        }
        for name, frame in frames.items():
            yield dg.MaterializeResult(
                asset_key=name,
                metadata={
                    **table_metadata(name, frame, partitioned=True),
                    **metadata.get(name, {}),
                    **derived_from,
                },
            )

    return [feature_tables]


GENE_COLUMNS = [
    *("feature", "ensembl_id", "symbol", "score", "n_tokens", "mean_activation", "specificity", "rank"),
    *("gene_id", "raw_specificity", "specificity_z"),
]


def _gene_metadata(stats: pl.DataFrame, gene_rows: pl.DataFrame, chart: Any, label: str) -> dict[str, Any]:
    from sae_genomics_core.viz.charts import top_genes_chart

    if not gene_rows.height:
        return {}
    busiest = int(
        stats.sort("fire_count", descending=True)["feature"][0]
    )  # an example of what the table holds
    example = gene_rows.filter(pl.col("feature") == busiest)
    return {
        "top_genes_of_the_busiest_feature": chart(
            "top_genes_busiest_feature", top_genes_chart(example, f"feature {busiest}: top genes, {label}")
        )
    }


def _cell_type_metadata(cell_types: pl.DataFrame, chart: Any, label: str) -> dict[str, Any]:
    from sae_genomics_core.viz.charts import cell_type_heatmap

    if not cell_types.height:
        return {"significant_q05": 0}
    passing = (pl.col("q_value") <= 0.05) & (pl.col("log2_fold_change_lower") > 0)
    return {
        "significant_q05": int(cell_types.filter(pl.col("q_value") <= 0.05).height),
        "significant_q05_with_effect": int(cell_types.filter(passing).height),
        "cell_type_heatmap": chart(
            "cell_type_heatmap", cell_type_heatmap(cell_types, f"cell type × feature log2 FC, {label}")
        ),
    }
