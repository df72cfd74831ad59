"""Tie SAE features to genes, cells and cell types, streaming every stored token once.

Tokens are encoded batch by batch to their top-k latents — a (tokens × k) sparse code, never a dense
tokens × d_sae matrix — and reduced on the fly into sparse per-(gene, feature) and per-(cell,
feature) sums. Cells never span shards, so per-cell results are final at each shard's end.

Definitions (per dataset × layer, feature f with activation a, gene g, cell c):
- fire_count: tokens with a > 0; frequency = fire_count / tokens; mean_activation over firing
  tokens; n_cells_active: cells with any firing token.
- feature_genes: score = Σ a × expression bin over g's tokens (the bin tahoe-x1 saw, so counts and
  log1p registrations of the same cells score alike); n_tokens = g's tokens where f fires;
  mean_activation m_g = Σ a over g's tokens / all n_g of g's tokens; raw_specificity = m_g / μ_f, f's
  mean over all tokens (a lift: 1 = no preference). A raw lift of a rare gene is noisy and the top of a
  ranking by it is full of rare genes by chance, so genes are ranked by `specificity`, the lift shrunk by
  empirical Bayes: m_g ~ N(θ_g, σ_f²/n_g) with σ_f² f's variance over all tokens, θ_g ~ N(μ_f, τ_f²) with
  τ_f² by the method of moments over every gene of the dataset; specificity = (μ_f + B_g (m_g − μ_f)) /
  μ_f with B_g = τ_f² / (τ_f² + σ_f²/n_g). Ties (τ_f² = 0: no detectable preference) are broken by
  specificity_z = (m_g − μ_f) / (σ_f / √n_g), which does not favour rare or common genes under the null.
  Genes need `min_gene_tokens` firing tokens; the top `top_genes` are kept.
- feature_cells: a cell's activation is its maximum over its tokens; the top `top_cells` cells.
- feature_cell_genes: in each of a feature's top `cells_with_genes` cells, the genes (tokens) where it
  fires, strongest first (at most `genes_per_cell`), with the expression bin the model saw: what
  Neuronpedia shows as a top example's highlighted tokens.
- feature_cell_map: a feature's (max) activation in each cell drawn on the dataset's UMAP map (cells with
  `umap_1`), where it fires: what the feature pages colour the map by.
- feature_cell_types: see sae_genomics_core.features.cell_types (a cell's mean activation over its
  tokens, Welch or pseudobulk paired t-tests, shrunk fold changes with a lower bound, BH).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from sae_genomics_core.activations.store import ActivationStore, from_storage
from sae_genomics_core.features.cell_types import MIN_UNITS, CellTypeSums, replicate_cell_types
from sae_genomics_core.features.cell_types import SCHEMA as CELL_TYPE_SCHEMA
from sae_genomics_core.features.holdout import EVALUATION, SELECTION, cell_halves, replicated_claims
from sae_genomics_core.features.settings import AssociationSettings

HISTOGRAM_BINS = 20
TOP_CELLS_SCHEMA = {"feature": pl.Int64, "cell_index": pl.Int64, "max_activation": pl.Float64}
# per (feature, top cell): its firing genes, while the shards stream (FIRED) and as the table (CELL_GENES)
FIRED_SCHEMA = {
    "feature": pl.Int64,
    "cell_index": pl.Int64,
    "gene_id": pl.Int64,
    "activation": pl.Float64,
    "expression_bin": pl.Int64,
}
CELL_GENES_SCHEMA = {
    "feature": pl.Int64,
    "cell_rank": pl.Int64,
    "cell_index": pl.Int64,
    "cell_id": pl.String,
    "rank": pl.Int64,
    "gene_id": pl.Int64,
    "activation": pl.Float64,
    "expression_bin": pl.Int64,
}


@dataclass
class FeatureTables:
    stats: pl.DataFrame
    genes: pl.DataFrame
    cells: pl.DataFrame
    cell_types: pl.DataFrame
    n_tokens: int
    # the genes firing in each of a feature's top cells (gene_id: vocab token id)
    cell_genes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CELL_GENES_SCHEMA))
    cell_map: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TOP_CELLS_SCHEMA))
    # tokens by how many latents fire on them (index = L0), for the L0 histogram
    l0_counts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    # per feature, its cells' (max) activations in HISTOGRAM_BINS equal bins from 0 to below twice its
    # maximum (see _MaxHistograms)
    histograms: pl.DataFrame = field(default_factory=pl.DataFrame)
    split_unit: str = "cell"  # what the selection and evaluation halves split: cells or samples


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
    cells: pl.DataFrame,  # cell_index, cell_id, cell_type, optionally sample and umap_1
    settings: AssociationSettings | None = None,
    with_cells: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureTables:
    """All four tables; `with_cells=False` leaves feature_cells and feature_cell_types empty (baselines
    need only the genes, and the per-type tests are the slowest part). `progress(tokens, total)` after
    each shard."""
    settings = settings or AssociationSettings()
    sae = loaded.sae.to(settings.device)
    d_sae = int(sae.cfg.d_sae)
    n_cells = int(store.manifest["n_cells_total"])
    halves, split_unit = cell_halves(cells, settings.holdout_seed, MIN_UNITS, size=n_cells)
    per_cell = _PerCell(d_sae, _TypeSums(cells, d_sae, halves) if with_cells else None, settings)
    if with_cells and "umap_1" in cells.columns:
        per_cell.mapped = np.zeros(n_cells, dtype=bool)
        per_cell.mapped[cells.filter(pl.col("umap_1").is_not_null())["cell_index"].to_numpy()] = True
    totals = _Totals(d_sae, int(sae.cfg.k), halves.size, per_cell, halves)
    total = sum(int(shard["n_tokens"]) for shard in store.manifest["shards"])
    for shard in store.manifest["shards"]:
        if shard["n_tokens"] > 0:
            totals.add_shard(_encode_shard(store, layer, hook, shard, sae, loaded.normalizer, settings))
            if progress is not None:
                progress(totals.n_tokens, total)
    stats = totals.stats().with_columns(pl.Series("n_cells_active", per_cell.n_cells_active))
    keys, sums = totals.gene_totals()
    genes = totals.held_out_genes(
        keys, sums, _rank(keys, sums, totals.gene_tokens, totals.moments(), settings), settings
    )
    cell_types = (
        per_cell.cell_types.table(settings.fdr)
        if per_cell.cell_types
        else pl.DataFrame(schema=CELL_TYPE_SCHEMA)
    )
    top_cells = _cell_table(per_cell.top, cells)
    return FeatureTables(
        stats,
        genes,
        top_cells,
        cell_types,
        totals.n_tokens,
        per_cell.fired_genes(top_cells),
        pl.concat(per_cell.map_parts, how="vertical")
        if per_cell.map_parts
        else pl.DataFrame(schema=TOP_CELLS_SCHEMA),
        totals.l0_counts,
        per_cell.histograms.frame(),
        split_unit,
    )


class _TypeSums:
    """The per-type sums of all cells and of each half's cells (see features.holdout)."""

    def __init__(self, cells: pl.DataFrame, d_sae: int, halves: np.ndarray) -> None:
        self.halves = halves
        # each half counts only its own cells; all cells are their sum
        self.parts = [CellTypeSums(cells, d_sae) for _ in (SELECTION, EVALUATION)]

    def add(self, cell_index: np.ndarray, per_cell_mean: sp.csr_matrix) -> None:
        for h, part in enumerate(self.parts):
            inside = self.halves[cell_index] == h
            part.add(cell_index[inside], per_cell_mean[np.flatnonzero(inside)])

    def table(self, fdr: float) -> pl.DataFrame:
        everything = self.parts[SELECTION].combined(self.parts[EVALUATION])
        halves = [part.table() for part in self.parts]
        f1 = (self.parts[SELECTION].f1(), self.parts[EVALUATION].f1())
        return replicate_cell_types(everything.table(), *halves, fdr, f1)


