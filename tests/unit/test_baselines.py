"""PCA and random baseline directions, their per-unit firing-rate matching, and the SAE-vs-baseline comparison."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from sae_genomics_core.enrichment.baselines import (
    compare,
    firing_percentiles,
    match_firing_rates,
    pca_model,
    random_model,
    target_rates,
    term_diversity,
)
from sae_genomics_core.features.associate import encode_topk


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _covariance(variances: list[float], seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(variances), len(variances))))
    return basis, torch.tensor(basis @ np.diag(variances) @ basis.T, dtype=torch.float64)


def test_pca_units_are_the_top_variance_axes_with_both_signs() -> None:
    basis, covariance = _covariance([9.0, 4.0, 1.0, 0.5, 0.2, 0.1])  # 9 + 4 + 1 = 95 % of 14.8
    mean = torch.arange(6, dtype=torch.float32)
    # 12 units would take every axis, down to the 0.1-variance one: only the axes explaining 90 % are used
    model = pca_model(mean, covariance, identity, n_units=12)
    directions = model.sae.W_enc.numpy()
    assert directions.shape == (6, 6) and model.method == "pca"
    for unit, axis in enumerate([0, 0, 1, 1, 2, 2]):  # largest variance first, each axis read from both sides
        assert abs(directions[:, unit] @ basis[:, axis]) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(directions[:, 1], -directions[:, 0]) and np.allclose(
        directions[:, 3], -directions[:, 2]
    )
    assert np.abs(directions.T @ basis[:, 3:]).max() < 1e-5  # no low-variance axis at all
    assert torch.equal(model.sae.b_dec, mean)  # centred on the input mean
    assert pca_model(mean, covariance, identity, n_units=3).sae.W_enc.shape == (
        6,
        3,
    )  # capped by the units asked
    assert pca_model(mean, covariance, identity, n_units=12, variance=1.0).sae.W_enc.shape == (6, 12)
    with pytest.raises(ValueError, match="variance"):
        pca_model(mean, covariance, identity, n_units=12, variance=0)


def test_random_units_are_seeded_unit_vectors() -> None:
    mean = torch.zeros(8)
    first = random_model(mean, identity, n_units=16, seed=1).sae.W_enc
    assert torch.allclose(first.norm(dim=0), torch.ones(16))
    assert torch.equal(first, random_model(mean, identity, n_units=16, seed=1).sae.W_enc)
    assert not torch.equal(first, random_model(mean, identity, n_units=64, seed=2).sae.W_enc)


def test_target_rates_are_the_sae_rates_of_the_same_rank() -> None:
    sae = np.random.default_rng(0).uniform(0, 0.2, 64)
    assert np.array_equal(
        np.sort(target_rates(sae, 64, seed=1)), np.sort(sae)
    )  # as many units: the SAE's own
    fewer = np.sort(target_rates(sae, 16, seed=1))
    assert np.array_equal(fewer, np.quantile(sae, (np.arange(16) + 0.5) / 16, method="inverted_cdf"))
    assert not np.array_equal(target_rates(sae, 16, seed=1), fewer)  # dealt in random order, not by variance
    with pytest.raises(ValueError, match="frequency"):
        target_rates(np.array([0.1, 1.5]), 4, seed=0)


def _heavy_tailed_tokens(seed: int, n: int = 40_000, d: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """t-distributed (4 d.o.f.) tokens of one fixed anisotropic law; `seed` draws the tokens."""
    mixing = np.random.default_rng(0).normal(size=(d, d)) * np.linspace(3, 0.2, d)
    tokens = np.random.default_rng(seed).standard_t(4, size=(n, d)) @ mixing.T + 2.0
    x = torch.tensor(tokens, dtype=torch.float32)
    return x, torch.cov(x.double().T, correction=0)


@pytest.mark.parametrize("method", ["pca", "random"])
def test_each_baseline_unit_fires_as_often_as_the_sae_feature_of_its_rank(method: str) -> None:
    # 64 SAE features firing on 0.2 %–30 % of tokens, some dead; 64 baseline units of 32-d tokens
    sae_rates = np.r_[np.exp(np.random.default_rng(3).uniform(np.log(0.002), np.log(0.3), 60)), np.zeros(4)]
    x, covariance = _heavy_tailed_tokens(seed=1)
    mean = x.mean(0)
    model = (
        pca_model(mean, covariance, identity, n_units=64, variance=1.0)
        if method == "pca"
        else random_model(mean, identity, n_units=64, seed=2)
    )
    targets = target_rates(sae_rates, 64, seed=0)
    matched = match_firing_rates(model, covariance, torch.split(x, 5_000), targets)
    values, indices = encode_topk(matched.sae, identity, x)
    fired = np.bincount(indices[values > 0].numpy(), minlength=64) / x.shape[0]
    assert np.allclose(fired, targets, rtol=0.03, atol=2 / x.shape[0])  # unit by unit
    sae, ours = firing_percentiles(sae_rates), firing_percentiles(fired)
    for key in ("rate_p10", "rate_p50", "rate_p90"):  # and so the distribution
        assert ours[key] == pytest.approx(sae[key], rel=0.1)
    # on tokens it was not fitted on, within sampling error
    fresh, _ = _heavy_tailed_tokens(seed=9)
    values, indices = encode_topk(matched.sae, identity, fresh)
    held_out = np.bincount(indices[values > 0].numpy(), minlength=64) / fresh.shape[0]
    assert np.abs(held_out - targets).max() < 4 * np.sqrt(0.3 * 0.7 / fresh.shape[0]) + 0.002


def _enrichment_rows(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema=["database", "statistic", "feature", "term_id", "log10_p_value", "significant"],
        orient="row",
    )


def test_term_diversity_counts_distinct_terms_and_units_sharing_a_top_term() -> None:
    hyper = "hypergeometric"
    table = _enrichment_rows(
        [
            *[("hpo", hyper, 0, "A", -6.0, True), ("hpo", hyper, 0, "B", -7.0, True)],  # unit 0: best B
            *[("hpo", hyper, 1, "A", -5.0, True), ("hpo", hyper, 2, "A", -4.0, True)],  # units 1, 2: best A
            *[("hpo", hyper, 2, "C", -3.0, True), ("hpo", hyper, 3, "D", -1.0, False)],  # D not significant
            ("monarch", hyper, 0, "X", -1.0, False),
        ]
    )
    rows = {r["database"]: r for r in term_diversity(table).iter_rows(named=True)}
    assert rows["hpo"]["n_distinct_terms"] == 3  # A, B, C
    assert rows["hpo"]["n_distinct_top_terms"] == 2  # B, A
    assert rows["hpo"]["n_units_sharing_top_term"] == 2  # units 1 and 2 share A
    assert rows["hpo"]["redundancy"] == pytest.approx(1 - 2 / 3)
    assert "monarch" not in rows  # nothing significant there


def _summary(units: int, tests: int, significant: int, database: str = "hpo") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "database": [database],
            "statistic": ["hypergeometric" if database != "string" else "string_network"],
            "n_units": [units],
            "n_terms": [10],
            "n_tests": [tests],
            "n_tested_pairs": [tests],
            "n_significant": [significant],
            "n_units_significant": [significant],
            "background_size": [200],
        }
    )


def test_compare_divides_by_units_tested_and_says_null_where_nothing_was_testable() -> None:
    table = compare(
        {"sae": _summary(400, 4_000, 40), "pca": _summary(100, 1_000, 30), "random": _summary(128, 0, 0)},
        {"sae": 512, "pca": 128, "random": 128},
    )
    rows = {r["method"]: r for r in table.iter_rows(named=True)}
    assert rows["sae"]["fraction_significant"] == pytest.approx(40 / 400)  # over units that were tested
    assert rows["sae"]["fraction_of_all_units"] == pytest.approx(40 / 512)  # dead units count here
    assert rows["pca"]["fraction_significant"] == pytest.approx(0.3)
    assert rows["random"]["n_units_tested"] == 0 and rows["random"]["fraction_significant"] is None


def test_compare_reports_distinct_terms_and_redundancy_beside_the_fraction() -> None:
    hyper = "hypergeometric"
    # SAE: three units, three different terms; PCA: three units, all on one term; random: none significant
    sae = _enrichment_rows([("hpo", hyper, u, t, -5.0, True) for u, t in enumerate("ABC")])
    pca = _enrichment_rows([("hpo", hyper, u, "A", -5.0, True) for u in range(3)])
    random = _enrichment_rows(
        [("hpo", hyper, 0, "A", -1.0, False), ("string", "string_network", 0, "S", -9.0, True)]
    )
    random_summary = pl.concat([_summary(10, 100, 0), _summary(10, 10, 1, "string")])
    summaries = {"sae": _summary(10, 100, 3), "pca": _summary(10, 100, 3), "random": random_summary}
    table = compare(
        summaries, {"sae": 10, "pca": 10, "random": 10}, {"sae": sae, "pca": pca, "random": random}
    )
    rows = {(r["method"], r["database"]): r for r in table.iter_rows(named=True)}
    assert rows["sae", "hpo"]["fraction_significant"] == rows["pca", "hpo"]["fraction_significant"] == 0.3
    assert (rows["sae", "hpo"]["n_distinct_terms"], rows["sae", "hpo"]["redundancy"]) == (3, 0.0)
    assert (rows["pca", "hpo"]["n_distinct_terms"], rows["pca", "hpo"]["n_units_sharing_top_term"]) == (1, 3)
    assert rows["pca", "hpo"]["redundancy"] == pytest.approx(2 / 3)
    assert rows["random", "hpo"]["n_distinct_terms"] == 0 and rows["random", "hpo"]["redundancy"] is None
    assert rows["random", "string"]["n_distinct_terms"] is None  # one pseudo-term: no diversity to count
