"""Which cell types does a feature prefer? One test per feature × cell type (type vs the other cells).

The per-cell statistic is the feature's mean activation over the cell's tokens (Σ activation / tokens).
A cell's maximum over its tokens grows with its number of tokens (more draws, higher maximum), so types
whose cells express more genes would win for almost every feature; the mean does not grow with the
token count. Its spread does shrink with more tokens, so a rank test (which compares whole
distributions) would still be biased; the test compares means with Welch's unequal-variance t-test
(one-sided, type > rest), which holds its level when only the spread differs.

Units: cells, unless the cells carry a sample (donor) column with at least two samples. Cells of one
sample are not independent, so then each sample gives one pseudobulk pair (mean of its cells of the
type, mean of its other cells) and a paired one-sided t-test runs over the samples holding both.

Effect size: log2 fold change of the unit means with a pseudocount of `PSEUDOCOUNT_FRACTION` × the
feature's mean over all tested cells (a fixed 1e-6 gives log2FC ≈ 20 whenever the rest is silent), and
its one-sided lower confidence bound (delta method), which `feature_summary` ranks by so that a small,
noisy type does not win on a lucky mean (winner's curse).

BH q-values over every feature × type of the dataset × layer; pairs that could not be tested count
as p = 1.
"""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sae_genomics_core.features.holdout import replicated_claims

PSEUDOCOUNT_FRACTION = 0.1  # of the feature's mean over all cells: a type must clear a tenth of it
LOWER_BOUND_LEVEL = 0.95  # one-sided confidence of log2_fold_change_lower
MIN_UNITS = 2  # per side of a test: a t-test needs a variance

SCHEMA = {
    "feature": pl.Int64,
    "cell_type": pl.String,
    "mean_activation": pl.Float64,
    "mean_activation_rest": pl.Float64,
    "frac_active": pl.Float64,
    "log2_fold_change": pl.Float64,
    "log2_fold_change_lower": pl.Float64,
    "p_value": pl.Float64,
    "q_value": pl.Float64,
    "n_cells": pl.Int64,
    "test_unit": pl.String,
    "n_units": pl.Int64,
    "selected": pl.Boolean,
    "held_out_log2_fold_change": pl.Float64,
    "held_out_p_value": pl.Float64,
    "held_out_q_value": pl.Float64,
    "replicated": pl.Boolean,
    "held_out_f1": pl.Float64,
    "best_for_type": pl.Boolean,
}
TESTED_COLUMNS = list(SCHEMA)[: list(SCHEMA).index("selected")]  # what CellTypeSums.table gives


