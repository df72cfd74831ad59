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

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests

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
}


def cell_type_table(per_cell_mean: sp.csr_matrix, cells: pl.DataFrame, chunk: int = 256) -> pl.DataFrame:
    """feature_cell_types rows. per_cell_mean: cells × features (a cell's mean activation over its
    tokens); cells: cell_index, cell_type and optionally sample, only the cells the model saw."""
    typed = cells.filter(pl.col("cell_type").is_not_null())
    if typed.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    labels = typed["cell_type"].to_numpy().astype(str)
    samples = _samples(typed)
    matrix = per_cell_mean[typed["cell_index"].to_numpy()].tocsc()
    types = np.unique(labels)
    frames = []
    for first in range(0, matrix.shape[1], chunk):
        block = matrix[:, first : first + chunk].toarray()  # cells × chunk features
        active = (block > 0).any(axis=0)
        if active.any():
            features = np.arange(first, first + block.shape[1])[active]
            frames += _block_tests(block[:, active], features, labels, types, samples)
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    table = pl.concat(frames)
    n_untested = matrix.shape[1] * types.size - table.height
    p_values = np.concatenate([table["p_value"].to_numpy(), np.ones(max(0, n_untested))])
    q_values = multipletests(p_values, method="fdr_bh")[1][: table.height]
    undefined = ["log2_fold_change", "log2_fold_change_lower"]  # NaN where a side had too few units
    return table.with_columns(pl.Series("q_value", q_values), pl.col(undefined).fill_nan(None)).select(
        list(SCHEMA)
    )


def _samples(typed: pl.DataFrame) -> np.ndarray | None:
    """Sample labels when the cells carry at least two samples (every typed cell labelled), else None."""
    if "sample" not in typed.columns or typed["sample"].null_count() > 0:
        return None
    samples = typed["sample"].cast(pl.String).to_numpy()
    return samples if np.unique(samples).size >= 2 else None


def _block_tests(
    block: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    types: np.ndarray,
    samples: np.ndarray | None,
) -> list[pl.DataFrame]:
    pseudocount = PSEUDOCOUNT_FRACTION * block.mean(axis=0) + 1e-12
    frames = []
    for cell_type in types:
        inside = labels == cell_type
        if inside.all():
            continue
        if samples is None:
            units_in, units_out = block[inside], block[~inside]
            p_values = _welch_greater(units_in, units_out)
            unit, n_units = "cell", int(inside.sum())
        else:
            units_in, units_out = _pseudobulk_pairs(block, inside, samples)
            p_values = _paired_greater(units_in, units_out)
            unit, n_units = "sample", units_in.shape[0]
        fold, lower = _log2_fold_change(units_in, units_out, pseudocount)
        frames.append(
            pl.DataFrame(
                {
                    "feature": features.astype(np.int64),
                    "cell_type": [str(cell_type)] * features.size,
                    "mean_activation": block[inside].mean(axis=0),
                    "mean_activation_rest": block[~inside].mean(axis=0),
                    "frac_active": (block[inside] > 0).mean(axis=0),
                    "log2_fold_change": fold,
                    "log2_fold_change_lower": lower,
                    "p_value": p_values,
                    "n_cells": np.full(features.size, int(inside.sum()), dtype=np.int64),
                    "test_unit": [unit] * features.size,
                    "n_units": np.full(features.size, n_units, dtype=np.int64),
                }
            )
        )
    return frames


def _welch_greater(group: np.ndarray, rest: np.ndarray) -> np.ndarray:
    if min(group.shape[0], rest.shape[0]) < MIN_UNITS:
        return np.ones(group.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.ttest_ind(group, rest, axis=0, equal_var=False, alternative="greater")
    return np.nan_to_num(result.pvalue, nan=1.0)  # nan: no variance on either side


def _pseudobulk_pairs(
    block: np.ndarray, inside: np.ndarray, samples: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample holding cells of the type and other cells: (mean of the type's cells, mean of the rest)."""
    sample_ids, sample_of = np.unique(samples, return_inverse=True)
    n_samples = sample_ids.size

    def means(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(sample_of[mask], minlength=n_samples)
        totals = np.zeros((n_samples, block.shape[1]))
        np.add.at(totals, sample_of[mask], block[mask])
        return totals / np.maximum(counts, 1)[:, None], counts

    mean_in, count_in = means(inside)
    mean_out, count_out = means(~inside)
    paired = (count_in > 0) & (count_out > 0)
    return mean_in[paired], mean_out[paired]


def _paired_greater(units_in: np.ndarray, units_out: np.ndarray) -> np.ndarray:
    if units_in.shape[0] < MIN_UNITS:
        return np.ones(units_in.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.ttest_rel(units_in, units_out, axis=0, alternative="greater")
    return np.nan_to_num(result.pvalue, nan=1.0)


def _log2_fold_change(
    units_in: np.ndarray, units_out: np.ndarray, pseudocount: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """log2((m_in + c) / (m_out + c)) and its one-sided lower confidence bound (delta method)."""
    if units_in.shape[0] == 0 or units_out.shape[0] == 0:
        missing = np.full(pseudocount.size, np.nan)
        return missing, missing
    mean_in, mean_out = units_in.mean(axis=0) + pseudocount, units_out.mean(axis=0) + pseudocount
    fold = np.log2(mean_in / mean_out)
    variance = _squared_se(units_in) / mean_in**2 + _squared_se(units_out) / mean_out**2
    z = stats.norm.ppf(LOWER_BOUND_LEVEL)
    return fold, fold - z * np.sqrt(variance) / np.log(2)


def _squared_se(units: np.ndarray) -> np.ndarray:
    if units.shape[0] < MIN_UNITS:
        return np.full(units.shape[1], np.nan)  # no spread to estimate: no bound (NULL)
    return units.var(axis=0, ddof=1) / units.shape[0]
