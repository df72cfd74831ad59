"""Vectorised one-sided hypergeometric tests (= Fisher's exact test, alternative "greater").

For X ~ Hypergeom(population N, successes K, draws n) the p-value of an overlap k is P(X ≥ k). scipy's
`hypergeom.logsf` loops in Python per element and `fisher_exact` takes one table at a time; at 10⁴
features × 10⁴ terms both are hours. Here every pair is computed at once: log pmf(k) from log-gamma,
then the tail Σ pmf(i)/pmf(k) by the ratio recurrence pmf(i+1)/pmf(i) = (K−i)(n−i) / ((i+1)(N−K−n+i+1)),
a few multiplications per step over all pairs, stopping a pair once its terms no longer change the sum.

Above the mode the terms fall monotonically, so the upper tail is summed directly and stays exact in
log space however tiny (p = 1e-400 is returned as log p, not 0). Near the bulk (k at most the mode, or
within 4 s.d. of the mean) p = 1 − P(X < k), a sum of at most k terms — the common overlap of 1 costs
one pmf — kept unless p < 0.2, where the direct tail sum is used for full relative precision.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln
from statsmodels.stats.multitest import multipletests

# stop adding terms once they fall below this fraction of the running sum (double precision)
_NEGLIGIBLE = 1e-17
# below this p-value 1 − P(X < k) has lost too many digits: the upper tail is summed instead
_LOWER_FLOOR = 0.2


def _log_factorials(n_max: int) -> np.ndarray:
    """log(i!) for i = 0..n_max: looked up instead of evaluating log-gamma for every pair."""
    return gammaln(np.arange(n_max + 1, dtype=np.float64) + 1)


def hypergeom_log_sf(
    overlap: np.ndarray, population: np.ndarray, successes: np.ndarray, draws: np.ndarray
) -> np.ndarray:
    """Natural log of P(X ≥ overlap) for X ~ Hypergeom(population, successes, draws), element-wise."""
    k, N, K, n = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (overlap, population, successes, draws))
    )
    k, N, K, n = k.ravel(), N.ravel(), K.ravel(), n.ravel()
    if ((K > N) | (n > N) | (K < 0) | (n < 0)).any():
        raise ValueError("hypergeometric parameters need 0 <= successes, draws <= population")
    low, high = np.maximum(0.0, n + K - N), np.minimum(n, K)
    out = np.zeros(k.size)
    out[k > high] = -np.inf
    mode = np.floor((n + 1) * (K + 1) / (N + 2))
    inside = (k > low) & (k <= high)
    # Near the bulk, 1 − P(X < k) needs only the few terms below k; log-gamma leaves it ~4e-11 absolute
    # error, so it is kept where p ≥ 0.2 (relative ≤ 2e-10) and the tail is summed directly elsewhere.
    mean = n * K / N
    sd = np.sqrt(np.maximum(mean * (1 - K / N) * (N - n) / np.maximum(N - 1, 1), 0))
    lower = inside & ((k <= mode) | (k <= mean + 4 * sd + 1))
    if lower.any():
        out[lower] = np.log1p(-_lower_sum(k[lower], N[lower], K[lower], n[lower]))
    upper = inside & (~lower | ((k > mode) & (out < np.log(_LOWER_FLOOR))))
    if upper.any():
        out[upper] = _upper_tail(k[upper], N[upper], K[upper], n[upper])
    return out.reshape(np.shape(overlap)) if np.ndim(overlap) else out


def _log_pmf(k: np.ndarray, N: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    log_fact = _log_factorials(int(N.max()))
    k, N, K, n = (a.astype(np.int64) for a in (k, N, K, n))
    return (
        log_fact[K]
        - log_fact[k]
        - log_fact[K - k]
        + log_fact[N - K]
        - log_fact[n - k]
        - log_fact[N - K - n + k]
        - log_fact[N]
        + log_fact[n]
        + log_fact[N - n]
    )


def _upper_tail(k: np.ndarray, N: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    """log P(X ≥ k) for k above the mode: log pmf(k) + log Σ_{i ≥ k} pmf(i)/pmf(k)."""
    # pmf(i+1)/pmf(i) = (K−i)(n−i) / ((i+1)(N−K−n+i+1)); the arrays shrink to the unfinished pairs
    total = _ratio_series(k, K, n, N - K - n, np.minimum(n, K), step=1)
    return _log_pmf(k, N, K, n) + np.log(total)


def _lower_sum(k: np.ndarray, N: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    """P(X ≤ k − 1) for k at or below the mode (terms fall monotonically from k − 1 downwards)."""
    first = k - 1
    # pmf(i−1)/pmf(i) = i(N−K−n+i) / ((K−i+1)(n−i+1))
    series = _ratio_series(first, K, n, N - K - n, np.maximum(0.0, n + K - N), step=-1)
    return np.minimum(np.exp(_log_pmf(first, N, K, n)) * series, 1.0)


def _ratio_series(
    start: np.ndarray, K: np.ndarray, n: np.ndarray, rest: np.ndarray, stop: np.ndarray, step: int
) -> np.ndarray:
    """Σ_j Π_{i<j} ratio(i) from `start` towards `stop` (up: step 1, down: step −1), 1 for j = 0.

    The terms fall monotonically, so a pair is done once a term no longer changes its sum; each step
    works on compacted arrays of the pairs still running (most finish within a few steps).
    """
    total = np.ones(start.size)
    index = np.flatnonzero(start != stop)
    i, K_a, n_a, rest_a, stop_a = start[index], K[index], n[index], rest[index], stop[index]
    term, running = np.ones(index.size), np.ones(index.size)
    while index.size:
        if step > 0:
            term *= (K_a - i) * (n_a - i) / ((i + 1) * (rest_a + i + 1))
        else:
            term *= i * (rest_a + i) / ((K_a - i + 1) * (n_a - i + 1))
        running += term
        i += step
        keep = (i != stop_a) & (term > _NEGLIGIBLE * running)
        if not keep.all():
            total[index[~keep]] = running[~keep]
            index, i, K_a, n_a, rest_a, stop_a, term, running = (
                a[keep] for a in (index, i, K_a, n_a, rest_a, stop_a, term, running)
            )
    return total


def odds_ratio(
    overlap: np.ndarray, population: np.ndarray, successes: np.ndarray, draws: np.ndarray
) -> np.ndarray:
    """Odds ratio of the 2×2 table: the sample odds ratio (as scipy's fisher_exact reports it) where every
    cell is positive, and Haldane–Anscombe's (0.5 added to each cell) where one is 0, so that the column
    holds no inf or NaN: a feature set lying wholly inside a small term is common, and an infinite
    estimate would sort above every real one."""
    k = np.asarray(overlap, dtype=np.float64)
    a, b = k, np.asarray(draws) - k
    c, d = np.asarray(successes) - k, np.asarray(population) - np.asarray(successes) - np.asarray(draws) + k
    shift = np.where((a == 0) | (b == 0) | (c == 0) | (d == 0), 0.5, 0.0)
    return ((a + shift) * (d + shift)) / ((b + shift) * (c + shift))


def bh_q_values(p_values: np.ndarray, n_tests: int) -> np.ndarray:
    """Benjamini–Hochberg q-values of `p_values` within a family of `n_tests` tests.

    Only the pairs that could be significant are computed; the others (no overlap) have p = 1 and sort
    last, so the tested pairs keep their ranks and q = min(1, q_within · n_tests / n_tested). Equal to
    padding with ones (tested in tests), without building a 10⁸-long array.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.size == 0:
        return p_values
    if n_tests < p_values.size:
        raise ValueError(f"n_tests ({n_tests}) is smaller than the number of p-values ({p_values.size})")
    within = multipletests(p_values, method="fdr_bh")[1]
    return np.minimum(1.0, within * (n_tests / p_values.size))


def rejection_probabilities(
    set_sizes: np.ndarray, term_sizes: np.ndarray, population: int, min_overlap: int, alpha: float
) -> np.ndarray:
    """P(p ≤ alpha) under the null for every (set size, term size) pair: a (sets × terms) grid.

    The test is discrete, so this attainable level is below alpha, far below for small sets or terms: the
    smallest overlap c ≥ min_overlap with P(X ≥ c) ≤ alpha is the critical value and P(X ≥ c) the level.
    Computed from the pmf directly (log-gamma, summed from the top of the support), independently of
    `hypergeom_log_sf`, so a calibration check built on it can catch that function going wrong."""
    K = np.asarray(term_sizes, dtype=np.float64)[:, None]
    sizes = np.asarray(set_sizes, dtype=np.int64)
    levels = np.zeros((sizes.size, K.shape[0]))
    for row, n in enumerate(sizes):
        levels[row] = _attainable_level(int(n), K, float(population), min_overlap, alpha)
    return levels


def _attainable_level(n: int, K: np.ndarray, N: float, min_overlap: int, alpha: float) -> np.ndarray:
    k = np.arange(n + 1, dtype=np.float64)[None, :]
    valid = (k <= K) & (n - k <= N - K)
    log_pmf = _log_choose(K, k) + _log_choose(N - K, n - k) - _log_choose(np.float64(N), np.float64(n))
    pmf = np.where(valid, np.exp(np.where(valid, log_pmf, 0.0)), 0.0)
    tail = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]  # P(X ≥ k)
    rejecting = (tail <= alpha * (1 + 1e-9)) & (k >= min_overlap) & valid
    # the tail falls with k: the level is the tail at the first rejecting overlap, 0 if none
    first = np.where(rejecting.any(1), rejecting.argmax(1), -1)
    level = np.take_along_axis(tail, np.maximum(first, 0)[:, None], axis=1)[:, 0]
    return np.where(first >= 0, level, 0.0)


def _log_choose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log C(a, b), with b clipped into [0, a] (callers mask the pairs outside the support)."""
    b = np.clip(b, 0, a)
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)
