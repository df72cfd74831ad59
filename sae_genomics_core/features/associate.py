"""Tie SAE features to genes, cells and cell types, streaming every stored token once.

Tokens are encoded batch by batch to their top-k latents — a (tokens × k) sparse code, never a dense
tokens × d_sae matrix — and reduced on the fly into sparse per-(gene, feature) and per-(cell,
feature) sums. Cells never span shards, so per-cell results are final at each shard's end.

Definitions (per dataset × layer, feature f, gene g, cell c):
- fire_count: tokens with a_f > 0; frequency = fire_count / tokens; mean_activation over firing
  tokens; n_cells_active: cells with any firing token.
- feature_genes: score = Σ a_f · expression over g's tokens; n_tokens = g's tokens where f fires;
  mean_activation = Σ a_f over g's tokens / all of g's tokens; specificity = that mean over f's mean
  activation on all tokens (a lift: 1 = no preference). Genes are ranked by specificity among those
  with at least `min_gene_tokens` firing tokens (so a gene present in every cell cannot win by
  volume alone), then by score; the top `top_genes` are kept.
- feature_cells: a cell's activation is its maximum over its tokens; the top `top_cells` cells.
- feature_cell_types: per cell type, the mean of the cells' activations (0 when silent), the
  fraction of cells active, log2 fold change of the means (type vs the rest, +1e-6), and a one-sided
  Mann–Whitney U test (type > rest) with the cell as the unit; BH q-values over all features × types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from scipy.stats import mannwhitneyu
from statsmodels.stats.multitest import multipletests

from sae_genomics_core.activations.store import ActivationStore, from_storage


@dataclass(frozen=True)
class AssociationSettings:
    top_genes: int = 50
    top_cells: int = 50
    min_gene_tokens: int = 3
    batch_tokens: int = 8192
    device: str = "cpu"


@dataclass
class FeatureTables:
    stats: pl.DataFrame
    genes: pl.DataFrame
    cells: pl.DataFrame
    cell_types: pl.DataFrame
    n_tokens: int


@torch.no_grad()
def encode_topk(sae: Any, normalizer: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the top-k latents per token, as sae-lens's TopK SAE computes them."""
    sae_in = normalizer(x) - sae.b_dec if sae.cfg.apply_b_dec_to_input else normalizer(x)
    hidden = sae_in @ sae.W_enc + sae.b_enc
    values, indices = hidden.topk(sae.cfg.k, dim=-1)
    return values.relu(), indices


