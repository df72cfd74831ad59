"""The enrichment calibration check: does it pass a correct null and fail miscalibrated p-values?

    .venv/bin/python benchmarks/bench_calibration_power.py [--runs 20]

Synthetic worlds: 1,500 expressed genes (the features' candidate genes and the right universe), 150
terms of 10–60 genes on them ("flat"), or 60 leaf terms of 5–30 genes each with three nested ancestors
(the HPO true-path shape, "nested"); 300 or 40 features of 30 candidate genes, gene sets of the top 20. Each
run draws a new world and new features (seed = run), then runs `calibrate` (3 shuffles) under:

- correct: the right universe, exact p-values (the check must pass);
- p ÷ 2, ÷ 10, ÷ 30: every hypergeometric p-value made that many times too small;
- padded 1.5× / 2×: the universe padded with genes in no feature's set and no term (annotated_only off:
  the default universe, annotated genes only, drops them).

Columns: fraction of runs the new check fails (any threshold), failing at p ≤ 0.01 / p ≤ 0.001, reported
"not testable", the median observed / expected null rejections at p ≤ 0.01, the largest design effect,
and the fraction of runs the former check failed (> 5 % of shuffled sets with any BH-significant term,
over the same shuffles).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import polars as pl

import sae_genomics_core.enrichment.enrich as enrich_module
from sae_genomics_core.enrichment.enrich import (
    CalibrationSettings,
    EnrichmentSettings,
    calibrate,
    calibration_verdicts,
    enrich,
    random_gene_sets,
    shuffled_gene_sets,
)

N_GENES = 1_500
FEATURE_COUNTS = (300, 40)  # a mid-sized SAE's features with a gene set, and a small one
SCENARIOS = {  # name → (p-value divisor, universe padding factor)
    "correct": (1.0, 1.0),
    "p ÷ 2": (2.0, 1.0),
    "p ÷ 10": (10.0, 1.0),
    "p ÷ 30": (30.0, 1.0),
    "padded 1.5×": (1.0, 1.5),
    "padded 2×": (1.0, 2.0),
}


def world(seed: int, nested: bool, n_features: int) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    genes = [f"ENSG{i:011d}" for i in range(N_GENES)]
    rows = []
    if not nested:
        for term in range(150):
            size = int(rng.integers(10, 60))
            rows += [(genes[g], f"T:{term}") for g in rng.choice(N_GENES, size, replace=False)]
    else:
        for leaf in range(60):
            members = set(rng.choice(N_GENES, int(rng.integers(5, 30)), replace=False).tolist())
            rows += [(genes[g], f"T:{leaf}") for g in members]
            for level in range(3):  # each ancestor holds its child and more
                members |= set(rng.choice(N_GENES, int(rng.integers(5, 20)), replace=False).tolist())
                rows += [(genes[g], f"T:{leaf}.{level}") for g in members]
    annotations = pl.DataFrame(rows, schema=["ensembl_id", "term_id"], orient="row").with_columns(
        term_name=pl.col("term_id"), term_kind=pl.lit("phenotype")
    )
    return genes, annotations, random_gene_sets(np.full(n_features, 30), genes, seed=seed + 10_000)


@contextmanager
def p_values_divided(divisor: float) -> Iterator[None]:
    original = enrich_module.hypergeom_log_sf
    if divisor != 1.0:
        enrich_module.hypergeom_log_sf = lambda *a: original(*a) - np.log(divisor)
    try:
        yield
    finally:
        enrich_module.hypergeom_log_sf = original


def former_check_fails(unit_genes, background, annotations, settings, repeats: int) -> bool:
    """The check before issue 13: > 5 % of shuffled sets with any BH-significant term."""
    sets = significant = 0
    for repeat in range(repeats):
        shuffled = shuffled_gene_sets(unit_genes, settings.seed + 1 + repeat)
        summary = enrich(shuffled, background, annotations, settings).summaries[0]
        sets, significant = sets + summary.n_units, significant + summary.n_units_significant
    return significant / max(sets, 1) > 0.05


def run(
    seed: int, shape: tuple[bool, int], distortion: tuple[float, float], check: CalibrationSettings
) -> dict:
    (nested, n_features), (divisor, padding) = shape, distortion
    genes, annotations, unit_genes = world(seed, nested, n_features)
    background = genes + [f"ENSG9{i:010d}" for i in range(int((padding - 1) * N_GENES))]
    settings = EnrichmentSettings(annotated_only=False, max_term_fraction=0.2)
    with p_values_divided(divisor):
        frame = calibrate(unit_genes, background, {"toy": annotations}, settings, check=check)
        former = former_check_fails(unit_genes, background, {"toy": annotations}, settings, check.repeats)
    status = dict(zip(frame["threshold"].to_list(), frame["status"].to_list(), strict=True))
    verdict = calibration_verdicts(frame)["toy"]
    return {
        "fails": verdict == "fail",
        "fails_01": status[0.01] == "fail",
        "fails_001": status[0.001] == "fail",
        "untestable": verdict == "not testable",
        "ratio": frame.filter(pl.col("threshold") == 0.01)["ratio"][0],
        "design_effect": frame["design_effect"].max(),
        "former_fails": former,
    }


def row(shape: tuple[bool, int], name: str, runs: list[dict]) -> str:
    frame = pl.DataFrame(runs)
    rates = [f"{frame[c].mean():.2f}" for c in ("fails", "fails_01", "fails_001", "untestable")]
    cells = ["nested" if shape[0] else "flat", str(shape[1]), name, *rates, f"{frame['ratio'].median():.2f}"]
    cells += [f"{frame['design_effect'].max():.2f}", f"{frame['former_fails'].mean():.2f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    check = CalibrationSettings()
    start = time.perf_counter()
    print(f"check: thresholds {check.thresholds}, family level {check.level}, {check.repeats} shuffles")
    columns = [
        "terms",
        "features",
        "scenario",
        "new check fails",
        "at p ≤ 0.01",
        "at p ≤ 0.001",
        "not testable",
    ]
    columns += ["median obs/exp (p ≤ 0.01)", "max design effect", "former check fails"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for n_features in FEATURE_COUNTS:
        for nested in (False, True):
            for name, distortion in SCENARIOS.items():
                runs = [run(seed, (nested, n_features), distortion, check) for seed in range(args.runs)]
                print(row((nested, n_features), name, runs), flush=True)
    print(f"{args.runs} runs per row, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
