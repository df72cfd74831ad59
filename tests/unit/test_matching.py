"""Matching SAE features by decoder direction, on a planted dictionary with a known answer."""

from __future__ import annotations

import numpy as np
import torch

from sae_genomics_core.sae.matching import agreement, match, random_directions
from sae_genomics_core.sae.train import TensorSource, train_sae
from tests.unit.test_sae import _small, synthetic_dictionary


def test_a_planted_dictionary_learned_under_two_seeds_matches_and_random_directions_do_not() -> None:
    tokens, atoms = synthetic_dictionary(60_000)
    decoders = [
        train_sae(
            TensorSource(tokens, 2000), _small(seed=seed, training_tokens=300_000, lr=2e-3)
        ).sae.W_dec.detach()
        for seed in (1, 2)
    ]
    across_seeds = match(decoders[0], decoders[1])
    # atoms each seed learned (a feature within 0.9 of it): their two features match each other
    found = [match(atoms, decoder, one_to_one=False) for decoder in decoders]
    both = (found[0].best_cosine > 0.9) & (found[1].best_cosine > 0.9)
    assert both.mean() >= 0.6
    pairs = match(decoders[0][found[0].best_match[both]], decoders[1], one_to_one=False)
    assert (pairs.best_match == found[1].best_match[both]).all() and (pairs.best_cosine > 0.9).mean() >= 0.9
    null = match(random_directions(*decoders[0].shape, seed=0), decoders[1])
    assert agreement(null)["best_above_0_7"] == 0.0 and agreement(across_seeds)["best_above_0_7"] > 0.3


def test_one_to_one_matching_recovers_a_permutation_and_never_reuses_a_partner() -> None:
    directions = random_directions(300, 16, seed=1)
    permutation = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    noisy = directions[permutation] + 0.05 * torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    matching = match(directions, noisy)
    np.testing.assert_array_equal(permutation[matching.matched_feature].numpy(), np.arange(300))
    assert np.unique(matching.matched_feature).size == 300 and matching.mutual.mean() > 0.9
    # in 16 dimensions, 300 random directions' best matches are far from 1, but well above 0
    chance = match(random_directions(300, 16, seed=4), noisy, one_to_one=False).best_cosine
    assert 0.3 < chance.mean() < 0.8
