"""Stage runner: the features of one dataset × layer tied to genes, cells and cell types (seven tables,
written together in one transaction)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.pipeline.result import Log, Markdown, StageResult, keyed
from sae_genomics_core.warehouse.views import create_feature_summary
from sae_genomics_core.warehouse.writer import replace_partition

FEATURE_TABLES = (
    "feature_stats",
    "feature_genes",
    "feature_cells",
    "feature_cell_genes",
    "feature_cell_map",
    "feature_cell_types",
    "feature_histograms",
)
GENE_COLUMNS = [
    *("feature", "ensembl_id", "symbol", "score", "n_tokens", "mean_activation", "specificity", "rank"),
    *("gene_id", "raw_specificity", "specificity_z"),
    *("selected", "held_out_specificity", "held_out_p_value", "held_out_q_value", "replicated"),
]

CELL_GENE_COLUMNS = [
    *("feature", "cell_rank", "cell_index", "cell_id", "rank", "gene_id", "ensembl_id", "symbol"),
    *("activation", "expression_bin"),
]


def open_partition(store: ArtefactStore, dataset: str, layer: int, device: str) -> tuple[Any, str, Any]:
    """(activation store, hook, loaded SAE) of one dataset × layer; a checkpoint trained on other
    activations is refused. The SAE's provenance carries `checkpoint_id`, the id derived rows record."""
    from sae_genomics_core.sae.checkpoint import PROVENANCE, checkpoint_id, load_checkpoint

    activations = store.current_activations(dataset)
    checkpoint = store.require_checkpoint(dataset, layer)
    hook = json.loads((checkpoint / PROVENANCE).read_text())["hook"]
    manifest = activations.manifest
    expect = {
        "model_id": manifest["model_id"],
        "layer": layer,
        "hook": hook,
        "d_in": manifest["widths"][f"L{layer}.{hook}"],
        # an SAE trained on other (older) activations of this dataset is refused too
        "activations_checksum": manifest["checksum"],
    }
    loaded = load_checkpoint(checkpoint, expect=expect, device=device)
    loaded.provenance["checkpoint_id"] = checkpoint_id(checkpoint)
    return activations, hook, loaded


def current_checkpoint_id(store: ArtefactStore, dataset: str, layer: int) -> str | None:
    """The id of the dataset × layer's current SAE checkpoint (None before the first one)."""
    from sae_genomics_core.sae.checkpoint import checkpoint_id

    checkpoint = store.current_checkpoint(dataset, layer)
    return None if checkpoint is None else checkpoint_id(checkpoint)


def refuse_stale(rows: pl.DataFrame, store: ArtefactStore, dataset: str, layer: int, table: str) -> None:
    """Raise when `rows` were not all derived from the current SAE checkpoint."""
    from sae_genomics_core.sae.checkpoint import refuse_rows_of_another_checkpoint

    refuse_rows_of_another_checkpoint(rows, current_checkpoint_id(store, dataset, layer) or "", table)