@dataclass(frozen=True)
class _Firing:
    """A shard's firing tokens: per (token, feature) pair its cell, feature, activation, and the token's
    gene and expression bin."""

    owners: np.ndarray
    features: np.ndarray
    activation: np.ndarray
    gene_ids: np.ndarray
    bins: np.ndarray


@dataclass
class _EncodedShard:
    """A shard's firing (token, feature, activation) triples and its tokens' fields."""

    token_rows: np.ndarray
    features: np.ndarray
    activation: np.ndarray
    l0_counts: np.ndarray  # tokens by number of firing latents
    tokens: dict[str, np.ndarray]


def _encode_shard(
    store: ActivationStore,
    layer: int,
    hook: str,
    shard: dict[str, Any],
    sae: Any,
    normalizer: Any,
    settings: AssociationSettings,
) -> _EncodedShard:
    acts, storage, k = store.acts(layer, hook, shard["name"]), store.manifest["dtype"], int(sae.cfg.k)
    rows, cols, vals = [], [], []
    l0_counts = np.zeros(k + 1, dtype=np.int64)
    for start in range(0, shard["n_tokens"], settings.batch_tokens):
        stop = min(start + settings.batch_tokens, shard["n_tokens"])
        x = from_storage(np.asarray(acts[start:stop]), storage).float().to(settings.device)
        top_values, top_indices = encode_topk(sae, normalizer, x)
        values = top_values.cpu().numpy().astype(np.float64)
        firing = values > 0
        l0_counts += np.bincount(firing.sum(axis=1), minlength=k + 1)
        rows.append(np.repeat(np.arange(start, stop), k).reshape(-1, k)[firing])
        cols.append(top_indices.cpu().numpy()[firing])
        vals.append(values[firing])
    tokens = {name: np.asarray(column) for name, column in store.tokens(shard["name"]).items()}
    return _EncodedShard(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), l0_counts, tokens)


