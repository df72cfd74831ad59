"""The cost of held-out replication (issue: features that hold up, item 5).

1. The feature stage: `associate` on bench_features' store (100,000 tokens, 500 cells of 5 types, d_sae
   4,096, k 32). Each run is its own process (peak RSS its own); `--code DIR` imports the package from
   another checkout, so the commit before the split runs beside this one:
       git worktree add /tmp/before <commit>; python benchmarks/bench_holdout.py --code /tmp/before
2. Enrichment: `enrich` (one pass) against `enrich_held_out` (the pass plus one per gene half) on
   bench_enrichment's synthetic world (features × 1,000 terms, background 10,000), in one process.

usage: python benchmarks/bench_holdout.py [--code DIR] [--features N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def associate_child(root: str) -> None:
    sys.path.insert(0, str(HERE))
    import sae_lens  # noqa: F401 - imported before the clock starts
    from bench_features import run_ours

    started = time.perf_counter()
    run_ours(Path(root))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))


def measure_associate(root: Path, code: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(code)}
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(root)],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def enrichment_cost(n_features: int) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_enrichment import synthetic

    from sae_genomics_core.enrichment.enrich import EnrichmentSettings, enrich, enrich_held_out

    background, annotations, unit_genes = synthetic(n_features, 1_000, seed=0)
    settings = EnrichmentSettings(annotated_only=False)
    timings = {}
    for name, run in (("single pass", enrich), ("held out", enrich_held_out)):
        started = time.perf_counter()
        table = run(unit_genes, background, {"synthetic": annotations}, settings).table
        timings[name] = time.perf_counter() - started
    planted = table.filter(table["feature"] % 4 == 0)
    return {
        **{f"{name} s": round(seconds, 3) for name, seconds in timings.items()},
        "significant pairs": int(table["significant"].sum()),
        "replicated pairs": int(table["replicated"].sum()),
        "planted features with a replicated term": planted.filter("replicated")["feature"].n_unique(),
        "null features with a replicated term": table.filter(
            (table["feature"] % 4 != 0) & table["replicated"]
        )["feature"].n_unique(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, default=HERE.parent, help="checkout whose package runs")
    parser.add_argument("--features", type=int, default=2_000, help="enrichment: features (units)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return associate_child(args.child)
    sys.path.insert(0, str(HERE))
    from bench_features import build_store

    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "store"
        build_store(root)
        runs = [measure_associate(root, args.code.resolve()) for _ in range(2)]
    print(
        f"associate ({args.code}): "
        + ", ".join(f"{r['seconds']:.2f} s / {r['peak_rss_mb']:.0f} MB" for r in runs)
    )
    if args.code.resolve() == HERE.parent:
        print(json.dumps(enrichment_cost(args.features), indent=1))


if __name__ == "__main__":
    main()