def run_features(
    dataset: str,
    layer: int,
    store: ArtefactStore,
    warehouse: Path,
    cells: pl.DataFrame,
    genes: pl.DataFrame,
    settings: AssociationSettings,
    log: Log | None = None,
) -> StageResult:
    """Encode every token with the current SAE, build the seven feature tables and write them (with the
    `feature_summary` view) in one transaction: a crash never leaves tables from two SAEs."""
    from sae_genomics_core.features.associate import associate, attach_gene_ids
    from sae_genomics_core.progress import Progress

    activations, hook, loaded = open_partition(store, dataset, layer, settings.device)
    optional = [name for name in ("sample", "umap_1") if name in cells.columns]
    units = ["cell_index", "cell_id", "cell_type", *optional]
    encoding = Progress(f"{dataset} layer {layer}: encoding tokens", "tokens", log)
    tables = associate(
        activations, layer, hook, loaded, cells.select(units), settings, progress=encoding.update
    )
    vocab = json.loads((activations.root / "vocab.json").read_text())
    gene_rows = attach_gene_ids(tables.genes, vocab, genes)
    derived_from = {
        "checkpoint_id": loaded.provenance["checkpoint_id"],
        "activations_checksum": activations.manifest["checksum"],
    }

    frames = {
        name: keyed(frame, dataset, layer, derived_from)
        for name, frame in (
            ("feature_stats", tables.stats),
            ("feature_genes", gene_rows.select(GENE_COLUMNS)),
            ("feature_cells", tables.cells),
            (
                "feature_cell_genes",
                attach_gene_ids(tables.cell_genes, vocab, genes).select(CELL_GENE_COLUMNS),
            ),
            ("feature_cell_map", tables.cell_map.sort("feature", "cell_index")),
            ("feature_cell_types", tables.cell_types),
            ("feature_histograms", tables.histograms),
        )
    }
    replace_partition(warehouse, frames, {"dataset": dataset, "layer": layer}, after=create_feature_summary)
    charts = _Charts(store, dataset, layer)
    return StageResult(
        tables=frames,
        written=True,
        summary=derived_from,
        table_summaries={
            "feature_stats": _stats_summary(tables, charts),
            "feature_genes": {**_gene_summary(tables.stats, gene_rows, charts), **_replication(gene_rows)},
            "feature_cell_types": {
                **_cell_type_summary(tables.cell_types, charts),
                **_replication(tables.cell_types),
                "held_out_split": tables.split_unit,
            },
        },
    )


class _Charts:
    """Saves a dataset × layer's charts in the artefact store; returns each as a markdown image."""

    def __init__(self, store: ArtefactStore, dataset: str, layer: int):
        self.store, self.dataset, self.layer = store, dataset, layer
        self.label = f"{dataset} layer {layer}"

    def __call__(self, name: str, chart: Any) -> Markdown:
        return Markdown(self.store.save_chart(self.dataset, self.layer, name, chart))

    @property
    def folder(self) -> Path:
        return self.store.charts(self.dataset, self.layer)


def _stats_summary(tables: Any, charts: _Charts) -> dict[str, Any]:
    from sae_genomics_core.viz.charts import feature_density, l0_histogram

    counts = tables.l0_counts
    return {
        "features": tables.stats.height,
        "tokens": tables.n_tokens,
        "alive_features": int((tables.stats["fire_count"] > 0).sum()),
        "mean_l0": float((counts * np.arange(counts.size)).sum() / max(1, counts.sum())),
        "feature_density": charts(
            "feature_density", feature_density(tables.stats, f"feature density, {charts.label}")
        ),
        "l0_histogram": charts("l0_histogram", l0_histogram(counts, f"L0 per token, {charts.label}")),
        "charts_dir": charts.folder,
    }


def _gene_summary(stats: pl.DataFrame, gene_rows: pl.DataFrame, charts: _Charts) -> dict[str, Any]:
    from sae_genomics_core.viz.charts import top_genes_chart

    if not gene_rows.height:
        return {}
    busiest = int(stats.sort("fire_count", descending=True)["feature"][0])  # an example of the table
    example = gene_rows.filter(pl.col("feature") == busiest)
    title = f"feature {busiest}: top genes, {charts.label}"
    return {
        "top_genes_of_the_busiest_feature": charts(
            "top_genes_busiest_feature", top_genes_chart(example, title)
        )
    }


def _replication(claims: pl.DataFrame) -> dict[str, int]:
    """How many rows were selected on the selection half, and how many of those replicated."""
    if not claims.height:
        return {}
    return {"selected": int(claims["selected"].sum()), "replicated": int(claims["replicated"].sum())}


def _cell_type_summary(cell_types: pl.DataFrame, charts: _Charts) -> dict[str, Any]:
    from sae_genomics_core.viz.charts import cell_type_heatmap

    if not cell_types.height:
        return {"significant_q05": 0}
    passing = (pl.col("q_value") <= 0.05) & (pl.col("log2_fold_change_lower") > 0)
    title = f"cell type × feature log2 FC, {charts.label}"
    return {
        "significant_q05": int(cell_types.filter(pl.col("q_value") <= 0.05).height),
        "significant_q05_with_effect": int(cell_types.filter(passing).height),
        "cell_type_heatmap": charts("cell_type_heatmap", cell_type_heatmap(cell_types, title)),
    }