@dataclass(frozen=True)
class FeatureMoments:
    """Per feature over every token: the count of tokens and the first two moments of its activation."""

    n_tokens: int
    mean: np.ndarray
    variance: np.ndarray


class _Totals:
    """Running per-feature, per-(gene, feature) and per-(cell, feature) sums over the shards."""

    def __init__(
        self,
        d_sae: int,
        k: int,
        n_cells: int,
        per_cell: _PerCell | None = None,
        halves: np.ndarray | None = None,  # per cell: SELECTION or EVALUATION (None: all selection)
    ) -> None:
        self.d_sae, self.n_cells = d_sae, n_cells
        self.halves = np.full(n_cells, SELECTION, dtype=np.int8) if halves is None else halves
        self.fire_count = np.zeros(d_sae, dtype=np.int64)
        # per half (rows: SELECTION, EVALUATION): tokens, and per feature Σ activation and Σ activation²
        self.half_tokens = np.zeros(2, dtype=np.int64)
        self.act_sum = np.zeros((2, d_sae))
        self.act_squares = np.zeros((2, d_sae))
        self.held_out_fires = np.zeros(d_sae, dtype=np.int64)
        self.act_max = np.zeros(d_sae)
        self.l0_counts = np.zeros(k + 1, dtype=np.int64)
        self.gene_tokens = np.zeros(0, dtype=np.int64)
        self.held_out_gene_tokens = np.zeros(0, dtype=np.int64)
        # per (gene × d_sae + feature): firing tokens, Σ activation, Σ activation × bin, and on the
        # evaluation half Σ activation and the firing tokens
        self.gene_sums = _KeyedSums()
        self.per_cell = per_cell or _PerCell(d_sae, None, AssociationSettings(top_cells=0))

    @property
    def n_tokens(self) -> int:
        return int(self.half_tokens.sum())

    def add_shard(self, encoded: _EncodedShard) -> None:
        rows, features, activation = encoded.token_rows, encoded.features, encoded.activation
        gene_ids = encoded.tokens["gene_id"].astype(np.int64)
        owners = encoded.tokens["cell_index"].astype(np.int64)
        # the expression bin, not the stored value: the same cells registered as counts or as log1p
        # get the same bins (tahoe-x1 bins ranks within each cell), hence the same scores
        bins = encoded.tokens["bin"].astype(np.float64)
        half = self.halves[owners].astype(np.int64)
        self.half_tokens += np.bincount(half, minlength=2)
        self.l0_counts += encoded.l0_counts
        self.fire_count += np.bincount(features, minlength=self.d_sae)
        slot = half[rows] * self.d_sae + features
        self.act_sum += np.bincount(slot, weights=activation, minlength=2 * self.d_sae).reshape(2, -1)
        self.act_squares += np.bincount(slot, weights=activation**2, minlength=2 * self.d_sae).reshape(2, -1)
        self.held_out_fires += np.bincount(features[half[rows] == EVALUATION], minlength=self.d_sae)
        np.maximum.at(self.act_max, features, activation)
        self.gene_tokens = _add_counts(self.gene_tokens, gene_ids)
        self.held_out_gene_tokens = _add_counts(self.held_out_gene_tokens, gene_ids[half == EVALUATION])
        held_out = (half[rows] == EVALUATION).astype(np.float64)
        self.gene_sums.add(
            gene_ids[rows] * self.d_sae + features,
            activation,
            activation * bins[rows],
            activation * held_out,
            held_out,
        )
        self.per_cell.add_shard(
            owners, _Firing(owners[rows], features, activation, gene_ids[rows], bins[rows])
        )

    def stats(self) -> pl.DataFrame:
        fired = self.fire_count > 0
        return pl.DataFrame(
            {
                "feature": np.arange(self.d_sae, dtype=np.int64),
                "fire_count": self.fire_count,
                "frequency": self.fire_count / max(1, self.n_tokens),
                "mean_activation": np.divide(
                    self.act_sum.sum(axis=0), self.fire_count, out=np.zeros(self.d_sae), where=fired
                ),
                "max_activation": self.act_max,
            }
        )

    def moments(self, half: int | None = None) -> FeatureMoments:
        """Over every token, or over one half's."""
        rows = slice(None) if half is None else slice(half, half + 1)
        n_tokens = int(self.half_tokens[rows].sum())
        mean = self.act_sum[rows].sum(axis=0) / max(1, n_tokens)
        squares = self.act_squares[rows].sum(axis=0) / max(1, n_tokens)
        return FeatureMoments(n_tokens, mean, np.maximum(squares - mean**2, 0.0))

    def gene_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """The (gene × d_sae + feature) keys in key order (see rank_genes) and their sums."""
        keys, sums = self.gene_sums.totals(min_count=1)
        order = np.argsort(keys, kind="stable")
        return keys[order], sums[order]

    def held_out_genes(
        self, keys: np.ndarray, sums: np.ndarray, ranked: pl.DataFrame, settings: AssociationSettings
    ) -> pl.DataFrame:
        """`ranked` (the top genes over all cells) with their held-out evaluation. The claims are each
        feature's top genes ranked on the selection half alone (`selected`); on the evaluation half
        every row gets its lift (`held_out_specificity`) and a one-sided test of the feature firing on
        the gene more often than on other tokens (`held_out_p_value`, see _held_out_lift). `replicated`:
        selected and significant there, BH over every selected claim, shown or not (the rows shown were
        chosen with the evaluation half too, so a family of those alone would not hold its level)."""
        selection = self._selection_ranking(keys, sums, settings)
        shown = np.union1d(
            ranked["gene_id"].to_numpy() * self.d_sae + ranked["feature"].to_numpy(),
            selection["gene_id"].to_numpy() * self.d_sae + selection["feature"].to_numpy(),
        )
        needed = np.isin(keys, shown, assume_unique=True)  # the held-out test of these rows only
        fire_rate = self.held_out_fires / max(1, int(self.half_tokens[EVALUATION]))
        held_out = _held_out_lift(
            keys[needed], sums[needed, 3:5], self.held_out_gene_tokens, self.moments(EVALUATION), fire_rate
        )
        pair = ["feature", "gene_id"]
        claims = replicated_claims(
            selection.join(held_out, on=pair, how="left"),
            pl.lit(True),
            pl.col("held_out_p_value"),
            pl.col("held_out_specificity") > 1,
            settings.fdr,
        ).select(*pair, "selected", "held_out_q_value", "replicated")
        return (
            ranked.join(held_out, on=pair, how="left")
            .join(claims, on=pair, how="left")
            .with_columns(pl.col("selected", "replicated").fill_null(False))
        )

    def _selection_ranking(
        self, keys: np.ndarray, sums: np.ndarray, settings: AssociationSettings
    ) -> pl.DataFrame:
        """Each feature's top genes on the selection half's tokens alone."""
        selection_sums = np.column_stack([sums[:, 0] - sums[:, 4], sums[:, 1] - sums[:, 3], sums[:, 2]])
        fired = selection_sums[:, 0] > 0
        return _rank(
            keys[fired],
            selection_sums[fired],
            self.gene_tokens - _padded(self.held_out_gene_tokens, self.gene_tokens.size),
            self.moments(SELECTION),
            settings,
        ).select("feature", "gene_id")


