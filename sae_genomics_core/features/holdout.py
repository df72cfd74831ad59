"""Held-out evaluation: every claim is selected on one half of the data and tested on the other.

Selecting a feature's best genes, cell types or terms and reporting them on the same data inflates
them (winner's curse; InterPLM picks each concept's feature on validation shards and reports it on test
shards). So the cells (and, for term claims built from genes, the genes) are split in two with a seed:
- a claim is `selected` when it passes on the selection half;
- it is `replicated` when, on the evaluation half, it points the same way and passes BH at the same
  level over the selected claims of its table (the family a reader is shown).

The split is stratified: each cell type's cells alternate between the halves in a random order, so every
type is tested on both. Cells of one sample are not independent, so with enough samples for a paired
test in each half (2 × MIN_UNITS) whole samples alternate instead, and the halves share no donor.
Genes are split by a hash of (seed, Ensembl id): a gene falls in the same half in every dataset.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
from statsmodels.stats.multitest import multipletests

SELECTION, EVALUATION = 0, 1
HELD_OUT_COLUMNS = ("selected", "held_out_p_value", "held_out_q_value", "replicated")


def cell_halves(cells: pl.DataFrame, seed: int, min_units: int, size: int = 0) -> tuple[np.ndarray, str]:
    """Per cell_index (an array of at least `size`, and past the largest index): SELECTION or
    EVALUATION, and the unit split ("sample" or "cell"). Cells not in `cells` fall in the selection half."""
    size = max(size, int(cells["cell_index"].max() or 0) + 1 if cells.height else 0)
    halves = np.full(size, SELECTION, dtype=np.int8)
    if not cells.height:
        return halves, "cell"
    rng = np.random.default_rng(seed)
    sample = (
        cells["sample"].cast(pl.String) if "sample" in cells.columns else pl.Series([None] * cells.height)
    )
    samples = sample.drop_nulls().unique().sort()
    if samples.len() >= 2 * min_units and sample.null_count() == 0:
        half_of_sample = dict(
            zip(samples.to_list(), (rng.permutation(samples.len()) % 2).tolist(), strict=True)
        )
        halves[cells["cell_index"].to_numpy()] = sample.replace_strict(half_of_sample).to_numpy()
        return halves, "sample"
    strata = cells["cell_type"].fill_null("").to_numpy().astype(str)
    for stratum in np.unique(strata):
        members = cells["cell_index"].to_numpy()[strata == stratum]
        halves[rng.permutation(members)] = np.arange(members.size) % 2
    return halves, "cell"


def gene_half(ensembl_ids: pl.Series, seed: int) -> pl.Series:
    """SELECTION or EVALUATION per gene, from a hash of (seed, id): the same in every dataset."""
    return ensembl_ids.map_elements(
        lambda gene: hashlib.blake2b(f"{seed}:{gene}".encode(), digest_size=1).digest()[0] % 2,
        return_dtype=pl.Int8,
    )


def replicated_claims(
    claims: pl.DataFrame,
    selected: pl.Expr,
    held_out_p: pl.Expr,
    same_direction: pl.Expr,
    fdr: float,
) -> pl.DataFrame:
    """`claims` with `selected`, `held_out_p_value`, `held_out_q_value` (BH over the selected claims)
    and `replicated` (selected, the same direction on the evaluation half, held-out q ≤ fdr)."""
    flagged = claims.with_columns(
        selected.fill_null(False).alias("selected"), held_out_p.alias("held_out_p_value")
    )
    chosen = flagged["selected"].to_numpy()
    q_values = np.full(flagged.height, np.nan)
    if chosen.any():
        p_values = np.nan_to_num(flagged["held_out_p_value"].to_numpy()[chosen].astype(float), nan=1.0)
        q_values[chosen] = multipletests(p_values, method="fdr_bh")[1]
    return flagged.with_columns(pl.Series("held_out_q_value", q_values).fill_nan(None)).with_columns(
        (pl.col("selected") & same_direction.fill_null(False) & (pl.col("held_out_q_value") <= fdr))
        .fill_null(False)
        .alias("replicated")
    )
