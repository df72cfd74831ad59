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

from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import warehouse_writer
from sae_genomics_dagster.assets.activations import CURRENT
from sae_genomics_dagster.assets.common import (
    BY_DATASET_LAYER,
    chart_metadata,
    charts_dir,
    sae_device,
    table_out,
)
from sae_genomics_dagster.resources import HomeResource

GROUP = "features"


class FeatureConfig(dg.Config):
    top_genes: int = Field(default=50, description="genes kept per feature in feature_genes")
    top_cells: int = Field(default=50, description="cells kept per feature in feature_cells")
    min_gene_tokens: int = Field(default=3, description="a gene needs this many firing tokens to be ranked")
    batch_tokens: int = Field(default=8192, description="tokens encoded at once")


def open_partition(home: HomeResource, dataset: str, layer: int) -> tuple[Any, str, Any]:
    """(activation store, hook, loaded SAE) of one dataset × layer; a mismatched checkpoint is refused."""
    from sae_genomics_core.activations.store import ActivationStore
    from sae_genomics_core.sae.checkpoint import CheckpointMismatch, load_checkpoint

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
    try:
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
    except CheckpointMismatch as error:
        raise dg.Failure(description=str(error)) from error
    return store, hook, loaded


def _out(description: str) -> dg.AssetOut:
    return table_out(description, GROUP, BY_DATASET_LAYER)


def build_feature_assets(partitions: dg.MultiPartitionsDefinition) -> list:
    @dg.multi_asset(
        outs={
            "feature_stats": _out(
                "Per feature: fire count, frequency, mean and max activation, cells active. Table `feature_stats`."
            ),
            "feature_genes": _out(
                "Per feature: top genes by specificity (lift shrunk by empirical Bayes) with score = Σ activation × "
                "expression bin. Table `feature_genes`."
            ),
            "feature_cells": _out("Per feature: top cells by max activation. Table `feature_cells`."),
            "feature_cell_types": _out(
                "Per feature × cell type: a cell's mean activation over its tokens, type vs rest by Welch's t "
                "(cells) or a paired t over samples (pseudobulk), log2 FC with its lower bound, BH q. "
                "Table `feature_cell_types`."
            ),
            "feature_histograms": _out(
                "Per feature: its active cells binned by (max) activation, 20 equal bins from 0 to its maximum; "
                "the feature pages' activation histograms. Table `feature_histograms`."
            ),
        },
        ins={"cells": dg.AssetIn(), "genes": dg.AssetIn()},
        deps=["sae_checkpoint", "activations"],
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
        from sae_genomics_core.features.associate import AssociationSettings, associate, attach_gene_ids

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        store, hook, loaded = open_partition(home, dataset, layer)
        settings = AssociationSettings(
            config.top_genes, config.top_cells, config.min_gene_tokens, config.batch_tokens, sae_device()
        )
        unit_columns = [
            "cell_index",
            "cell_id",
            "cell_type",
            *(["sample"] if "sample" in cells.columns else []),
        ]
        tables = associate(store, layer, hook, loaded, cells.select(unit_columns), settings)
        vocab = json.loads((store.root / "vocab.json").read_text())
        gene_rows = attach_gene_ids(tables.genes, vocab, genes)

        def keyed(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.select(
                pl.lit(dataset).alias("dataset"), pl.lit(layer, dtype=pl.Int64).alias("layer"), pl.all()
            )

        from sae_genomics_core.viz.charts import (
            cell_type_heatmap,
            feature_density,
            l0_histogram,
            top_genes_chart,
        )

        directory = charts_dir(home.home, dataset, layer)
        label = f"{dataset} layer {layer}"

        def chart(name: str, made: Any) -> dg.MetadataValue:
            return chart_metadata(directory, name, made)

        mean_l0 = float(
            (tables.l0_counts * np.arange(tables.l0_counts.size)).sum() / max(1, tables.l0_counts.sum())
        )
        yield dg.Output(
            keyed(tables.stats), "feature_stats",
            metadata={
                "features": tables.stats.height, "tokens": tables.n_tokens,
                "alive_features": int((tables.stats["fire_count"] > 0).sum()), "mean_l0": mean_l0,
                "feature_density": chart("feature_density", feature_density(tables.stats, f"feature density, {label}")),
                "l0_histogram": chart("l0_histogram", l0_histogram(tables.l0_counts, f"L0 per token, {label}")),
                "charts_dir": dg.MetadataValue.path(str(directory)),
            },
        )  # fmt: skip
        gene_metadata: dict[str, Any] = {"rows": gene_rows.height}
        if gene_rows.height:  # the busiest feature's top genes, as an example of what feature_genes holds
            busiest = int(tables.stats.sort("fire_count", descending=True)["feature"][0])
            gene_metadata["top_genes_of_the_busiest_feature"] = chart(
                "top_genes_busiest_feature",
                top_genes_chart(
                    gene_rows.filter(pl.col("feature") == busiest), f"feature {busiest}: top genes, {label}"
                ),
            )
        yield dg.Output(keyed(gene_rows.select("feature", "ensembl_id", "symbol", "score", "n_tokens", "mean_activation", "specificity", "rank", "gene_id", "raw_specificity", "specificity_z")),
                        "feature_genes", metadata=gene_metadata)  # fmt: skip
        yield dg.Output(keyed(tables.cells), "feature_cells", metadata={"rows": tables.cells.height})
        significant = int((tables.cell_types["q_value"] < 0.05).sum()) if tables.cell_types.height else 0
        cell_type_metadata: dict[str, Any] = {
            "rows": tables.cell_types.height,
            "significant_q05": significant,
        }
        if tables.cell_types.height:
            cell_type_metadata["cell_type_heatmap"] = chart(
                "cell_type_heatmap",
                cell_type_heatmap(tables.cell_types, f"cell type × feature log2 FC, {label}"),
            )
        yield dg.Output(keyed(tables.cell_types), "feature_cell_types", metadata=cell_type_metadata)
        yield dg.Output(
            keyed(tables.histograms), "feature_histograms", metadata={"rows": tables.histograms.height}
        )
        # the outputs above are written as they are yielded; the view over them can now be (re)created
        database = str(home.home.warehouse)
        with warehouse_writer(database) as connection:
            create_feature_summary(connection)

    return [feature_tables]