def replicate_cell_types(
    table: pl.DataFrame,
    selection: pl.DataFrame,
    evaluation: pl.DataFrame,
    fdr: float,
    f1: tuple[pl.DataFrame, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """The table over all cells with each pair's held-out evaluation (features.holdout): selected when
    significant with a positive lower bound on the selection half's cells; replicated when the evaluation
    half's one-sided test agrees (BH over the selected pairs). With `f1` (CellTypeSums.f1 of the
    selection and the evaluation half), each type's best feature as a detector of the type, InterPLM's
    per-concept best feature: `best_for_type` picked by F1 on the selection half, `held_out_f1` its F1
    (and every other pair's) on the evaluation half."""
    keys = ["feature", "cell_type"]
    passing = (pl.col("q_value") <= fdr) & (pl.col("log2_fold_change_lower") > 0)
    chosen = selection.filter(passing).select(*keys, pl.lit(True).alias("selected"))
    held_out = evaluation.select(
        *keys,
        pl.col("log2_fold_change").alias("held_out_log2_fold_change"),
        pl.col("p_value").alias("held_out_p_value"),
    )
    joined = table.join(chosen, on=keys, how="left").join(held_out, on=keys, how="left")
    claims = replicated_claims(
        joined, pl.col("selected"), pl.col("held_out_p_value"), pl.col("held_out_log2_fold_change") > 0, fdr
    )
    if f1 is None:
        claims = claims.with_columns(
            pl.lit(None, pl.Float64).alias("held_out_f1"), pl.lit(False).alias("best_for_type")
        )
    else:
        best = (
            f1[0]
            .sort(["cell_type", "f1", "feature"], descending=[False, True, False])
            .group_by("cell_type", maintain_order=True)
            .head(1)
            .select(*keys, pl.lit(True).alias("best_for_type"))
        )
        claims = (
            claims.join(f1[1].rename({"f1": "held_out_f1"}), on=keys, how="left")
            .join(best, on=keys, how="left")
            .with_columns(pl.col("best_for_type").fill_null(False))
        )
    return claims.select(list(SCHEMA))


def cell_type_table(per_cell_mean: sp.csr_matrix, cells: pl.DataFrame) -> pl.DataFrame:
    """feature_cell_types rows from a whole cells × features matrix (a cell's mean activation over its
    tokens); cells: cell_index, cell_type and optionally sample, only the cells the model saw."""
    sums = CellTypeSums(cells, per_cell_mean.shape[1])
    indices = cells["cell_index"].to_numpy()
    sums.add(indices, per_cell_mean[indices])
    return sums.table()


class CellTypeSums:
    """What the per-type tests need, added cells at a time, so no cells × features matrix is kept: per
    (cell type, feature) Σx, Σx² and the cells with x > 0, and per (sample, cell type, feature) Σx.

    Memory: (3 × types + samples × types) × features floats, whatever the number of cells. Only the cells
    passed to `add` count (the model's skipped cells are not counted as silent)."""

    def __init__(self, cells: pl.DataFrame, n_features: int) -> None:
        typed = cells.filter(pl.col("cell_type").is_not_null())
        indices = typed["cell_index"].to_numpy()
        size = int(cells["cell_index"].max() or 0) + 1 if cells.height else 0
        self.types, type_ids = np.unique(typed["cell_type"].to_numpy().astype(str), return_inverse=True)
        self.type_of = np.full(size, -1, dtype=np.int64)
        self.type_of[indices] = type_ids
        self.sample_ids, self.group_of = _sample_groups(typed, indices, size, self.types.size)
        self.seen = np.zeros(size, dtype=bool)
        shape = (self.types.size, n_features)
        self.sums, self.squares, self.active = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.group_sums = np.zeros((self.sample_ids.size * self.types.size, n_features))

    def f1(self) -> pl.DataFrame:
        """Per cell type × feature (fired on some cell): F1 of "the feature fires in the cell" as a detector
        of the type, over the cells added: 2·TP / (cells of the type + cells where the feature fires)."""
        seen_types = self.type_of[self.seen & (self.type_of >= 0)]
        counts = np.bincount(seen_types, minlength=self.types.size).astype(np.float64)
        fired = self.active.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = 2 * self.active / (counts[:, None] + fired[None, :])
        type_index, feature = np.nonzero((counts[:, None] > 0) & (fired[None, :] > 0))
        return pl.DataFrame(
            {
                "feature": feature.astype(np.int64),
                "cell_type": self.types[type_index].astype(str),
                "f1": scores[type_index, feature],
            }
        )

    def combined(self, other: CellTypeSums) -> CellTypeSums:
        """The sums of both sets of cells (built from the same cells table: the same types and groups)."""
        both = copy.copy(self)
        both.seen = self.seen | other.seen
        for name in ("sums", "squares", "active", "group_sums"):
            setattr(both, name, getattr(self, name) + getattr(other, name))
        return both

    def add(self, cell_index: np.ndarray, per_cell_mean: sp.csr_matrix) -> None:
        """Cells (each added once) and their rows of mean activations."""
        self.seen[cell_index] = True
        typed = self.type_of[cell_index] >= 0
        rows = sp.csr_matrix(per_cell_mean)[typed]
        self.sums += _summed_by(self.type_of[cell_index[typed]], self.types.size, rows)
        self.squares += _summed_by(self.type_of[cell_index[typed]], self.types.size, rows.multiply(rows))
        self.active += _summed_by(self.type_of[cell_index[typed]], self.types.size, (rows > 0).astype(float))
        if self.sample_ids.size:
            self.group_sums += _summed_by(self.group_of[cell_index[typed]], self.group_sums.shape[0], rows)

    def table(self) -> pl.DataFrame:
        seen_types = self.type_of[self.seen & (self.type_of >= 0)]
        counts = np.bincount(seen_types, minlength=self.types.size)
        tested = self.active.sum(axis=0) > 0  # features silent on every typed cell are not tested
        if counts.sum() == 0 or not tested.any():
            return pl.DataFrame(schema={name: SCHEMA[name] for name in TESTED_COLUMNS})
        by_sample = self._sample_counts()
        frames = [
            self._type_rows(t, counts, tested, by_sample)
            for t in range(self.types.size)
            if 0 < counts[t] < counts.sum()
        ]
        if not frames:
            return pl.DataFrame(schema={name: SCHEMA[name] for name in TESTED_COLUMNS})
        table = pl.concat(frames).sort("feature", "cell_type")
        n_untested = self.sums.shape[1] * int((counts > 0).sum()) - table.height
        p_values = np.concatenate([table["p_value"].to_numpy(), np.ones(max(0, n_untested))])
        q_values = multipletests(p_values, method="fdr_bh")[1][: table.height]
        undefined = ["log2_fold_change", "log2_fold_change_lower"]  # NaN where a side had too few units
        return table.with_columns(pl.Series("q_value", q_values), pl.col(undefined).fill_nan(None)).select(
            TESTED_COLUMNS
        )

    def _sample_counts(self) -> np.ndarray | None:
        """Seen cells per (sample, type) when the seen typed cells come from at least two samples."""
        if not self.sample_ids.size:
            return None
        groups = self.group_of[self.seen & (self.group_of >= 0)]
        counts = np.bincount(groups, minlength=self.group_sums.shape[0]).reshape(-1, self.types.size)
        return counts if (counts.sum(axis=1) > 0).sum() >= 2 else None

    def _type_rows(
        self, t: int, counts: np.ndarray, tested: np.ndarray, by_sample: np.ndarray | None
    ) -> pl.DataFrame:
        n_in, n_all = counts[t], counts.sum()
        total = self.sums.sum(axis=0)[tested]
        inside = _Moments(n_in, self.sums[t, tested], self.squares[t, tested])
        rest = _Moments(n_all - n_in, total - inside.sum, self.squares.sum(axis=0)[tested] - inside.squares)
        pseudocount = PSEUDOCOUNT_FRACTION * total / n_all + 1e-12
        if by_sample is None:
            p_values = _welch_greater(inside, rest)
            fold, lower = _log2_fold_change(
                inside.mean, inside.squared_se, rest.mean, rest.squared_se, pseudocount
            )
            unit, n_units = "cell", int(n_in)
        else:
            units_in, units_out = self._pseudobulk_pairs(t, by_sample, tested)
            p_values = _paired_greater(units_in, units_out)
            fold, lower = _units_fold_change(units_in, units_out, pseudocount)
            unit, n_units = "sample", units_in.shape[0]
        n_features = int(tested.sum())
        return pl.DataFrame(
            {
                "feature": np.flatnonzero(tested).astype(np.int64),
                "cell_type": [str(self.types[t])] * n_features,
                "mean_activation": inside.mean,
                "mean_activation_rest": rest.mean,
                "frac_active": self.active[t, tested] / n_in,
                "log2_fold_change": fold,
                "log2_fold_change_lower": lower,
                "p_value": p_values,
                "n_cells": np.full(n_features, int(n_in), dtype=np.int64),
                "test_unit": [unit] * n_features,
                "n_units": np.full(n_features, n_units, dtype=np.int64),
            }
        )

    def _pseudobulk_pairs(
        self, t: int, by_sample: np.ndarray, tested: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per sample holding cells of the type and other cells: (mean of the type's cells, mean of the rest)."""
        sums = self.group_sums[:, tested].reshape(self.sample_ids.size, self.types.size, -1)
        count_in, count_out = by_sample[:, t], by_sample.sum(axis=1) - by_sample[:, t]
        paired = (count_in > 0) & (count_out > 0)
        sum_in = sums[paired, t]
        sum_out = sums[paired].sum(axis=1) - sum_in
        return sum_in / count_in[paired, None], sum_out / count_out[paired, None]


class _Moments:
    """n cells' Σx and Σx², and the mean, variance (ddof 1) and squared standard error they give."""

    def __init__(self, n: int, sums: np.ndarray, squares: np.ndarray) -> None:
        self.n, self.sum, self.squares = int(n), sums, squares
        self.mean = sums / max(1, self.n)
        # Σx² − n·mean² can fall a rounding error below 0 when every cell is alike
        self.variance = np.maximum(squares - self.n * self.mean**2, 0.0) / max(1, self.n - 1)

    @property
    def squared_se(self) -> np.ndarray:
        if self.n < MIN_UNITS:
            return np.full(self.mean.size, np.nan)  # no spread to estimate: no bound (NULL)
        return self.variance / self.n


def _summed_by(groups: np.ndarray, n_groups: int, rows: sp.csr_matrix) -> np.ndarray:
    """Σ of the rows per group, as a dense n_groups × columns array."""
    indicator = sp.csr_matrix(
        (np.ones(groups.size), (groups, np.arange(groups.size))), shape=(n_groups, groups.size)
    )
    return (indicator @ rows).toarray()


def _sample_groups(
    typed: pl.DataFrame, indices: np.ndarray, size: int, n_types: int
) -> tuple[np.ndarray, np.ndarray]:
    """The samples and each cell's (sample, type) group, when every typed cell carries a sample."""
    group_of = np.full(size, -1, dtype=np.int64)
    if "sample" not in typed.columns or typed["sample"].null_count() > 0 or typed.height == 0:
        return np.zeros(0, dtype=str), group_of
    sample_ids, sample_of = np.unique(
        typed["sample"].cast(pl.String).to_numpy().astype(str), return_inverse=True
    )
    _, type_of = np.unique(typed["cell_type"].to_numpy().astype(str), return_inverse=True)
    group_of[indices] = sample_of * n_types + type_of
    return sample_ids, group_of


def _welch_greater(inside: _Moments, rest: _Moments) -> np.ndarray:
    if min(inside.n, rest.n) < MIN_UNITS:
        return np.ones(inside.mean.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.ttest_ind_from_stats(
            inside.mean,
            np.sqrt(inside.variance),
            inside.n,
            rest.mean,
            np.sqrt(rest.variance),
            rest.n,
            equal_var=False,
            alternative="greater",
        )
    return np.nan_to_num(result.pvalue, nan=1.0)  # nan: no variance on either side


def _paired_greater(units_in: np.ndarray, units_out: np.ndarray) -> np.ndarray:
    if units_in.shape[0] < MIN_UNITS:
        return np.ones(units_in.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.ttest_rel(units_in, units_out, axis=0, alternative="greater")
    return np.nan_to_num(result.pvalue, nan=1.0)


def _units_fold_change(
    units_in: np.ndarray, units_out: np.ndarray, pseudocount: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if units_in.shape[0] == 0:
        missing = np.full(pseudocount.size, np.nan)
        return missing, missing
    inside, rest = (_Moments(u.shape[0], u.sum(axis=0), (u**2).sum(axis=0)) for u in (units_in, units_out))
    return _log2_fold_change(inside.mean, inside.squared_se, rest.mean, rest.squared_se, pseudocount)


def _log2_fold_change(
    mean_in: np.ndarray,
    squared_se_in: np.ndarray,
    mean_out: np.ndarray,
    squared_se_out: np.ndarray,
    pseudocount: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """log2((m_in + c) / (m_out + c)) and its one-sided lower confidence bound (delta method)."""
    shifted_in, shifted_out = mean_in + pseudocount, mean_out + pseudocount
    fold = np.log2(shifted_in / shifted_out)
    variance = squared_se_in / shifted_in**2 + squared_se_out / shifted_out**2
    z = stats.norm.ppf(LOWER_BOUND_LEVEL)
    return fold, fold - z * np.sqrt(variance) / np.log(2)
