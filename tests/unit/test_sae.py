from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_genomics_core.sae.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
from sae_genomics_core.sae.train import (
    SaeTrainingConfig,
    TensorSource,
    build_sae,
    full_pass_dead_fractions,
    geometric_median,
    resolve_schedule,
    train_sae,
)

METRIC_KEYS = {
    "step",
    "tokens_seen",
    "mse",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "aux_loss",
    "lr",
}


def synthetic_dictionary(n_tokens: int, d_in: int = 32, n_atoms: int = 64, per_token: int = 3, seed: int = 0):
    """Tokens that are sparse positive combinations of known unit atoms (plus a little noise), shifted off zero."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=generator)
    atoms /= atoms.norm(dim=1, keepdim=True)
    chosen = torch.stack([torch.randperm(n_atoms, generator=generator)[:per_token] for _ in range(n_tokens)])
    coefficients = torch.rand(n_tokens, per_token, generator=generator) * 1.5 + 0.5
    tokens = (coefficients[:, :, None] * atoms[chosen]).sum(dim=1)
    tokens += (
        0.01 * torch.randn(tokens.shape, generator=generator) + 3.0
    )  # an offset the SAE must centre away
    return tokens, atoms


def _small(**overrides) -> SaeTrainingConfig:
    # warm-up and dead window left to scale with the run (resolve_schedule)
    values = {
        "expansion_factor": 4,
        "k": 4,
        "training_tokens": 200_000,
        "batch_size": 1024,
        "log_every_steps": 25,
        "eval_tokens": 4000,
        "stats_tokens": 8000,
        "seed": 3,
    }
    return SaeTrainingConfig(**{**values, **overrides})


def test_auxk_gradient_reaches_dead_latents() -> None:
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    sae = build_sae(16, _small())
    x = torch.randn(512, 16)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dead[:32] = True
    output = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
        )
    )
    aux = output.losses["auxiliary_reconstruction_loss"]
    assert aux.item() > 0
    aux.backward()
    dead_rows = sae.W_dec.grad[:32].norm(dim=1)
    assert (dead_rows > 0).sum() > 0  # the aux term trains dead latents
    assert sae.W_dec.grad[32:].abs().sum() == 0  # and only them
    # the failure this guards against: no mask, no AuxK
    sae.zero_grad()
    silent = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
    )
    assert silent.losses["auxiliary_reconstruction_loss"].item() == 0


def test_training_engages_auxk_when_latents_die() -> None:
    tokens, _ = synthetic_dictionary(20_000)
    # a tiny window declares quiet latents dead quickly; the logged aux loss shows AuxK is in the loss
    outcome = train_sae(
        TensorSource(tokens, 2000),
        _small(expansion_factor=16, training_tokens=60_000, dead_window_tokens=2048),
    )
    assert any(row["dead_fraction"] > 0 for row in outcome.log)
    assert any(row["aux_loss"] > 0 for row in outcome.log)


def low_rank(n_tokens: int, rank: int = 4, d_in: int = 16, seed: int = 0) -> torch.Tensor:
    """Tokens in a `rank`-dimensional subspace: most of a wide dictionary has nothing to fire on."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=generator)
    return torch.randn(n_tokens, rank, generator=generator) @ basis + 2.0


@torch.no_grad()
def never_fire(outcome, tokens: torch.Tensor) -> float:
    """Brute force: encode every token at once and count the latents that never fire."""
    acts = outcome.sae.encode(outcome.normalizer(tokens))
    return float(((acts > 0).sum(dim=0) == 0).float().mean())


def test_dead_fraction_is_measured_over_every_token_after_training() -> None:
    tokens = low_rank(12_000)
    # 30k tokens: far shorter than a default window of 1M tokens
    outcome = train_sae(TensorSource(tokens, 2000), _small(expansion_factor=8, training_tokens=30_000))
    truly_dead = never_fire(outcome, tokens)
    print(f"dead: full pass {outcome.final['dead_fraction']:.4f}, brute force {truly_dead:.4f}")
    assert truly_dead > 0.1  # rank 4 leaves latents with nothing to fire on
    assert outcome.final["dead_fraction"] == pytest.approx(truly_dead)
    assert outcome.final["dead_fraction_heldout"] == pytest.approx(never_fire(outcome, tokens[:2000]))
    assert outcome.final["dead_pass_tokens"] == tokens.shape[0]