def _padded(counts: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([counts, np.zeros(max(0, size - counts.size), dtype=counts.dtype)])


def _held_out_lift(
    keys: np.ndarray,
    held_out_sums: np.ndarray,  # per key on the evaluation half: Σ activation, firing tokens
    held_out_tokens: np.ndarray,
    moments: FeatureMoments,
    fire_rate: np.ndarray,  # per feature: its firing tokens / tokens on the evaluation half
) -> pl.DataFrame:
    """Per (gene, feature) on the evaluation half: the lift m_g / μ_f and an exact one-sided binomial
    test of the feature firing on more of the gene's tokens than its rate on all tokens. (A z-test of
    the mean is not valid here: a rarely firing feature's activations are too skewed for the normal
    tail, and null genes came out significant about ten times too often.)"""
    from scipy.stats import binom

    d_sae = moments.mean.size
    genes, features = keys // d_sae, keys % d_sae
    tokens = _padded(held_out_tokens, int(genes.max(initial=-1)) + 1)[genes]
    mean = moments.mean[features]
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where((mean > 0) & (tokens > 0), held_out_sums[:, 0] / tokens / mean, np.nan)
    p_values = binom.sf(held_out_sums[:, 1] - 1, tokens, fire_rate[features])
    return pl.DataFrame(
        {
            "feature": features.astype(np.int64),
            "gene_id": genes.astype(np.int64),
            "held_out_specificity": lift,
            "held_out_p_value": np.where(tokens > 0, p_values, np.nan),
        }
    ).with_columns(pl.col("held_out_specificity", "held_out_p_value").fill_nan(None))


def _add_counts(counts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    added = np.bincount(ids)
    if added.size > counts.size:
        counts = np.concatenate([counts, np.zeros(added.size - counts.size, dtype=np.int64)])
    counts[: added.size] += added
    return counts


class _PerCell:
    """Per-cell results, reduced at the end of each shard (every cell lives in one shard, so its
    statistics are final there) into per-feature and per-type sums: no cells × features matrix is kept.

    A cell's activation of a feature is its maximum over the cell's tokens (top cells, histograms,
    n_cells_active) or its mean over them (the cell-type tests)."""

    def __init__(self, d_sae: int, cell_types: _TypeSums | None, settings: AssociationSettings) -> None:
        self.d_sae, self.cell_types, self.top_cells = d_sae, cell_types, settings.top_cells
        self.genes_per_cell = settings.genes_per_cell
        self.cells_with_genes = min(settings.cells_with_genes, settings.top_cells)
        self.n_cells_active = np.zeros(d_sae, dtype=np.int64)
        self.histograms = _MaxHistograms(d_sae)
        self.top = pl.DataFrame(schema=TOP_CELLS_SCHEMA)
        self.fired = pl.DataFrame(schema=FIRED_SCHEMA)
        self.mapped: np.ndarray | None = None  # per cell: drawn on the map (None: no map)
        self.map_parts: list[pl.DataFrame] = []

    def add_shard(self, owners: np.ndarray, firing: _Firing) -> None:
        """owners: every token's cell; firing: the shard's firing triples."""
        shard_cells, tokens = np.unique(owners, return_counts=True)
        cell, feature, value = _reduce_per_cell(
            firing.owners, firing.features, firing.activation, self.d_sae, "amax"
        )
        self.n_cells_active += np.bincount(feature, minlength=self.d_sae)
        self.histograms.add(feature, value)
        if self.mapped is not None:
            drawn = self.mapped[cell]
            self.map_parts.append(
                pl.DataFrame(
                    {"feature": feature[drawn], "cell_index": cell[drawn], "max_activation": value[drawn]},
                    schema=TOP_CELLS_SCHEMA,
                )
            )
        if self.top_cells > 0:
            self._keep_top(cell, feature, value)
            if self.cells_with_genes > 0:
                self._keep_fired_genes(shard_cells, firing)
        if self.cell_types is not None:
            cell, feature, value = _reduce_per_cell(
                firing.owners, firing.features, firing.activation, self.d_sae, "sum"
            )
            row = np.searchsorted(shard_cells, cell)
            means = sp.csr_matrix((value / tokens[row], (row, feature)), shape=(shard_cells.size, self.d_sae))
            self.cell_types.add(shard_cells, means)

    def _keep_top(self, cell: np.ndarray, feature: np.ndarray, value: np.ndarray) -> None:
        shard = pl.DataFrame(
            {
                "feature": feature.astype(np.int64),
                "cell_index": cell.astype(np.int64),
                "max_activation": value,
            },
            schema=TOP_CELLS_SCHEMA,
        )
        self.top = (
            pl.concat([self.top, shard])
            .sort(["feature", "max_activation", "cell_index"], descending=[False, True, False])
            .group_by("feature", maintain_order=True)
            .head(self.top_cells)
        )

    def _keep_fired_genes(self, shard_cells: np.ndarray, firing: _Firing) -> None:
        """The firing genes of the pairs that entered a feature's top `cells_with_genes` cells from this
        shard (a cell lives in one shard, so its genes are complete here; a pair outside them now never
        rises into them); pairs pushed out drop theirs."""
        contenders = self.top.filter(pl.int_range(pl.len()).over("feature") < self.cells_with_genes)
        entered = contenders.filter(pl.col("cell_index").is_in(pl.Series(shard_cells)))
        if entered.height:
            # a dense (shard cells × d_sae) mask, read once per firing triple: no sort of the triples
            wanted = np.zeros(shard_cells.size * self.d_sae, dtype=bool)
            row = np.searchsorted(shard_cells, entered["cell_index"].to_numpy())
            wanted[row * self.d_sae + entered["feature"].to_numpy()] = True
            keep = wanted[np.searchsorted(shard_cells, firing.owners) * self.d_sae + firing.features]
            genes = pl.DataFrame(
                {
                    "feature": firing.features[keep].astype(np.int64),
                    "cell_index": firing.owners[keep].astype(np.int64),
                    "gene_id": firing.gene_ids[keep].astype(np.int64),
                    "activation": firing.activation[keep],
                    "expression_bin": firing.bins[keep].astype(np.int64),
                },
                schema=FIRED_SCHEMA,
            )
            genes = (
                genes.sort(
                    ["feature", "cell_index", "activation", "gene_id"], descending=[False, False, True, False]
                )
                .group_by(["feature", "cell_index"], maintain_order=True)
                .head(self.genes_per_cell)
            )
            self.fired = pl.concat([self.fired, genes])
        self.fired = self.fired.join(
            contenders.select("feature", "cell_index"), on=["feature", "cell_index"], how="semi"
        )

    def fired_genes(self, top_cells: pl.DataFrame) -> pl.DataFrame:
        """feature_cell_genes: the genes of each feature's top `cells_with_genes` cells, ranked."""
        ranked = top_cells.filter(pl.col("rank") <= self.cells_with_genes).select(
            "feature", "cell_index", "cell_id", pl.col("rank").alias("cell_rank")
        )
        return (
            self.fired.join(ranked, on=["feature", "cell_index"])
            .sort(["feature", "cell_rank", "activation", "gene_id"], descending=[False, False, True, False])
            .with_columns(
                pl.int_range(1, pl.len() + 1).over("feature", "cell_index").cast(pl.Int64).alias("rank")
            )
            .select(list(CELL_GENES_SCHEMA))
        )


def _reduce_per_cell(
    owners: np.ndarray, features: np.ndarray, activation: np.ndarray, d_sae: int, how: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, feature, value) of the shard's firing pairs reduced per cell × feature (`amax` or `sum`),
    through a dense (cells of this shard × d_sae) buffer."""
    shard_cells, local = np.unique(owners, return_inverse=True)
    buffer = torch.zeros(shard_cells.size * d_sae, dtype=torch.float64)
    buffer.scatter_reduce_(0, torch.from_numpy(local * d_sae + features), torch.from_numpy(activation), how)
    nonzero = torch.nonzero(buffer).squeeze(1).numpy()
    return shard_cells[nonzero // d_sae], nonzero % d_sae, buffer.numpy()[nonzero]


class _MaxHistograms:
    """Each feature's cells binned by activation in HISTOGRAM_BINS equal bins from 0 to a range R, counted
    shard by shard without keeping the values.

    R starts at the feature's maximum in the first shard where it fires and doubles whenever a later
    maximum exceeds it; doubling merges pairs of bins exactly (⌊x/2⌋ of the bin index, the index the
    value would get directly), so the counts are those of the final bins and R < 2 × the feature's
    maximum. One bin past the last holds values equal to R until the end (then they join the last bin,
    closed on the right like numpy's)."""

    def __init__(self, d_sae: int) -> None:
        self.range = np.zeros(d_sae)
        self.counts = np.zeros((d_sae, HISTOGRAM_BINS + 1), dtype=np.int64)

    def add(self, features: np.ndarray, values: np.ndarray) -> None:
        shard_max = np.zeros(self.range.size)
        np.maximum.at(shard_max, features, values)
        fresh = (self.range == 0) & (shard_max > 0)
        self.range[fresh] = shard_max[fresh]
        self._grow(shard_max)
        width = self.range[features] / HISTOGRAM_BINS
        bins = np.minimum((values / width).astype(np.int64), HISTOGRAM_BINS)
        self.counts += np.bincount(
            features * (HISTOGRAM_BINS + 1) + bins, minlength=self.counts.size
        ).reshape(self.counts.shape)

    def _grow(self, shard_max: np.ndarray) -> None:
        growing = np.flatnonzero(shard_max > self.range)
        if not growing.size:
            return
        doublings = np.zeros(growing.size, dtype=np.int64)
        while (short := self.range[growing] * 2.0**doublings < shard_max[growing]).any():
            doublings += short
        merged = np.zeros((growing.size, HISTOGRAM_BINS + 1), dtype=np.int64)
        rows = np.repeat(np.arange(growing.size), HISTOGRAM_BINS + 1)
        bins = np.tile(np.arange(HISTOGRAM_BINS + 1), growing.size) >> np.minimum(doublings[rows], 62)
        np.add.at(merged, (rows, bins), self.counts[growing].ravel())
        self.counts[growing] = merged
        self.range[growing] *= 2.0**doublings

    def frame(self) -> pl.DataFrame:
        counts = self.counts[:, :HISTOGRAM_BINS].copy()
        counts[:, -1] += self.counts[:, HISTOGRAM_BINS]
        feature, bin_index = np.nonzero(counts)
        width = self.range[feature] / HISTOGRAM_BINS
        return pl.DataFrame(
            {
                "feature": feature.astype(np.int64),
                "bin": bin_index.astype(np.int64),
                "bin_start": bin_index * width,
                "bin_end": (bin_index + 1) * width,
                "n_cells": counts[feature, bin_index].astype(np.int64),
            }
        )


def attach_gene_ids(gene_table: pl.DataFrame, vocab: dict[str, int], genes: pl.DataFrame) -> pl.DataFrame:
    """feature_genes rows (gene_id = vocab token id) with the dataset's ensembl_id and symbol.

    A gene without an Ensembl id (unmapped symbols; tiny-random vocabs key those by symbol) keeps a NULL
    ensembl_id, as in `genes`, and its symbol (the token where the dataset names none).
    """
    token_of = pl.DataFrame(
        {"gene_id": list(vocab.values()), "token": list(vocab.keys())},
        schema={"gene_id": pl.Int64, "token": pl.String},
    )
    names = genes.select(pl.coalesce("ensembl_id", "symbol").alias("token"), "ensembl_id", "symbol").unique(
        "token"
    )
    joined = gene_table.join(token_of, on="gene_id", how="left").join(names, on="token", how="left")
    return joined.with_columns(pl.coalesce("symbol", "token").alias("symbol")).drop("token")


class _KeyedSums:
    """Per int64 key: the count and the sums of some weights, over every batch added.

    Hash aggregation (polars) rather than a sort per batch; batches are folded into one running total
    only when they outgrow it, so memory stays within twice the distinct keys (or one fold threshold).
    """

    FOLD_ROWS = 4_000_000

    def __init__(self) -> None:
        self.parts: list[pl.DataFrame] = []
        self.pending_rows = 0
        self.total_rows = 0
        self.n_weights = 0

    def add(self, keys: np.ndarray, *weights: np.ndarray) -> None:
        # 12 + 4 bytes per weight a row until folded (sums are taken in float64)
        self.n_weights = len(weights)
        columns = {f"w{i}": w.astype(np.float32) for i, w in enumerate(weights)}
        self.parts.append(pl.DataFrame({"key": keys, "count": np.ones(keys.size, dtype=np.int32), **columns}))
        self.pending_rows += keys.size
        if self.pending_rows > max(self.total_rows, self.FOLD_ROWS):
            self._fold()

    def _fold(self) -> None:
        weights = [f"w{i}" for i in range(self.n_weights)]
        folded = (
            pl.concat(self.parts, how="vertical_relaxed")
            .group_by("key")
            .agg(pl.col("count").cast(pl.Int64).sum(), pl.col(weights).cast(pl.Float64).sum())
        )
        self.parts, self.pending_rows, self.total_rows = [folded], 0, folded.height

    def totals(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Keys counted at least `min_count` times (in no particular order) and their (count, weight
        sums…) as columns."""
        if not self.parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 1 + self.n_weights))
        self._fold()
        folded = self.parts[0].filter(pl.col("count") >= min_count)
        return folded["key"].to_numpy(), folded.drop("key").to_numpy()


def rank_genes(
    gene_sums: _KeyedSums, gene_tokens: np.ndarray, moments: FeatureMoments, settings: AssociationSettings
) -> pl.DataFrame:
    """Each feature's top genes by empirical-Bayes shrunk lift (see the module docstring).

    gene_sums: per (gene × d_sae + feature) the firing tokens, Σ a, Σ a × bin (and held-out sums); gene_tokens: every
    token of each gene, firing or not. Columns: feature, gene_id, score, n_tokens, mean_activation,
    specificity (shrunk lift), raw_specificity (observed lift), specificity_z, rank.
    """
    keys, sums = gene_sums.totals(min_count=1)
    # key order: the groups come back in a different order each run, and the sums over them below must
    # round the same way for a re-run to write the same bits
    order = np.argsort(keys, kind="stable")
    return _rank(keys[order], sums[order], gene_tokens, moments, settings)


def _rank(
    keys: np.ndarray,
    sums: np.ndarray,
    gene_tokens: np.ndarray,
    moments: FeatureMoments,
    settings: AssociationSettings,
) -> pl.DataFrame:
    """rank_genes on (gene × d_sae + feature) keys in a fixed order; sums: firing tokens, Σ a, Σ a × bin."""
    d_sae = moments.mean.size
    gene_mean = sums[:, 1] / gene_tokens[keys // d_sae]
    prior_all = _prior_variance(keys % d_sae, gene_mean, gene_tokens, moments)  # needs every pair
    supported = sums[:, 0] >= max(1, settings.min_gene_tokens)  # the others can never be ranked
    keys, sums, gene_mean = keys[supported], sums[supported], gene_mean[supported]
    genes, features = keys // d_sae, keys % d_sae
    mean, prior = moments.mean[features], prior_all[features]
    noise = moments.variance[features] / gene_tokens[genes]
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(prior > 0, prior / (prior + noise), 0.0)
        lift = np.where(mean > 0, gene_mean / mean, 0.0)
        z = np.where(noise > 0, (gene_mean - mean) / np.sqrt(noise), 0.0)
    frame = pl.DataFrame(
        {
            "feature": features.astype(np.int64),
            "gene_id": genes.astype(np.int64),
            "score": sums[:, 2],
            "n_tokens": sums[:, 0].astype(np.int64),
            "mean_activation": gene_mean,
            "specificity": 1.0 + weight * (lift - 1.0),
            "raw_specificity": lift,
            "specificity_z": z,
        }
    )
    # ties (no spread between genes: every lift shrunk to 1) go to the z-score, which does not favour
    # rare or common genes under the null
    ranked = frame.sort(  # then gene_id: the rank of exact ties must not depend on the input order
        ["feature", "specificity", "specificity_z", "gene_id"], descending=[False, True, True, False]
    )
    ranked = ranked.with_columns(pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64).alias("rank"))
    return ranked.filter(pl.col("rank") <= settings.top_genes)


def _prior_variance(
    features: np.ndarray, gene_mean: np.ndarray, gene_tokens: np.ndarray, moments: FeatureMoments
) -> np.ndarray:
    """Per feature, the spread of true gene means around the feature's mean (method of moments): the
    observed mean squared deviation over every gene with tokens minus the sampling variance σ²/n_g."""
    present = gene_tokens[gene_tokens > 0].astype(np.float64)
    n_genes, inverse_tokens = present.size, (1.0 / present).sum() if present.size else 0.0
    d_sae = moments.mean.size
    # genes on which the feature never fires have mean 0: deviation μ², counted for all, corrected here
    fired = np.bincount(
        features,
        weights=(gene_mean - moments.mean[features]) ** 2 - moments.mean[features] ** 2,
        minlength=d_sae,
    )
    deviation = fired + n_genes * moments.mean**2
    return np.maximum(0.0, (deviation - moments.variance * inverse_tokens) / max(1, n_genes))


def _cell_table(top: pl.DataFrame, cells: pl.DataFrame) -> pl.DataFrame:
    ranked = top.with_columns(pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64).alias("rank"))
    return ranked.join(cells.select("cell_index", "cell_id"), on="cell_index", how="left")
