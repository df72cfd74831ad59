"""Baselines for every enrichment claim: PCA and random directions of the same activations.

A claim that "x% of SAE features are biologically meaningful" means little until simpler directions
go through the very same path (bio-sae's revision: top PCA axes annotated at 0.98 vs 0.90–0.93 for SAE
features). Each baseline is an encoder with the SAE's interface, so `associate` ties it to genes
exactly as it does the SAE, and `enrich` tests its gene sets with the same settings:

- PCA: the top principal axes of the SAE's (normalised, centred) input, in order of explained
  variance, as many as explain `PCA_VARIANCE` of it (at most half the units), each taken with both
  signs (a ReLU unit reads one side of an axis): low-variance axes are noise, not a fair rival;
- random: as many random unit directions (seeded) as requested, centred the same way.

Firing is matched unit by unit, not on average: a baseline unit is a ReLU with its own threshold
(activation = max(0, projection − threshold)), the threshold set on a sample of tokens so that the unit
fires on the fraction of tokens that the SAE feature of the same rank does (the SAE's firing rates at
the baseline units' quantiles, dealt to the units in seeded random order). A feature that fires on 0.3 %
of tokens is thus compared with directions that also fire on 0.3 %, and no baseline unit fires on 40 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import torch

from sae_genomics_core.activations.store import ActivationStore, from_storage
from sae_genomics_core.errors import InputError, SettingsError

# top PCA axes explaining this fraction of the input's variance make the PCA baseline
PCA_VARIANCE = 0.9
# firing thresholds: per-unit histograms of the standardised projection, this many bins over ±_SPAN s.d.
_BINS = 4096
_SPAN = 16.0


@dataclass
class DirectionEncoder:
    """The slice of a sae-lens TopK SAE that `encode_topk` and `associate` use, for fixed directions."""

    W_enc: torch.Tensor  # d_in × units
    b_enc: torch.Tensor
    b_dec: torch.Tensor  # subtracted from the input: the centring mean
    cfg: Any

    def to(self, device: str) -> DirectionEncoder:
        return DirectionEncoder(self.W_enc.to(device), self.b_enc.to(device), self.b_dec.to(device), self.cfg)


@dataclass
class BaselineModel:
    """Shaped like sae_genomics_core.sae.checkpoint.LoadedSae for `associate`."""

    sae: DirectionEncoder
    normalizer: Any
    method: str


def _encoder(directions: torch.Tensor, mean: torch.Tensor) -> DirectionEncoder:
    """Every unit active at once with threshold 0, until `match_firing_rates` sets the thresholds."""
    units = directions.shape[1]
    config = SimpleNamespace(k=units, d_sae=units, apply_b_dec_to_input=True)
    return DirectionEncoder(directions.contiguous(), torch.zeros(units), mean, config)


def sample_batches(
    store: ActivationStore, layer: int, hook: str, normalizer: Any, max_tokens: int
) -> Iterator[torch.Tensor]:
    """The normalised activations of up to `max_tokens` tokens spread evenly over the shards, a shard at
    a time (the same tokens on every call)."""
    shards = [s for s in store.manifest["shards"] if s["n_tokens"]]
    total = sum(s["n_tokens"] for s in shards)
    if total == 0:
        raise InputError("the activation store holds no tokens")
    stride = max(1, -(-total // max_tokens))
    storage = store.manifest["dtype"]
    for shard in shards:
        yield normalizer(
            from_storage(np.asarray(store.acts(layer, hook, shard["name"])[::stride]), storage).float()
        )


@torch.no_grad()
def input_moments(
    store: ActivationStore, layer: int, hook: str, normalizer: Any, max_tokens: int = 200_000
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and covariance of the normalised activations over up to `max_tokens` tokens spread evenly
    over the shards (accumulated in float64, one shard at a time)."""
    count, first, second = 0, None, None
    for batch in sample_batches(store, layer, hook, normalizer, max_tokens):
        x = batch.double()
        first = x.sum(0) if first is None else first + x.sum(0)
        second = x.T @ x if second is None else second + x.T @ x
        count += x.shape[0]
    assert first is not None and second is not None
    mean = first / count
    covariance = second / count - torch.outer(mean, mean)
    return mean.float(), covariance, count


