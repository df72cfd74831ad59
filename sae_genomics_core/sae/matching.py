"""SAE features matched by their decoder directions: across training seeds of one SAE (are the atoms
stable?), across the layers of a dataset and across datasets for one layer (one atlas).

Two matchings of the rows of A to those of B, by cosine of the decoder directions:
- best match: each feature's most similar feature of B (many may share one);
- one-to-one: the assignment that maximises the summed cosine (scipy's linear_sum_assignment), so
  that a feature of B stands for one feature of A only.
A null of random unit directions of the same dimension, matched the same way, says what cosines
chance gives (in d dimensions about √(2 ln n / d) for the best of n, far below 0.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

STABLE_COSINE = 0.7  # a feature is stable when its one-to-one partner in every other seed is this close
NULL_STREAM = 0x5AE  # the null's random stream, apart from any training seed's
CHUNK_ROWS = 4096  # rows of A per product: bounds the temporaries beside the A × B cosine matrix


@dataclass(frozen=True)
class Matching:
    best_cosine: np.ndarray  # (n_a,) cosine of each feature's best match in B
    best_match: np.ndarray  # (n_a,) its index in B
    matched_cosine: np.ndarray  # (n_a,) cosine of its one-to-one partner (nan: none, when B is smaller)
    matched_feature: np.ndarray  # (n_a,) the partner's index in B (-1: none)
    mutual: np.ndarray  # (n_a,) bool: it is also its best match's best match


def unit_rows(directions: torch.Tensor | np.ndarray) -> torch.Tensor:
    rows = torch.as_tensor(directions, dtype=torch.float32)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def match(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, one_to_one: bool = True) -> Matching:
    """Match the rows (decoder directions) of `a` to those of `b`."""
    a, b = unit_rows(a), unit_rows(b)
    cosine = torch.cat([rows @ b.T for rows in a.split(CHUNK_ROWS)]).numpy()  # (n_a, n_b) float32
    best_match = cosine.argmax(axis=1)
    best_cosine = cosine[np.arange(cosine.shape[0]), best_match].astype(np.float64)
    mutual = cosine.argmax(axis=0)[best_match] == np.arange(cosine.shape[0])
    matched_cosine = np.full(cosine.shape[0], np.nan)
    matched_feature = np.full(cosine.shape[0], -1, dtype=np.int64)
    if one_to_one:
        rows, columns = linear_sum_assignment(cosine, maximize=True)
        matched_cosine[rows], matched_feature[rows] = cosine[rows, columns], columns
    return Matching(best_cosine, best_match.astype(np.int64), matched_cosine, matched_feature, mutual)


def nearest_directions(
    directions: torch.Tensor | np.ndarray, k: int, chunk_rows: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines), rows × k: each row's `k` nearest other rows by cosine, nearest first, from
    `chunk_rows` rows of the cosine matrix at a time (never the whole n × n matrix)."""
    rows = unit_rows(directions).detach()
    n, k = rows.shape[0], min(k, rows.shape[0] - 1)
    found, cosines = [], []
    for start in range(0, n, chunk_rows):
        block = rows[start : start + chunk_rows] @ rows.T
        own = torch.arange(block.shape[0])
        block[own, own + start] = -torch.inf  # never its own neighbour
        top = block.topk(k, dim=1)
        found.append(top.indices.numpy())
        cosines.append(top.values.numpy())
    return np.concatenate(found), np.concatenate(cosines)


def random_directions(n: int, d: int, seed: int) -> torch.Tensor:
    """n random unit directions in d dimensions (the null). Drawn by numpy's generator with a stream of
    its own: torch's, seeded alike, is what initialises an SAE's decoder, and latents that never trained
    keep that draw, so a null drawn the same way would match them exactly."""
    rng = np.random.default_rng([seed, NULL_STREAM])
    return unit_rows(torch.from_numpy(rng.standard_normal((n, d))))


def agreement(matching: Matching) -> dict[str, float]:
    """Shares of features whose best / one-to-one match clears 0.9 and 0.7, and the mean best cosine."""
    return {
        "best_above_0_9": float((matching.best_cosine > 0.9).mean()),
        "best_above_0_7": float((matching.best_cosine > 0.7).mean()),
        "matched_above_0_9": float((np.nan_to_num(matching.matched_cosine, nan=-1.0) > 0.9).mean()),
        "matched_above_0_7": float((np.nan_to_num(matching.matched_cosine, nan=-1.0) > 0.7).mean()),
        "mean_best_cosine": float(matching.best_cosine.mean()),
    }
