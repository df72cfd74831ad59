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
  Mann–Whitney U test (type > rest) with the cell as the unit, over the cells the model saw; BH
  q-values over all features × types (pairs that could not be tested count as p = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from scipy.special import ndtr
from scipy.stats import mannwhitneyu, rankdata
from statsmodels.stats.multitest import multipletests

from sae_genomics_core.activations.store import ActivationStore, from_storage


@dataclass(frozen=True)
class AssociationSettings:
    top_genes: int = 50
    top_cells: int = 50
    min_gene_tokens: int = 3
    batch_tokens: int = 8192
    device: str = "cpu"


HISTOGRAM_BINS = 20


@dataclass
class FeatureTables:
    stats: pl.DataFrame
    genes: pl.DataFrame
    cells: pl.DataFrame
    cell_types: pl.DataFrame
    n_tokens: int
    # tokens by how many latents fire on them (index = L0), for the L0 histogram
    l0_counts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    # per feature, its cells' (max) activations in HISTOGRAM_BINS equal bins from 0 to its maximum
    histograms: pl.DataFrame = field(default_factory=pl.DataFrame)


@torch.no_grad()
def encode_topk(sae: Any, normalizer: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the top-k latents per token, as sae-lens's TopK SAE computes them."""
    sae_in = normalizer(x) - sae.b_dec if sae.cfg.apply_b_dec_to_input else normalizer(x)
    hidden = torch.addmm(sae.b_enc, sae_in, sae.W_enc)  # fused bias: no second tokens × d_sae buffer
    values, indices = hidden.topk(sae.cfg.k, dim=-1)
    return values.relu(), indices


def associate(
    store: ActivationStore,
    layer: int,
    hook: str,
    loaded: Any,  # sae_genomics_core.sae.checkpoint.LoadedSae
    cells: pl.DataFrame,  # cell_index, cell_id, cell_type
    settings: AssociationSettings = AssociationSettings(),
    with_cells: bool = True,
) -> FeatureTables:
    """All four tables; `with_cells=False` leaves feature_cells and feature_cell_types empty (baselines
    need only the genes, and the per-type tests are the slowest part)."""
    sae, normalizer = loaded.sae.to(settings.device), loaded.normalizer
    d_sae = int(sae.cfg.d_sae)
    storage = store.manifest["dtype"]
    n_cells_total = int(store.manifest["n_cells_total"])
    gene_sums = (
        _KeyedSums()
    )  # per (gene × d_sae + feature): firing tokens, Σ activation, Σ activation × expression
    gene_tokens: dict[int, int] = {}
    cell_max: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per shard: (cell, feature, max)
    fire_count = np.zeros(d_sae, dtype=np.int64)
    act_sum = np.zeros(d_sae, dtype=np.float64)
    act_max = np.zeros(d_sae, dtype=np.float64)
    l0_counts = np.zeros(int(sae.cfg.k) + 1, dtype=np.int64)
    n_tokens = 0
    for shard in store.manifest["shards"]:
        if shard["n_tokens"] == 0:
            continue
        tokens = store.tokens(shard["name"])
        acts = store.acts(layer, hook, shard["name"])
        gene_ids = np.asarray(tokens["gene_id"], dtype=np.int64)
        values_expr = np.asarray(tokens["value"], dtype=np.float64)
        owners = np.asarray(tokens["cell_index"], dtype=np.int64)
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
            l0_counts += np.bincount(
                firing.reshape(-1, top_values.shape[1]).sum(axis=1), minlength=l0_counts.size
            )
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
        gene_sums.add(
            gene_ids[token_rows] * d_sae + features, activation, activation * values_expr[token_rows]
        )
        # per-cell maximum activation: a dense (cells of this shard × d_sae) buffer reduced with amax
        shard_cells, owner_local = np.unique(owners, return_inverse=True)  # over tokens, not firing pairs
        local = owner_local[token_rows]
        buffer = torch.zeros(shard_cells.size * d_sae, dtype=torch.float64)
        buffer.scatter_reduce_(
            0, torch.from_numpy(local * d_sae + features), torch.from_numpy(activation), "amax"
        )
        nonzero = torch.nonzero(buffer).squeeze(1).numpy()
        cell_max.append((shard_cells[nonzero // d_sae], nonzero % d_sae, buffer.numpy()[nonzero]))

    stats = pl.DataFrame({
        "feature": np.arange(d_sae, dtype=np.int64),
        "fire_count": fire_count,
        "frequency": fire_count / max(1, n_tokens),
        "mean_activation": np.divide(act_sum, fire_count, out=np.zeros(d_sae), where=fire_count > 0),
        "max_activation": act_max,
    })  # fmt: skip
    per_cell = _stack(cell_max, n_cells_total, d_sae).tocsc()
    stats = stats.with_columns(pl.Series("n_cells_active", np.diff(per_cell.indptr).astype(np.int64)))
    feature_mean_all = act_sum / max(1, n_tokens)
    # pairs with too little support can never be ranked: dropped before any table is built
    keys, sums = gene_sums.totals(min_count=max(1, settings.min_gene_tokens))
    genes = _gene_table(keys // d_sae, keys % d_sae, sums, gene_tokens, feature_mean_all, settings)
    histograms = _histograms(per_cell)
    if not with_cells:
        cell_table, cell_types = _cell_table(per_cell[:0], cells, 0), _cell_type_table(per_cell, cells[:0])
        return FeatureTables(stats, genes, cell_table, cell_types, n_tokens, l0_counts, histograms)
    cell_table = _cell_table(per_cell, cells, settings.top_cells)
    seen = (
        np.concatenate([store.tokens(s["name"])["cls_cell_index"] for s in store.manifest["shards"]])
        if store.manifest["shards"]
        else np.zeros(0)
    )
    cell_types = _cell_type_table(
        per_cell, cells.filter(pl.col("cell_index").is_in(seen.astype(np.int64).tolist()))
    )
    return FeatureTables(stats, genes, cell_table, cell_types, n_tokens, l0_counts, histograms)


def attach_gene_ids(gene_table: pl.DataFrame, vocab: dict[str, int], genes: pl.DataFrame) -> pl.DataFrame:
    """feature_genes rows (gene_id = vocab token id) with the dataset's ensembl_id and symbol.

    Tiny-random vocabs key some genes by symbol where no Ensembl id exists: ensembl_id falls back to the token.
    """
    token_of = pl.DataFrame(
        {"gene_id": list(vocab.values()), "token": list(vocab.keys())},
        schema={"gene_id": pl.Int64, "token": pl.String},
    )
    names = genes.select(pl.coalesce("ensembl_id", "symbol").alias("token"), "ensembl_id", "symbol").unique(
        "token"
    )
    joined = gene_table.join(token_of, on="gene_id", how="left").join(names, on="token", how="left")
    return joined.with_columns(pl.coalesce("ensembl_id", "token").alias("ensembl_id")).drop("token")


def _histograms(per_cell: sp.csc_matrix) -> pl.DataFrame:
    """Each feature's active cells binned by activation: HISTOGRAM_BINS equal bins from 0 to its max."""
    features = np.repeat(np.arange(per_cell.shape[1]), np.diff(per_cell.indptr))
    values = per_cell.data
    top = np.zeros(per_cell.shape[1])
    np.maximum.at(top, features, values)
    width = np.where(top > 0, top / HISTOGRAM_BINS, 1.0)
    bins = np.minimum((values / width[features]).astype(np.int64), HISTOGRAM_BINS - 1)
    counts = np.bincount(features * HISTOGRAM_BINS + bins, minlength=per_cell.shape[1] * HISTOGRAM_BINS)
    keys = np.flatnonzero(counts)
    feature, bin_index = keys // HISTOGRAM_BINS, keys % HISTOGRAM_BINS
    return pl.DataFrame({
        "feature": feature.astype(np.int64), "bin": bin_index.astype(np.int64),
        "bin_start": bin_index * width[feature], "bin_end": (bin_index + 1) * width[feature],
        "n_cells": counts[keys].astype(np.int64),
    })  # fmt: skip


class _KeyedSums:
    """Per int64 key: the count and the sums of two weights, over every batch added.

    Hash aggregation (polars) rather than a sort per batch; batches are folded into one running total
    only when they outgrow it, so memory stays within twice the distinct keys (or one fold threshold).
    """

    FOLD_ROWS = 4_000_000

    def __init__(self) -> None:
        self.parts: list[pl.DataFrame] = []
        self.pending_rows = 0
        self.total_rows = 0

    def add(self, keys: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
        # 20 bytes a row until folded (sums are taken in float64)
        self.parts.append(pl.DataFrame({
            "key": keys, "count": np.ones(keys.size, dtype=np.int32),
            "first": first.astype(np.float32), "second": second.astype(np.float32),
        }))  # fmt: skip
        self.pending_rows += keys.size
        if self.pending_rows > max(self.total_rows, self.FOLD_ROWS):
            self._fold()

    def _fold(self) -> None:
        folded = (
            pl.concat(self.parts, how="vertical_relaxed")
            .group_by("key")
            .agg(pl.col("count").cast(pl.Int64).sum(), pl.col("first", "second").cast(pl.Float64).sum())
        )
        self.parts, self.pending_rows, self.total_rows = [folded], 0, folded.height

    def totals(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Keys counted at least `min_count` times (in no particular order) and their (count, first,
        second) sums as columns."""
        if not self.parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
        self._fold()
        folded = self.parts[0].filter(pl.col("count") >= min_count)
        return folded["key"].to_numpy(), folded.select("count", "first", "second").to_numpy()


def _stack(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_rows: int, n_cols: int) -> sp.csr_matrix:
    """Per-shard (row, column, value) parts as one matrix (cells never span shards: no duplicates)."""
    if not parts:
        return sp.csr_matrix((n_rows, n_cols))
    rows, cols, values = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return sp.csr_matrix((values, (rows, cols)), shape=(n_rows, n_cols))


def _gene_table(
    genes: np.ndarray, features: np.ndarray, sums: np.ndarray, gene_tokens: dict[int, int],
    feature_mean_all: np.ndarray, settings: AssociationSettings,
) -> pl.DataFrame:  # fmt: skip
    n_fired, activation, score = sums[:, 0].astype(np.int64), sums[:, 1], sums[:, 2]
    totals = np.zeros(max([*gene_tokens, -1]) + 1)
    totals[list(gene_tokens)] = list(gene_tokens.values())
    mean_activation = activation / np.maximum(totals[genes], 1) if genes.size else activation
    specificity = mean_activation / np.maximum(feature_mean_all[features], 1e-12)
    frame = pl.DataFrame({
        "feature": features.astype(np.int64), "gene_id": genes.astype(np.int64), "score": score, "n_tokens": n_fired,
        "mean_activation": mean_activation, "specificity": specificity,
    })  # fmt: skip
    ranked = frame.sort(["feature", "specificity", "score"], descending=[False, True, True]).with_columns(
        pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64).alias("rank")
    )
    return ranked.filter(pl.col("rank") <= settings.top_genes)


def _cell_table(per_cell: sp.csc_matrix, cells: pl.DataFrame, top: int) -> pl.DataFrame:
    coo = per_cell.tocoo()
    frame = pl.DataFrame({
        "feature": coo.col.astype(np.int64), "cell_index": coo.row.astype(np.int64), "max_activation": coo.data.astype(np.float64),
    })  # fmt: skip
    ranked = frame.sort(
        ["feature", "max_activation", "cell_index"], descending=[False, True, False]
    ).with_columns(pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64).alias("rank"))
    return ranked.filter(pl.col("rank") <= top).join(
        cells.select("cell_index", "cell_id"), on="cell_index", how="left"
    )


class _RankSums:
    """One-sided Mann–Whitney U (group > rest) for many groups of the same cells, feature by feature.

    Every group splits the same cells, so the pooled ranks and tie counts are computed once per block
    and each group's p-value is the normal approximation scipy's `mannwhitneyu` uses (tie-corrected,
    continuity-corrected) from its rank sum. Groups or rests of 8 cells or fewer go to scipy itself,
    which may use the exact distribution there.
    """

    def __init__(self, block: np.ndarray) -> None:  # cells × features
        self.block = block
        self.ranks = rankdata(block, axis=0)
        ordered = np.sort(block, axis=0)
        n = block.shape[0]
        starts = np.ones_like(ordered, dtype=bool)  # where a run of equal values begins, per column
        starts[1:] = ordered[1:] != ordered[:-1]
        run = np.cumsum(starts.T.reshape(-1)) - 1  # run id over columns laid end to end
        sizes = np.bincount(run).astype(np.float64)
        column_of_run = np.repeat(np.arange(block.shape[1]), starts.sum(axis=0))
        self.tie_term = np.bincount(column_of_run, weights=sizes**3 - sizes, minlength=block.shape[1])
        self.n = n

    def greater(self, inside: np.ndarray) -> np.ndarray:
        n1 = int(inside.sum())
        n2 = self.n - n1
        if n1 <= 8 or n2 <= 8:
            return mannwhitneyu(self.block[inside], self.block[~inside], axis=0, alternative="greater").pvalue
        u1 = self.ranks[inside].sum(axis=0) - n1 * (n1 + 1) / 2
        sd = np.sqrt(n1 * n2 / 12 * ((self.n + 1) - self.tie_term / (self.n * (self.n - 1))))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (u1 - n1 * n2 / 2 - 0.5) / sd
        return np.clip(ndtr(-z), 0.0, 1.0)


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
        rank_sums = _RankSums(block)
        for cell_type in types:
            inside = labels == cell_type
            if inside.all():
                continue
            group, rest = block[inside], block[~inside]
            mean_in, mean_out = group.mean(axis=0), rest.mean(axis=0)
            p_values = rank_sums.greater(inside)
            frames.append(pl.DataFrame({
                "feature": features.astype(np.int64), "cell_type": [str(cell_type)] * features.size,
                "mean_activation": mean_in, "frac_active": (group > 0).mean(axis=0),
                "log2_fold_change": np.log2((mean_in + 1e-6) / (mean_out + 1e-6)),
                "p_value": np.nan_to_num(p_values, nan=1.0), "n_cells": np.full(features.size, int(inside.sum()), dtype=np.int64),
            }))  # fmt: skip
    if not frames:
        return empty
    table = pl.concat(frames)
    # BH over every feature × cell type pair: pairs not tested (feature silent in all typed cells, or a
    # type covering every cell) count as p = 1 so they still weigh in the correction
    n_untested = matrix.shape[1] * types.size - table.height
    p_values = np.concatenate([table["p_value"].to_numpy(), np.ones(max(0, n_untested))])
    q_values = multipletests(p_values, method="fdr_bh")[1][: table.height]
    return table.with_columns(pl.Series("q_value", q_values)).select(empty.columns)