def pca_model(
    mean: torch.Tensor,
    covariance: torch.Tensor,
    normalizer: Any,
    n_units: int,
    variance: float = PCA_VARIANCE,
) -> BaselineModel:
    """±principal axes by decreasing variance: the fewest top axes that explain `variance` of the total,
    at most ceil(n_units / 2), so at most n_units units."""
    if not 0 < variance <= 1:
        raise SettingsError("the PCA baseline's explained-variance fraction must be in (0, 1]")
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues, axes = eigenvalues.flip(0).clamp_min(0), vectors.flip(1).float()  # by decreasing variance
    explained = torch.cumsum(eigenvalues, 0) / eigenvalues.sum().clamp_min(
        torch.finfo(eigenvalues.dtype).tiny
    )
    needed = int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype) - 1e-12)) + 1
    n_axes = max(1, min(needed, axes.shape[1], -(-n_units // 2)))
    signed = torch.stack([axes[:, :n_axes], -axes[:, :n_axes]], dim=2).reshape(axes.shape[0], 2 * n_axes)
    return BaselineModel(_encoder(signed[:, :n_units], mean), normalizer, "pca")


def random_model(mean: torch.Tensor, normalizer: Any, n_units: int, seed: int) -> BaselineModel:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(mean.shape[0], n_units, generator=generator)
    return BaselineModel(_encoder(directions / directions.norm(dim=0), mean), normalizer, "random")


def target_rates(sae_rates: np.ndarray, n_units: int, seed: int) -> np.ndarray:
    """Per baseline unit, the SAE's firing rate of the same rank: the SAE rates' quantiles at the units'
    mid-ranks ((i + ½) / n_units; the SAE's own rates when n_units = d_sae), dealt out in seeded random
    order so that a unit's rate owes nothing to its variance rank."""
    rates = np.asarray(sae_rates, dtype=np.float64)
    if rates.size == 0 or not np.all((rates >= 0) & (rates <= 1)):
        raise ValueError(
            "the SAE's firing rates (feature_stats.frequency) must be fractions of tokens in [0, 1]"
        )
    quantiles = np.quantile(rates, (np.arange(n_units) + 0.5) / n_units, method="inverted_cdf")
    return np.random.default_rng(seed).permutation(quantiles)


@torch.no_grad()
def match_firing_rates(
    model: BaselineModel, covariance: torch.Tensor, batches: Iterable[torch.Tensor], rates: np.ndarray
) -> BaselineModel:
    """The model with a threshold per unit such that unit u fires (projection > threshold) on a fraction
    rates[u] of the sample's tokens, and every unit active at once (k = units).

    Quantiles are read from streaming histograms of each unit's standardised projection (_BINS bins over
    ±_SPAN standard deviations, linear within a bin), so memory stays units × bins whatever the sample.
    A rate of 0 gives a unit that never fires, as a dead SAE feature does."""
    sae = model.sae
    directions = sae.W_enc.double()
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != (directions.shape[1],):
        raise ValueError(f"{directions.shape[1]} units need as many target rates, got {rates.shape}")
    scale = torch.sqrt(torch.einsum("iu,ij,ju->u", directions, covariance.double(), directions)).clamp_min(
        1e-12
    )
    counts, total = _projection_histograms(sae, directions / scale, batches)
    thresholds = _upper_quantiles(counts, total, rates) * scale.numpy()
    bias = torch.from_numpy(-thresholds).float().nan_to_num(neginf=-torch.finfo(torch.float32).max)
    config = SimpleNamespace(k=directions.shape[1], d_sae=directions.shape[1], apply_b_dec_to_input=True)
    return BaselineModel(DirectionEncoder(sae.W_enc, bias, sae.b_dec, config), model.normalizer, model.method)


def _projection_histograms(
    sae: DirectionEncoder, standardised: torch.Tensor, batches: Iterable[torch.Tensor]
) -> tuple[np.ndarray, int]:
    """Per unit, token counts of its standardised projection in _BINS bins over ±_SPAN (plus an
    underflow bin first and an overflow bin last)."""
    units = standardised.shape[1]
    counts = torch.zeros(units * (_BINS + 2), dtype=torch.int64)
    offsets = torch.arange(units) * (_BINS + 2)
    total = 0
    for batch in batches:
        z = (batch.double() - sae.b_dec.double()) @ standardised
        index = torch.floor((z + _SPAN) * (_BINS / (2 * _SPAN))).clamp(-1, _BINS).long() + 1
        counts += torch.bincount((index + offsets).reshape(-1), minlength=counts.numel())
        total += batch.shape[0]
    return counts.reshape(units, _BINS + 2).numpy(), total


def _upper_quantiles(counts: np.ndarray, total: int, rates: np.ndarray) -> np.ndarray:
    """Per unit, the standardised value exceeded by rates × total tokens (+inf for a rate of 0)."""
    width = 2 * _SPAN / _BINS
    above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]  # above[:, j]: tokens in bin j or higher
    target = rates * total
    # the bin holding the threshold: the highest j whose tokens-at-or-above reach the target
    bin_index = np.clip((above >= target[:, None]).sum(axis=1) - 1, 0, _BINS + 1)
    rows = np.arange(counts.shape[0])
    beyond = np.where(bin_index + 1 <= _BINS + 1, above[rows, np.minimum(bin_index + 1, _BINS + 1)], 0)
    inside = np.maximum(counts[rows, bin_index], 1)
    upper_edge = -_SPAN + np.clip(bin_index, 1, _BINS) * width  # regular bin j spans [edge − width, edge)
    thresholds = upper_edge - np.clip((target - beyond) / inside, 0, 1) * width
    thresholds[bin_index == 0] = -_SPAN  # beyond the histogram: fires on about every token
    thresholds[bin_index == _BINS + 1] = _SPAN
    thresholds[rates <= 0] = np.inf
    return thresholds


_DIVERSITY = ("n_distinct_terms", "n_distinct_top_terms", "n_units_sharing_top_term")


def term_diversity(table: pl.DataFrame) -> pl.DataFrame:
    """Per database with a significant row, how many different things the significant units found:
    n_distinct_terms (significant terms over all units), n_distinct_top_terms (units' best terms, lowest
    p, ties by term id), n_units_sharing_top_term (significant units whose best term is another's best
    too) and redundancy = 1 − distinct top terms / significant units (0: every unit its own term)."""
    significant = table.filter("significant")
    top = significant.sort("log10_p_value", "term_id").unique(["database", "feature"], keep="first")
    per_database = top.group_by("database").agg(
        pl.col("term_id").n_unique().alias("n_distinct_top_terms"),
        (pl.len().over("term_id") > 1).sum().alias("n_units_sharing_top_term"),
        (1 - pl.col("term_id").n_unique() / pl.len()).alias("redundancy"),
    )
    distinct = significant.group_by("database").agg(pl.col("term_id").n_unique().alias("n_distinct_terms"))
    return distinct.join(per_database, on="database").with_columns(pl.col(_DIVERSITY).cast(pl.Int64))


def _with_diversity(frame: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """Counts 0 where nothing was significant; all null for STRING, whose one pseudo-term says nothing."""
    network = pl.col("statistic") == "string_network"
    return frame.join(term_diversity(table), on="database", how="left").with_columns(
        *(pl.when(network).then(None).otherwise(pl.col(c).fill_null(0)).alias(c) for c in _DIVERSITY),
        pl.when(network).then(None).otherwise("redundancy").alias("redundancy"),
    )


# the columns of `enrichment_baselines` (run_baselines' table), also those of an empty one
BASELINE_SCHEMA: dict[str, pl.DataType] = {
    "method": pl.String(),
    "database": pl.String(),
    "statistic": pl.String(),
    **{name: pl.Int64() for name in ("n_units", "n_units_tested", "n_units_significant")},
    "fraction_significant": pl.Float64(),
    "fraction_of_all_units": pl.Float64(),
    **{name: pl.Int64() for name in ("n_tests", "n_significant_pairs", "background_size", *_DIVERSITY)},
    **{name: pl.Float64() for name in ("redundancy", "rate_p10", "rate_p50", "rate_p90")},
}


def compare(
    summaries: dict[str, pl.DataFrame],
    unit_counts: dict[str, int],
    tables: dict[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Per method × database: units tested, units with ≥ 1 significant term, and the fraction; with the
    methods' enrichment tables, also the distinct terms found and their redundancy (`term_diversity`).

    summaries: method → EnrichmentResult.summary_frame(); unit_counts: method → all units (d_sae, or
    the number of directions), so dead units and units with no gene in the universe stay visible.
    A database with nothing to test (no term within the size bounds) tested no unit: its fractions are
    null, not 0, so that "no unit is significant" is never claimed where nothing could have been."""
    frames = []
    for method, frame in summaries.items():
        tested = pl.when(pl.col("n_tests") > 0).then(pl.col("n_units")).otherwise(0)
        frame = frame.with_columns(n_units_tested=tested).select(
            pl.lit(method).alias("method"),
            "database",
            "statistic",
            pl.lit(unit_counts[method], dtype=pl.Int64).alias("n_units"),
            "n_units_tested",
            "n_units_significant",
            pl.when(pl.col("n_units_tested") > 0)
            .then(pl.col("n_units_significant") / pl.col("n_units_tested"))
            .alias("fraction_significant"),
            pl.when(pl.col("n_units_tested") > 0)
            .then(pl.col("n_units_significant") / max(unit_counts[method], 1))
            .alias("fraction_of_all_units"),
            "n_tests",
            pl.col("n_significant").alias("n_significant_pairs"),
            "background_size",
        )
        if tables is not None:
            frame = _with_diversity(frame, tables[method])
        frames.append(frame)
    return pl.concat(frames, how="diagonal").sort("database", "method")


@dataclass(frozen=True)
class BaselineSettings:
    units: int | None = None  # per baseline; None: min(d_sae, 2 × d_in)
    pca_variance: float = PCA_VARIANCE
    fit_tokens: int = 200_000  # tokens (spread over the shards) for the PCA and the firing thresholds
    seed: int = 0


@dataclass
class BaselineRun:
    table: pl.DataFrame  # `compare` with firing-rate percentiles per method
    n_units: dict[str, int]
    fit_tokens: int


def firing_percentiles(rates: np.ndarray) -> dict[str, float]:
    """The 10th, 50th and 90th percentiles of per-unit firing rates (fractions of tokens)."""
    rates = np.asarray(rates, dtype=np.float64)
    values = np.quantile(rates, [0.1, 0.5, 0.9]) if rates.size else [np.nan] * 3
    return {f"rate_p{q}": float(v) for q, v in zip((10, 50, 90), values, strict=True)}


@dataclass
class EnrichmentInputs:
    """What `enrich` needs beyond a unit's genes, and how to name a baseline unit's genes."""

    genes: pl.DataFrame  # the dataset's genes table (gene ids for attach_gene_ids)
    vocab: dict[str, int]
    background: list[str]
    annotations: dict[str, pl.DataFrame]
    ontologies: dict[str, Any]
    settings: Any  # sae_genomics_core.enrichment.enrich.EnrichmentSettings


def run_baselines(
    store: ActivationStore,
    layer: int,
    hook: str,
    loaded: Any,  # sae_genomics_core.sae.checkpoint.LoadedSae
    sae_units: tuple[pl.DataFrame, np.ndarray],  # the SAE's unit_genes and per-feature firing rates
    inputs: EnrichmentInputs,
    association: Any,  # sae_genomics_core.features.associate.AssociationSettings
    settings: BaselineSettings = BaselineSettings(),
) -> BaselineRun:
    """SAE vs PCA vs random units of one dataset × layer, through the same association and enrichment."""
    from sae_genomics_core.enrichment.enrich import enrich
    from sae_genomics_core.features.associate import associate, attach_gene_ids

    sae_genes, sae_rates = sae_units
    d_sae, d_in = int(loaded.sae.cfg.d_sae), int(loaded.sae.W_enc.shape[0])
    n_units = settings.units or min(d_sae, 2 * d_in)
    mean, covariance, n_fit = input_moments(store, layer, hook, loaded.normalizer, settings.fit_tokens)
    results = {
        "sae": enrich(sae_genes, inputs.background, inputs.annotations, inputs.settings, inputs.ontologies)
    }
    rates, counts = {"sae": np.asarray(sae_rates, dtype=np.float64)}, {"sae": d_sae}
    no_cells = pl.DataFrame(schema={"cell_index": pl.Int64, "cell_id": pl.String, "cell_type": pl.String})
    for model in (
        pca_model(mean, covariance, loaded.normalizer, n_units, settings.pca_variance),
        random_model(mean, loaded.normalizer, n_units, settings.seed),
    ):
        units = model.sae.W_enc.shape[1]
        sample = sample_batches(store, layer, hook, loaded.normalizer, settings.fit_tokens)
        matched = match_firing_rates(
            model, covariance, sample, target_rates(rates["sae"], units, settings.seed)
        )
        tables = associate(store, layer, hook, matched, no_cells, association, with_cells=False)
        unit_genes = attach_gene_ids(tables.genes, inputs.vocab, inputs.genes)
        results[model.method] = enrich(
            unit_genes, inputs.background, inputs.annotations, inputs.settings, inputs.ontologies
        )
        rates[model.method], counts[model.method] = tables.stats["frequency"].to_numpy(), units
    table = compare(
        {m: r.summary_frame() for m, r in results.items()}, counts, {m: r.table for m, r in results.items()}
    )
    firing = pl.DataFrame([{"method": m, **firing_percentiles(r)} for m, r in rates.items()])
    joined = table.join(firing, on="method", how="left")
    return BaselineRun(joined.select(list(BASELINE_SCHEMA)).cast(BASELINE_SCHEMA), counts, n_fit)  # type: ignore[arg-type]
