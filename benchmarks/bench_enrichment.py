"""Enrichment: all features × all terms at once vs a per-pair `scipy.stats.fisher_exact` loop.

    .venv/bin/python benchmarks/bench_enrichment.py [--loop-features 200] [--loop-terms 1000]

Synthetic data: a background of 10,000 genes, terms of log-uniform size 5–500, feature gene sets of
20 genes; a quarter of the features are planted inside a random term (10 of their 20 genes), so the
p-values span 1 down to ~1e-25. Part 1 runs both on the same features × terms and compares every
p-value; part 2 times `enrich` on 16,384 features × 10,000 terms (peak RSS of the whole process);
part 3 times the STRING network statistic on 16,384 sets of 20 over 10,000 genes and ~600,000 edges.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl
from scipy.stats import fisher_exact

from sae_genomics_core.enrichment.enrich import EnrichmentSettings, enrich

BACKGROUND = 10_000
SET_SIZE = 20


def synthetic(n_features: int, n_terms: int, seed: int) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    genes = np.array([f"ENSG{i:011d}" for i in range(BACKGROUND)])
    sizes = np.exp(rng.uniform(np.log(5), np.log(500), n_terms)).astype(int)
    term_members = [rng.choice(BACKGROUND, size=s, replace=False) for s in sizes]
    annotations = pl.DataFrame(
        {
            "ensembl_id": genes[np.concatenate(term_members)],
            "term_id": np.repeat([f"T:{j:06d}" for j in range(n_terms)], sizes),
            "term_name": np.repeat([f"term {j}" for j in range(n_terms)], sizes),
            "term_kind": "synthetic",
        }
    )
    members = []
    for feature in range(n_features):
        chosen = rng.choice(BACKGROUND, size=SET_SIZE, replace=False)
        if feature % 4 == 0:  # planted: half the set from one term of at least 10 genes
            big = term_members[rng.choice(np.flatnonzero(sizes >= 10))]
            chosen = np.unique(np.concatenate([rng.choice(big, 10, replace=False), chosen]))[:SET_SIZE]
        members.append(chosen)
    unit_genes = pl.DataFrame(
        {
            "feature": np.repeat(np.arange(n_features), [m.size for m in members]),
            "ensembl_id": genes[np.concatenate(members)],
            "score": rng.random(sum(m.size for m in members)),
            "rank": np.concatenate([np.arange(1, m.size + 1) for m in members]),
        }
    )
    return genes.tolist(), annotations, unit_genes


def per_pair_loop(background: list[str], annotations: pl.DataFrame, unit_genes: pl.DataFrame) -> dict:
    """The predecessor's shape: for every feature, for every term, a 2×2 table and fisher_exact."""
    terms = {t: set(g) for t, g in annotations.group_by("term_id").agg("ensembl_id").iter_rows()}
    sets = {f: set(g) for f, g in unit_genes.group_by("feature").agg("ensembl_id").iter_rows()}
    n_background = len(background)
    out = {}
    for feature, genes in sets.items():
        for term, members in terms.items():
            k = len(genes & members)
            table = [[k, len(genes) - k], [len(members) - k, n_background - len(members) - len(genes) + k]]
            out[(feature, term)] = fisher_exact(table, alternative="greater").pvalue
    return out


def network_part(n_sets: int) -> None:
    import scipy.sparse as sp

    from sae_genomics_core.enrichment.network import Network, network_enrichment

    rng = np.random.default_rng(3)
    # heavy-tailed degrees, as in STRING: each gene's expected degree ~ Pareto, ~600k edges in all
    weights = rng.pareto(1.5, BACKGROUND) + 1
    n_edges = 600_000
    probability = weights / weights.sum()
    left, right = (
        rng.choice(BACKGROUND, n_edges, p=probability),
        rng.choice(BACKGROUND, n_edges, p=probability),
    )
    network = Network.from_edges(BACKGROUND, left, right)
    rows = np.repeat(np.arange(n_sets), SET_SIZE)
    cols = np.concatenate([rng.choice(BACKGROUND, SET_SIZE, replace=False) for _ in range(n_sets)])
    members = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_sets, BACKGROUND))
    start = time.perf_counter()
    result = network_enrichment(network, members)
    wall = time.perf_counter() - start
    print(
        f"part 3, STRING network statistic: {n_sets:,} sets of {SET_SIZE} over {BACKGROUND:,} genes and "
        f"{network.n_edges:,} edges: {wall:.2f} s; random sets with p < 0.05: {(result['p_value'] < 0.05).mean():.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop-features", type=int, default=200)
    parser.add_argument("--loop-terms", type=int, default=1_000)
    parser.add_argument("--features", type=int, default=16_384)
    parser.add_argument("--terms", type=int, default=10_000)
    args = parser.parse_args()
    # every pair tested (min_overlap 1) over the full background, as the loop does
    exact = EnrichmentSettings(
        gene_set_size=SET_SIZE, min_term_size=1, max_term_size=BACKGROUND, min_overlap=1, annotated_only=False
    )

    background, annotations, unit_genes = synthetic(args.loop_features, args.loop_terms, seed=1)
    start = time.perf_counter()
    reference = per_pair_loop(background, annotations, unit_genes)
    loop_s = time.perf_counter() - start
    enrich(unit_genes, background, {"synthetic": annotations}, exact)  # warm-up (imports, caches)
    start = time.perf_counter()
    result = enrich(unit_genes, background, {"synthetic": annotations}, exact)
    ours_s = time.perf_counter() - start
    ours = {(f, t): p for f, t, p in result.table.select("feature", "term_id", "p_value").iter_rows()}
    pairs = np.array([[reference[key], ours.get(key, 1.0)] for key in reference])
    relative = np.abs(pairs[:, 1] - pairs[:, 0]) / pairs[:, 0]
    print(
        f"part 1: {len(reference):,} pairs ({args.loop_features} features × {args.loop_terms} terms): "
        f"loop {loop_s:.2f} s, enrich {ours_s:.3f} s, speed-up {loop_s / ours_s:.0f}×; "
        f"max relative p difference {relative.max():.2e}; smallest p {pairs[:, 0].min():.2e}; "
        f"pairs with overlap ≥ 1: {result.table.height:,}"
    )

    background, annotations, unit_genes = synthetic(args.features, args.terms, seed=2)
    for label, settings in [
        ("min_overlap 1 (every overlapping pair)", exact),
        (
            "defaults (min_overlap 2, terms 5–500)",
            EnrichmentSettings(gene_set_size=SET_SIZE, annotated_only=False),
        ),
    ]:
        start = time.perf_counter()
        result = enrich(unit_genes, background, {"synthetic": annotations}, settings)
        wall = time.perf_counter() - start
        summary = result.summaries[0]
        print(
            f"part 2, {label}: {args.features:,} features × {args.terms:,} terms "
            f"({summary.n_tests:,} tests, {summary.n_tested_pairs:,} p-values computed): {wall:.2f} s, "
            f"{summary.n_units_significant:,} features with a term at q ≤ 0.05"
        )
    network_part(args.features)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
