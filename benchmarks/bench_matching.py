"""Matching two SAEs' decoders (issue: features that hold up, item 5): best match and the one-to-one
assignment (scipy's linear_sum_assignment) of 16,384 × 16,384 features, d_in 512 (tahoe-x1-70m's width),
each size in its own process so that peak RSS is its own. The second decoder is the first, permuted and
noised, so the answer is known: the assignment must recover the permutation.

usage: python benchmarks/bench_matching.py [SIZES...]   (default 4096 16384)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

D_IN = 512


def run_one(n: int) -> dict[str, float]:
    import torch

    from sae_genomics_core.sae.matching import match, random_directions

    a = random_directions(n, D_IN, seed=1)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    b = a[permutation] + 0.05 * torch.randn(n, D_IN, generator=torch.Generator().manual_seed(3))
    started = time.perf_counter()
    best = match(a, b, one_to_one=False)
    best_s = time.perf_counter() - started
    started = time.perf_counter()
    found = match(a, b)
    total_s = time.perf_counter() - started
    recovered = float((permutation[found.matched_feature].numpy() == range(n)).mean())
    return {
        "n": n,
        "best_match_s": best_s,
        "with_assignment_s": total_s,
        "recovered": recovered,
        "best_recovered": float((permutation[best.best_match].numpy() == range(n)).mean()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(sizes: list[int]) -> None:
    for n in sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{n:>6} × {n}: best match {result['best_match_s']:.2f} s, with the one-to-one assignment "
            f"{result['with_assignment_s']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, permutation "
            f"recovered {result['recovered']:.4f} (best match alone {result['best_recovered']:.4f})"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(int(sys.argv[2]))))
    else:
        main([int(size) for size in sys.argv[1:]] or [4096, 16384])
