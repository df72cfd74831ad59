"""STRING network statistic: calibration under random gene sets, the far tail, power, cost.

Top genes of a feature lean towards hubs, so the null must hold for sets chosen by degree, not only for
uniform ones. For each graph, 2,000 random sets of 10–30 genes drawn uniformly, ∝ degree and ∝ degree²
go through `network_enrichment`; the table gives the fraction with p < 0.05 (and < 0.001) for the
default (`adaptive`: moment-matched tail, sequential Monte Carlo below 0.05), the tail alone (`moments`),
the Chung–Lu configuration null and, with --permutation, the same class null by fixed-count Monte Carlo.
Power: modules of 20 genes (random or drawn ∝ degree) get 5 % extra internal edge density (~9.5 edges)
planted, 50 disjoint modules per graph at a time; reported: the fraction with p < 0.05 / p < 0.001,
whole and as half a module plus 10 random genes.

Far tail (down to 1e-6): (1) exact calibration on graphs of disjoint cliques, where the null distribution
of the edge count is known exactly (dynamic programming over cliques): P(p ≤ α) = Σ_e P(E = e) · P(p ≤ α
| e edges), the latter from `--replicates` independently seeded units per e; (2) on the STRING graphs,
sets with a hub's neighbours mixed in (p from 1e-2 to 1e-6) against a reference Monte Carlo of the same
null with 100 exceedances (up to 10^7 draws): the ratio of our p to the reference, per decade.
Cost: 16,384 sets of 20 on the bench_enrichment graph, random and with 10 % planted modules.

Graphs: the offline demo's STRING snapshot (external/snapshots/string), STRING v12 biobtree subset in
../shared/data/string at combined score ≥ 700 and ≥ 400 (when present), and a synthetic graph with
power-law degrees, communities and a rich club.

usage: python benchmarks/bench_network_calibration.py [--sets 2000] [--permutation] [--shared PATH]
       [--tail-only] [--replicates 200] [--tail-sets 6]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.enrichment.network import Network, network_enrichment

REPO = Path(__file__).resolve().parents[1]
DRAWS = ("uniform", "∝ degree", "∝ degree²")


def string_graph(links: Path, min_score: int) -> Network:
    frame = pl.read_csv(links, separator=" ").filter(pl.col("combined_score") >= min_score)
    proteins = pl.concat([frame["protein1"], frame["protein2"]]).unique().sort()
    index = dict(zip(proteins.to_list(), range(proteins.len()), strict=True))
    left = frame["protein1"].replace_strict(index).to_numpy()
    right = frame["protein2"].replace_strict(index).to_numpy()
    return Network.from_edges(proteins.len(), left, right)


def synthetic_graph(n_genes: int, n_edges: int, seed: int) -> Network:
    """Heavy-tailed degrees (Pareto weights), 50 communities holding 60 % of the edges, and a rich club
    (the 2 % highest-weight genes linked to each other with probability 0.3)."""
    rng = np.random.default_rng(seed)
    weight = rng.pareto(1.6, n_genes) + 1
    community = rng.integers(0, 50, n_genes)
    probability = weight / weight.sum()
    n_within = int(0.6 * n_edges)
    left = rng.choice(n_genes, n_edges, p=probability)
    right = rng.choice(n_genes, n_edges, p=probability)
    members = [np.flatnonzero(community == c) for c in range(50)]
    for position in range(n_within):  # partner from the same community, still weighted by degree
        pool = members[community[left[position]]]
        right[position] = rng.choice(pool, p=weight[pool] / weight[pool].sum())
    club = np.argsort(weight)[-n_genes // 50 :]
    pairs = np.array([(a, b) for i, a in enumerate(club) for b in club[i + 1 :]])
    chosen = pairs[rng.random(len(pairs)) < 0.3]
    return Network.from_edges(
        n_genes, np.concatenate([left, chosen[:, 0]]), np.concatenate([right, chosen[:, 1]])
    )


def random_sets(network: Network, n_sets: int, draw: str, rng: np.random.Generator) -> sp.csr_matrix:
    degree = network.degree.astype(np.float64)
    weight = {"uniform": np.ones_like(degree), "∝ degree": degree, "∝ degree²": degree**2}[draw]
    probability = weight / weight.sum()
    sizes = rng.integers(10, 31, n_sets)
    eligible = int((probability > 0).sum())
    rows, cols = [], []
    for unit, size in enumerate(sizes):
        genes = rng.choice(network.n_genes, min(size, eligible), replace=False, p=probability)
        rows.append(np.full(genes.size, unit))
        cols.append(genes)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_sets, network.n_genes))


def calibration(network: Network, n_sets: int, methods: list[str], seed: int) -> dict[str, dict[str, tuple]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, tuple]] = {}
    for draw in DRAWS:
        members = random_sets(network, n_sets, draw, rng)
        out[draw] = {}
        for method in methods:
            p = network_enrichment(network, members, method=method, seed=seed)["p_value"].to_numpy()
            out[draw][method] = (float((p < 0.05).mean()), float((p < 0.001).mean()))
    return out


def power(network: Network, draw: str, seed: int) -> tuple[float, float, float]:
    """Plant disjoint 20-gene modules (extra density 0.05; 50, or fewer on a small graph) in one copy."""
    rng = np.random.default_rng(seed)
    n_modules = min(50, network.n_genes // 40)
    degree = network.degree.astype(np.float64)
    weight = np.ones_like(degree) if draw == "uniform" else degree
    genes = rng.choice(network.n_genes, 20 * n_modules, replace=False, p=weight / weight.sum())
    modules = genes.reshape(n_modules, 20)
    coo = sp.triu(network.adjacency, k=1).tocoo()
    left, right = [coo.row], [coo.col]
    for module in modules:
        a, b = np.triu_indices(20, k=1)
        extra = rng.random(a.size) < 0.05
        left.append(module[a[extra]])
        right.append(module[b[extra]])
    planted = Network.from_edges(network.n_genes, np.concatenate(left), np.concatenate(right))
    whole = sp.csr_matrix(
        (np.ones(modules.size), (np.repeat(np.arange(n_modules), 20), modules.ravel())),
        shape=(n_modules, network.n_genes),
    )
    half_cols = [
        np.concatenate(
            [module[:10], rng.choice(np.setdiff1d(np.arange(network.n_genes), module), 10, replace=False)]
        )
        for module in modules
    ]
    half = sp.csr_matrix(
        (np.ones(20 * n_modules), (np.repeat(np.arange(n_modules), 20), np.concatenate(half_cols))),
        shape=(n_modules, network.n_genes),
    )
    p_whole = network_enrichment(planted, whole)["p_value"].to_numpy()
    p_half = network_enrichment(planted, half)["p_value"].to_numpy()
    return float((p_whole < 0.05).mean()), float((p_whole < 0.001).mean()), float((p_half < 0.05).mean())


def clique_graph(n_cliques: int, size: int) -> Network:
    i, j = np.triu_indices(size, 1)
    starts = np.arange(n_cliques)[:, None] * size
    return Network.from_edges(n_cliques * size, (starts + i).ravel(), (starts + j).ravel())


def clique_pmf(n_cliques: int, size: int, set_size: int) -> np.ndarray:
    """Exact P(E = e) for a uniform set of set_size genes: E = Σ C(x_c, 2), counted over cliques."""
    max_edges = n_cliques * math.comb(size, 2)
    ways = np.zeros((set_size + 1, max_edges + 1), dtype=object)
    ways[0, 0] = 1
    for _ in range(n_cliques):
        new = np.zeros_like(ways)
        for x in range(min(size, set_size) + 1):
            new[x:, math.comb(x, 2) :] += ways[
                : set_size + 1 - x, : max_edges + 1 - math.comb(x, 2)
            ] * math.comb(size, x)
        ways = new
    return np.array([w / math.comb(n_cliques * size, set_size) for w in ways[set_size]], dtype=float)


def clique_set(edges: int, n_cliques: int, size: int, set_size: int) -> np.ndarray | None:
    for n_used in range(1, n_cliques + 1):
        for parts in itertools.combinations_with_replacement(range(size, 0, -1), n_used):
            if sum(parts) == set_size and sum(math.comb(x, 2) for x in parts) == edges:
                return np.concatenate([c * size + np.arange(x) for c, x in enumerate(parts)])
    return None


ALPHAS = (1e-2, 1e-3, 1e-4, 3e-5, 1e-5)


def exact_calibration(n_cliques: int, size: int, set_size: int, replicates: int) -> dict[str, list[float]]:
    """P(p ≤ α) for each α of ALPHAS, `adaptive` and `moments`, with exact weights P(E = e)."""
    network, pmf = clique_graph(n_cliques, size), clique_pmf(n_cliques, size, set_size)
    support = [
        e for e in np.flatnonzero(pmf > 0) if clique_set(int(e), n_cliques, size, set_size) is not None
    ]
    sets = [clique_set(int(e), n_cliques, size, set_size) for e in support for _ in range(replicates)]
    members = sp.csr_matrix(
        (np.ones(set_size * len(sets)), (np.repeat(np.arange(len(sets)), set_size), np.concatenate(sets))),
        shape=(len(sets), network.n_genes),
    )
    weight = pmf[support] / pmf[support].sum()
    out = {}
    for method in ("adaptive", "moments"):
        p = network_enrichment(network, members, method=method, seed=1)["p_value"].to_numpy()
        p = p.reshape(len(support), replicates)
        out[method] = [float((weight * (p <= alpha).mean(axis=1)).sum()) for alpha in ALPHAS]
    return out


def tail_sets(network: Network, n_per_decade: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Sets of 20 genes ∝ degree with a core mixed in — a hub and m of its neighbours, or m genes of the
    top 2 % by degree (rich club, lumpy tails) — kept so that the moment tail spreads over 1e-2 … 1e-7
    (n_per_decade per decade)."""
    degree = network.degree.astype(np.float64)
    probability = degree / degree.sum()
    hubs = np.flatnonzero(network.degree >= 8)
    club = np.argsort(network.degree)[-max(20, network.n_genes // 50) :]
    kept: dict[int, list[np.ndarray]] = {d: [] for d in range(2, 8)}
    for attempt in range(6000):
        if attempt % 2:
            core = rng.choice(club, int(rng.integers(2, 9)), replace=False)
        else:
            hub = rng.choice(hubs)
            neighbours = network.adjacency.indices[
                network.adjacency.indptr[hub] : network.adjacency.indptr[hub + 1]
            ]
            m = int(rng.integers(2, min(10, neighbours.size) + 1))
            core = np.concatenate([[hub], rng.choice(neighbours, m, replace=False)])
        rest = rng.choice(network.n_genes, 40, replace=False, p=probability)
        genes = np.concatenate([core, rest[~np.isin(rest, core)]])[:20]
        members = sp.csr_matrix((np.ones(20), (np.zeros(20, int), genes)), shape=(1, network.n_genes))
        p = network_enrichment(network, members, method="moments")["p_value"][0]
        decade = int(np.floor(-np.log10(max(p, 1e-12))))
        if decade in kept and len(kept[decade]) < n_per_decade:
            kept[decade].append(genes)
        if all(len(v) >= n_per_decade for v in kept.values()):
            break
    chosen = [g for v in kept.values() for g in v]
    rows = np.repeat(np.arange(len(chosen)), 20)
    return sp.csr_matrix(
        (np.ones(rows.size), (rows, np.concatenate(chosen))), shape=(len(chosen), network.n_genes)
    )


def far_tail(
    network: Network, n_per_decade: int, seed: int
) -> list[tuple[str, int, float, float, float, float]]:
    """Per decade of the reference p: sets, median and min ratio to the reference of moments and adaptive."""
    members = tail_sets(network, n_per_decade, np.random.default_rng(seed))
    reference = network_enrichment(
        network, members, seed=seed + 1, refine_below=1.0, min_exceedances=100, max_permutations=10_000_000
    )["p_value"].to_numpy()
    ours = network_enrichment(network, members, seed=seed)["p_value"].to_numpy()
    moments = network_enrichment(network, members, method="moments")["p_value"].to_numpy()
    rows = []
    floor = 1 / (1 + 10_000_000)
    bins = [(f"1e-{d}–1e-{d - 1}", 10.0**-d, 10.0 ** -(d - 1)) for d in range(2, 8)]
    for label, low, high in [*bins, ("< 1e-7 (reference at its floor)", 0.0, 1e-7)]:
        inside = (reference < high) & (reference >= low) & ((reference > floor) | (low == 0.0))
        if inside.any():
            r_m, r_a = moments[inside] / reference[inside], ours[inside] / reference[inside]
            rows.append(
                (
                    label,
                    int(inside.sum()),
                    float(np.median(r_m)),
                    float(r_m.min()),
                    float(np.median(r_a)),
                    float(r_a.min()),
                )
            )
    return rows


def cost(seed: int) -> list[tuple[str, float, float, dict[str, int]]]:
    """16,384 sets of 20 on bench_enrichment's graph (10,000 genes, Pareto degrees, ~540k edges)."""
    rng = np.random.default_rng(3)
    weights = rng.pareto(1.5, 10_000) + 1
    probability = weights / weights.sum()
    network = Network.from_edges(
        10_000, rng.choice(10_000, 600_000, p=probability), rng.choice(10_000, 600_000, p=probability)
    )
    out = []
    for planted in (0.0, 0.1):
        sets = [rng.choice(10_000, 20, replace=False) for _ in range(16_384)]
        n_planted = int(planted * len(sets))
        left, right = [sp.triu(network.adjacency, 1).tocoo().row], [sp.triu(network.adjacency, 1).tocoo().col]
        for genes in sets[:n_planted]:  # 15 % extra internal density: strong modules, deep in the tail
            a, b = np.triu_indices(20, 1)
            extra = rng.random(a.size) < 0.15
            left.append(genes[a[extra]])
            right.append(genes[b[extra]])
        graph = Network.from_edges(10_000, np.concatenate(left), np.concatenate(right))
        members = sp.csr_matrix(
            (np.ones(20 * len(sets)), (np.repeat(np.arange(len(sets)), 20), np.concatenate(sets))),
            shape=(len(sets), 10_000),
        )
        timings = []
        for method in ("moments", "adaptive"):
            started = time.perf_counter()
            result = network_enrichment(graph, members, method=method, seed=seed)
            timings.append(time.perf_counter() - started)
        counts = dict(result["p_value_method"].value_counts().iter_rows())
        counts["at the cap"] = int((result["null_draws"] >= 100_000).sum())
        out.append((f"{planted:.0%} planted", timings[0], timings[1], counts))
    return out


def tail_report(graphs: dict[str, Network], replicates: int, n_per_decade: int) -> None:
    print("| clique graph (exact null) | method | " + " | ".join(f"P(p ≤ {a:g})" for a in ALPHAS) + " |")
    print("|" + "---|" * (2 + len(ALPHAS)))
    for n_cliques, size, set_size in ((10, 6, 10), (12, 6, 12), (20, 5, 15)):
        result = exact_calibration(n_cliques, size, set_size, replicates)
        for method, rates in result.items():
            cells = " | ".join(f"{r:.2g}" for r in rates)
            print(f"| {n_cliques} cliques of {size}, sets of {set_size} | {method} | {cells} |", flush=True)
    print()
    print("| graph | reference p | sets | moments / ref: median (min) | adaptive / ref: median (min) |")
    print("|---|---|---|---|---|")
    for name, network in graphs.items():
        if network.n_genes < 1000:
            continue
        started = time.perf_counter()
        for label, n, med_m, min_m, med_a, min_a in far_tail(network, n_per_decade, seed=5):
            print(
                f"| {name} | {label} | {n} | {med_m:.2f} ({min_m:.2f}) | {med_a:.2f} ({min_a:.2f}) |",
                flush=True,
            )
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)
    print()
    print("| 16,384 sets of 20 | moments | adaptive | p-value methods |")
    print("|---|---|---|---|")
    for label, t_moments, t_adaptive, counts in cost(seed=0):
        print(f"| {label} | {t_moments:.2f} s | {t_adaptive:.2f} s | {counts} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, default=2000)
    parser.add_argument("--permutation", action="store_true", help="also the Monte Carlo class null (slow)")
    parser.add_argument(
        "--shared", default=os.environ.get("SAE_GENOMICS_SHARED", str(REPO.parent / "shared"))
    )
    parser.add_argument("--tail-only", action="store_true", help="only the far-tail and cost tables")
    parser.add_argument(
        "--replicates", type=int, default=200, help="seeded units per edge count (exact part)"
    )
    parser.add_argument("--tail-sets", type=int, default=6, help="sets per decade of p (STRING part)")
    args = parser.parse_args()
    methods = ["adaptive", "moments", "chung_lu"] + (["permutation"] if args.permutation else [])
    graphs: dict[str, Network] = {
        "demo snapshot (STRING v12, ≥ 700)": string_graph(
            REPO / "external/snapshots/string/9606.protein.links.v12.0.demo-subset.txt.gz", 700
        )
    }
    shared = Path(args.shared) / "data/string/protein.links.v12.0.9606.biobtree-subset.txt.gz"
    if shared.exists():
        graphs["biobtree subset (STRING v12, ≥ 700)"] = string_graph(shared, 700)
        graphs["biobtree subset (STRING v12, ≥ 400)"] = string_graph(shared, 400)
    graphs["synthetic (communities, rich club)"] = synthetic_graph(5000, 60_000, seed=1)
    if args.tail_only:
        tail_report(graphs, args.replicates, args.tail_sets)
        return

    header = "| graph | genes | edges | draw | " + " | ".join(f"{m} p<0.05 (p<0.001)" for m in methods) + " |"
    print(header)
    print("|" + "---|" * (4 + len(methods)))
    for name, network in graphs.items():
        started = time.perf_counter()
        result = calibration(network, args.sets, methods, seed=7)
        for draw in DRAWS:
            cells = " | ".join(f"{a:.3f} ({b:.3f})" for a, b in (result[draw][m] for m in methods))
            print(f"| {name} | {network.n_genes:,} | {network.n_edges:,} | {draw} | {cells} |", flush=True)
        print(f"<!-- {name}: {time.perf_counter() - started:.1f} s -->", flush=True)
    print()
    print("| graph | module genes | p<0.05 | p<0.001 | half module + 10 random, p<0.05 |")
    print("|---|---|---|---|---|")
    for name, network in graphs.items():
        for draw in ("uniform", "∝ degree"):
            whole, strict, half = power(network, draw, seed=11)
            print(f"| {name} | {draw} | {whole:.2f} | {strict:.2f} | {half:.2f} |", flush=True)
    print()
    tail_report(graphs, args.replicates, args.tail_sets)


if __name__ == "__main__":
    main()