def associate(
    store: ActivationStore,
    layer: int,
    hook: str,
    loaded: Any,  # sae_genomics_core.sae.checkpoint.LoadedSae
    cells: pl.DataFrame,  # cell_index, cell_id, cell_type
    settings: AssociationSettings = AssociationSettings(),
) -> FeatureTables:
    sae, normalizer = loaded.sae.to(settings.device), loaded.normalizer
    d_sae = int(sae.cfg.d_sae)
    storage = store.manifest["dtype"]
    n_cells_total = int(store.manifest["n_cells_total"])
    vocab_size = 0
    Triplets = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (row, feature, value) parts to sum or max
    gene_act: Triplets = []
    gene_score: Triplets = []
    gene_fires: Triplets = []
    gene_tokens: dict[int, int] = {}
    cell_max: Triplets = []
    fire_count = np.zeros(d_sae, dtype=np.int64)
    act_sum = np.zeros(d_sae, dtype=np.float64)
    act_max = np.zeros(d_sae, dtype=np.float64)
    n_tokens = 0
    for shard in store.manifest["shards"]:
        if shard["n_tokens"] == 0:
            continue
        tokens = store.tokens(shard["name"])
        acts = store.acts(layer, hook, shard["name"])
        gene_ids = np.asarray(tokens["gene_id"], dtype=np.int64)
        values_expr = np.asarray(tokens["value"], dtype=np.float64)
        owners = np.asarray(tokens["cell_index"], dtype=np.int64)
        vocab_size = max(vocab_size, int(gene_ids.max()) + 1)
        for gene, count in zip(*np.unique(gene_ids, return_counts=True), strict=True):
            gene_tokens[int(gene)] = gene_tokens.get(int(gene), 0) + int(count)
        rows, cols, vals = [], [], []
        for start in range(0, shard["n_tokens"], settings.batch_tokens):
            stop = min(start + settings.batch_tokens, shard["n_tokens"])
            x = from_storage(np.asarray(acts[start:stop]), storage).float().to(settings.device)
            top_values, top_indices = encode_topk(sae, normalizer, x)
            flat_values = top_values.reshape(-1).cpu().numpy().astype(np.float64)
            flat_features = top_indices.reshape(-1).cpu().numpy()
            token_rows = np.repeat(np.arange(start, stop), top_values.shape[1])
            firing = flat_values > 0
            flat_values, flat_features, token_rows = (
                flat_values[firing],
                flat_features[firing],
                token_rows[firing],
            )
            rows.append(token_rows)
            cols.append(flat_features)
            vals.append(flat_values)
        token_rows = np.concatenate(rows)
        features = np.concatenate(cols)
        activation = np.concatenate(vals)
        n_tokens += shard["n_tokens"]
        fire_count += np.bincount(features, minlength=d_sae)
        act_sum += np.bincount(features, weights=activation, minlength=d_sae)
        np.maximum.at(act_max, features, activation)
        genes_of = gene_ids[token_rows]
        gene_act.append((genes_of, features, activation))
        gene_score.append((genes_of, features, activation * values_expr[token_rows]))
        gene_fires.append((genes_of, features, np.ones_like(activation)))
        # per-cell maximum activation: reduce (cell, feature) duplicates with a sort
        cells_of = owners[token_rows]
        cell_max.append(_max_coo(cells_of, features, activation))

    stats = pl.DataFrame({
        "feature": np.arange(d_sae, dtype=np.int64),
        "fire_count": fire_count,
        "frequency": fire_count / max(1, n_tokens),
        "mean_activation": np.divide(act_sum, fire_count, out=np.zeros(d_sae), where=fire_count > 0),
        "max_activation": act_max,
    })  # fmt: skip
    per_cell = _stack(cell_max, n_cells_total, d_sae, reduce_max=True).tocsc()
    stats = stats.with_columns(pl.Series("n_cells_active", np.diff(per_cell.indptr).astype(np.int64)))
    feature_mean_all = act_sum / max(1, n_tokens)
    genes = _gene_table(
        _stack(gene_act, vocab_size, d_sae), _stack(gene_score, vocab_size, d_sae), _stack(gene_fires, vocab_size, d_sae),
        gene_tokens, feature_mean_all, settings,
    )  # fmt: skip
    cell_table = _cell_table(per_cell, cells, settings.top_cells)
    cell_types = _cell_type_table(per_cell, cells)
    return FeatureTables(stats=stats, genes=genes, cells=cell_table, cell_types=cell_types, n_tokens=n_tokens)