def test_full_pass_separates_held_out_from_training_tokens() -> None:
    tokens, _ = synthetic_dictionary(8_000, seed=4)
    outcome = train_sae(TensorSource(tokens, 1000), _small(training_tokens=20_000))
    source = TensorSource(tokens, 1000)
    with torch.no_grad():
        sae = outcome.sae
        sae.b_enc[:8] = -1e4  # planted: these can never fire
        # latent 8 fires only on one training token: a large margin along that token alone
        u = outcome.normalizer(tokens[5000]) - sae.b_dec
        sae.W_enc[:, 8] = 100 * u / u.norm()
        sae.b_enc[8] = -99 * u.norm()
    measured = full_pass_dead_fractions(sae, source, outcome.normalizer, batch_size=512)
    assert measured["dead_fraction"] == pytest.approx(never_fire(outcome, tokens))
    assert measured["dead_fraction_heldout"] == pytest.approx(never_fire(outcome, tokens[:1000]))
    assert measured["dead_fraction"] >= 8 / sae.cfg.d_sae
    assert measured["dead_fraction_heldout"] > measured["dead_fraction"]


def test_auxk_engages_in_a_short_run_with_default_settings() -> None:
    tokens = low_rank(12_000, seed=1)
    outcome = train_sae(TensorSource(tokens, 2000), _small(expansion_factor=8, training_tokens=30_000))
    assert any(row["aux_loss"] > 0 for row in outcome.log)  # the old 1M-token window never closed here
    assert outcome.final["dead_window_tokens"] == 3000  # a tenth of the run
    assert outcome.final["auxk_steps"] > 0
    assert not outcome.warnings


def test_a_run_too_short_for_any_window_warns() -> None:
    tokens, _ = synthetic_dictionary(4_000, seed=5)
    with pytest.warns(RuntimeWarning, match="AuxK cannot engage"):
        outcome = train_sae(TensorSource(tokens, 500), _small(training_tokens=1024, log_every_steps=1))
    assert any("AuxK cannot engage" in note for note in outcome.warnings)
    assert outcome.final["auxk_steps"] == 0


def test_schedule_scales_with_the_run_and_keeps_feasible_explicit_values() -> None:
    short = resolve_schedule(_small(training_tokens=60_000))  # 58 steps of 1024
    assert (short.total_steps, short.warmup_steps, short.dead_window_tokens) == (58, 3, 6000)
    assert short.auxk_can_engage and not short.warnings
    long = resolve_schedule(SaeTrainingConfig(training_tokens=4096 * 100_000))
    assert (long.warmup_steps, long.dead_window_tokens) == (5000, 1_000_000)  # the window's cap
    honoured = resolve_schedule(_small(training_tokens=60_000, warmup_steps=10, dead_window_tokens=20_000))
    assert (honoured.warmup_steps, honoured.dead_window_tokens, honoured.warnings) == (10, 20_000, ())
    # explicit values a 58-step run cannot use are replaced by the scaled ones, and said so
    replaced = resolve_schedule(
        _small(training_tokens=60_000, warmup_steps=100, dead_window_tokens=1_000_000)
    )
    assert (replaced.warmup_steps, replaced.dead_window_tokens) == (3, 6000)
    assert len(replaced.warnings) == 2 and replaced.auxk_can_engage
    tiny = resolve_schedule(_small(training_tokens=1024))
    assert not tiny.auxk_can_engage and "AuxK cannot engage" in tiny.warnings[-1]
    with pytest.raises(ValueError, match="dead_window_fraction must be in"):
        SaeTrainingConfig(dead_window_fraction=0)


