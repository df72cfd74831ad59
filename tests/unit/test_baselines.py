"""PCA and random baseline directions, their sparsity matching, and the SAE-vs-baseline comparison."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from sae_genomics_core.enrichment.baselines import compare, matched_k, pca_model, random_model


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_pca_units_are_the_principal_axes_by_variance_with_both_signs() -> None:
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    variances = np.array([9.0, 4.0, 1.0, 0.5, 0.2, 0.1])
    covariance = torch.tensor(basis @ np.diag(variances) @ basis.T, dtype=torch.float64)
    mean = torch.arange(6, dtype=torch.float32)
    model = pca_model(mean, covariance, identity, n_units=5, k=2)
    directions = model.sae.W_enc.numpy()
    assert directions.shape == (6, 5) and model.method == "pca"
    for unit, axis in enumerate([0, 0, 1, 1, 2]):  # largest variance first, each axis read from both sides
        assert abs(directions[:, unit] @ basis[:, axis]) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(directions[:, 1], -directions[:, 0]) and np.allclose(
        directions[:, 3], -directions[:, 2]
    )
    assert torch.equal(model.sae.b_dec, mean) and model.sae.cfg.k == 2  # centred on the input mean


def test_random_units_are_seeded_unit_vectors() -> None:
    mean = torch.zeros(8)
    first = random_model(mean, identity, n_units=16, k=3, seed=1).sae.W_enc
    assert torch.allclose(first.norm(dim=0), torch.ones(16))
    assert torch.equal(first, random_model(mean, identity, n_units=16, k=3, seed=1).sae.W_enc)
    assert not torch.equal(first, random_model(mean, identity, n_units=16, k=3, seed=2).sae.W_enc)


@pytest.mark.parametrize(
    ("k", "d_sae", "units", "expected"), [(32, 512, 128, 8), (4, 512, 128, 1), (1, 4096, 8, 1)]
)
def test_baselines_fire_about_as_often_as_sae_features(k: int, d_sae: int, units: int, expected: int) -> None:
    assert matched_k(k, d_sae, units) == expected  # k / d_sae of the units active per token, at least one


def test_compare_divides_by_units_tested_and_says_null_where_nothing_was_testable() -> None:
    def summary(units: int, tests: int, significant: int) -> pl.DataFrame:
        return pl.DataFrame({
            "database": ["hpo"], "statistic": ["hypergeometric"], "n_units": [units], "n_terms": [10],
            "n_tests": [tests], "n_tested_pairs": [tests], "n_significant": [significant],
            "n_units_significant": [significant], "background_size": [200],
        })  # fmt: skip

    table = compare(
        {"sae": summary(400, 4_000, 40), "pca": summary(100, 1_000, 30), "random": summary(128, 0, 0)},
        {"sae": 512, "pca": 128, "random": 128},
    )
    rows = {r["method"]: r for r in table.iter_rows(named=True)}
    assert rows["sae"]["fraction_significant"] == pytest.approx(40 / 400)  # over units that were tested
    assert rows["sae"]["fraction_of_all_units"] == pytest.approx(40 / 512)  # dead units count here
    assert rows["pca"]["fraction_significant"] == pytest.approx(0.3)
    assert rows["random"]["n_units_tested"] == 0 and rows["random"]["fraction_significant"] is None