def _max_coo(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((-values, cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return rows[first], cols[first], values[first]


def _stack(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_rows: int, n_cols: int, reduce_max: bool = False
) -> sp.csr_matrix:
    if not parts:
        return sp.csr_matrix((n_rows, n_cols))
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    values = np.concatenate([p[2] for p in parts])
    if reduce_max:  # cells never span shards, so the parts hold no duplicates across them
        rows, cols, values = _max_coo(rows, cols, values)
    return sp.csr_matrix((values, (rows, cols)), shape=(n_rows, n_cols))  # duplicates are summed


def _gene_table(
    act: sp.csr_matrix, score: sp.csr_matrix, fires: sp.csr_matrix, gene_tokens: dict[int, int],
    feature_mean_all: np.ndarray, settings: AssociationSettings,
) -> pl.DataFrame:  # fmt: skip
    coo = score.tocoo()
    genes, features = coo.row.astype(np.int64), coo.col.astype(np.int64)
    totals = np.array([gene_tokens.get(int(g), 0) for g in range(act.shape[0])], dtype=np.float64)
    act_values = np.asarray(act[genes, features]).ravel()
    n_fired = np.asarray(fires[genes, features]).ravel().astype(np.int64)
    mean_activation = act_values / np.maximum(totals[genes], 1)
    specificity = mean_activation / np.maximum(feature_mean_all[features], 1e-12)
    frame = pl.DataFrame({
        "feature": features, "gene_id": genes, "score": coo.data.astype(np.float64), "n_tokens": n_fired,
        "mean_activation": mean_activation, "specificity": specificity,
    })  # fmt: skip
    supported = frame.filter(pl.col("n_tokens") >= settings.min_gene_tokens)
    ranked = supported.sort(["feature", "specificity", "score"], descending=[False, True, True]).with_columns(
        (pl.col("specificity").cum_count().over("feature")).cast(pl.Int64).alias("rank")
    )
    return ranked.filter(pl.col("rank") <= settings.top_genes)


def _cell_table(per_cell: sp.csc_matrix, cells: pl.DataFrame, top: int) -> pl.DataFrame:
    parts = []
    for feature in range(per_cell.shape[1]):
        start, stop = per_cell.indptr[feature], per_cell.indptr[feature + 1]
        if start == stop:
            continue
        values = per_cell.data[start:stop]
        rows = per_cell.indices[start:stop]
        best = np.argsort(-values, kind="stable")[:top]
        parts.append((np.full(best.size, feature), rows[best], values[best], np.arange(1, best.size + 1)))
    if not parts:
        return pl.DataFrame(
            schema={
                "feature": pl.Int64,
                "cell_index": pl.Int64,
                "max_activation": pl.Float64,
                "rank": pl.Int64,
                "cell_id": pl.String,
            }
        )
    frame = pl.DataFrame({
        "feature": np.concatenate([p[0] for p in parts]).astype(np.int64),
        "cell_index": np.concatenate([p[1] for p in parts]).astype(np.int64),
        "max_activation": np.concatenate([p[2] for p in parts]).astype(np.float64),
        "rank": np.concatenate([p[3] for p in parts]).astype(np.int64),
    })  # fmt: skip
    return frame.join(cells.select("cell_index", "cell_id"), on="cell_index", how="left")


def _cell_type_table(per_cell: sp.csc_matrix, cells: pl.DataFrame, chunk: int = 256) -> pl.DataFrame:
    typed = cells.filter(pl.col("cell_type").is_not_null())
    empty = pl.DataFrame(schema={"feature": pl.Int64, "cell_type": pl.String, "mean_activation": pl.Float64, "frac_active": pl.Float64,
                                 "log2_fold_change": pl.Float64, "p_value": pl.Float64, "q_value": pl.Float64, "n_cells": pl.Int64})  # fmt: skip
    if typed.height == 0:
        return empty
    rows = typed["cell_index"].to_numpy()
    labels = typed["cell_type"].to_numpy()
    types = np.unique(labels)
    matrix = per_cell[rows].tocsc()
    frames = []
    for first in range(0, matrix.shape[1], chunk):
        block = matrix[:, first : first + chunk].toarray()  # cells × chunk features
        active_any = (block > 0).any(axis=0)
        if not active_any.any():
            continue
        block = block[:, active_any]
        features = np.arange(first, min(first + chunk, matrix.shape[1]))[active_any]
        for cell_type in types:
            inside = labels == cell_type
            if inside.all():
                continue
            group, rest = block[inside], block[~inside]
            mean_in, mean_out = group.mean(axis=0), rest.mean(axis=0)
            p_values = mannwhitneyu(group, rest, axis=0, alternative="greater").pvalue
            frames.append(pl.DataFrame({
                "feature": features.astype(np.int64), "cell_type": [str(cell_type)] * features.size,
                "mean_activation": mean_in, "frac_active": (group > 0).mean(axis=0),
                "log2_fold_change": np.log2((mean_in + 1e-6) / (mean_out + 1e-6)),
                "p_value": np.nan_to_num(p_values, nan=1.0), "n_cells": np.full(features.size, int(inside.sum()), dtype=np.int64),
            }))  # fmt: skip
    if not frames:
        return empty
    table = pl.concat(frames)
    q_values = multipletests(table["p_value"].to_numpy(), method="fdr_bh")[1]
    return table.with_columns(pl.Series("q_value", q_values)).select(empty.columns)