def test_dictionary_is_recovered() -> None:
    tokens, atoms = synthetic_dictionary(60_000)
    outcome = train_sae(TensorSource(tokens, 5000), _small(training_tokens=600_000, lr=2e-3))
    decoder = outcome.sae.W_dec.detach()
    cosine = (atoms @ decoder.T).max(dim=1).values
    recovered = float((cosine > 0.9).float().mean())
    print(
        f"atoms recovered (cos > 0.9): {recovered:.3f}, explained variance {outcome.final['explained_variance']:.4f}"
    )
    assert outcome.final["explained_variance"] > 0.9
    assert recovered >= 0.8
    assert torch.allclose(decoder.norm(dim=1), torch.ones(decoder.shape[0]), atol=1e-5)  # unit-norm decoder
    assert set(outcome.log[-1]) >= METRIC_KEYS
    assert outcome.final["l0"] == pytest.approx(4.0)


def test_runs_are_reproducible_and_resume_exactly(tmp_path: Path) -> None:
    tokens, _ = synthetic_dictionary(12_000, seed=1)
    config = _small(training_tokens=40_000, state_every_steps=5, log_every_steps=10)
    whole = train_sae(TensorSource(tokens, 2000), config)
    again = train_sae(TensorSource(tokens, 2000), config)
    assert torch.equal(whole.sae.W_dec, again.sae.W_dec)
    state = tmp_path / "state.pt"
    partial = train_sae(TensorSource(tokens, 2000), config, state_path=state, stop_after_steps=17)
    assert partial.steps == 17 and state.exists()
    resumed = train_sae(TensorSource(tokens, 2000), config, state_path=state)
    assert resumed.resumed_from_step == 15  # the last periodic state
    assert resumed.steps == whole.steps
    assert torch.allclose(resumed.sae.W_dec, whole.sae.W_dec, atol=1e-6)
    assert [row["step"] for row in resumed.log] == [row["step"] for row in whole.log]


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    from sae_lens import SAE

    tokens, _ = synthetic_dictionary(8_000, seed=2)
    outcome = train_sae(TensorSource(tokens, 1000), _small(training_tokens=20_000))
    provenance = {
        "model_id": "tiny-random(seed=0)",
        "revision": None,
        "random_weights": True,
        "layer": 2,
        "hook": "resid_post",
        "dataset": "d",
        "dataset_checksum": "sha256:x",
        "seed": 3,
    }
    directory = tmp_path / "ckpt"
    save_checkpoint(directory, outcome, provenance)
    assert isinstance(SAE.load_from_disk(str(directory)), SAE)  # plain sae-lens can read it
    loaded = load_checkpoint(
        directory, expect={"model_id": "tiny-random(seed=0)", "layer": 2, "hook": "resid_post", "d_in": 32}
    )
    raw = tokens[:100]
    expected = outcome.sae.encode(outcome.normalizer(raw))
    assert torch.allclose(loaded.encode(raw), expected, atol=1e-5)
    assert loaded.provenance["code_version"] and loaded.provenance["gamma"] > 0
    for wrong in (
        {"layer": 3},
        {"hook": "mlp_out"},
        {"model_id": "tahoebio/Tahoe-x1/70m-model"},
        {"d_in": 64},
    ):
        with pytest.raises(CheckpointMismatch, match="refused") as caught:
            load_checkpoint(directory, expect=wrong)
        assert next(iter(wrong)) in str(caught.value)
    with pytest.raises(CheckpointMismatch, match="not an sae-genomics checkpoint"):
        load_checkpoint(tmp_path)


def test_geometric_median_resists_outliers() -> None:
    points = torch.zeros(101, 3)
    points[:50] = torch.tensor([1.0, 0.0, 0.0])
    points[100] = torch.tensor([1000.0, 1000.0, 1000.0])
    median = geometric_median(points)
    assert median.norm() < 1.5 and points.mean(dim=0).norm() > 15
