"""STRING network statistic: calibration under random gene sets, and power on planted modules.

Top genes of a feature lean towards hubs, so the null must hold for sets chosen by degree, not only for
uniform ones. For each graph, 2,000 random sets of 10–30 genes drawn uniformly, ∝ degree and ∝ degree²
go through `network_enrichment`; the table gives the fraction with p < 0.05 (and < 0.001) for the
degree-class moments null (the default), the Chung–Lu configuration null and, with --permutation, the
same class null by Monte Carlo. Power: modules of 20 genes (random or drawn ∝ degree) get 5 % extra
internal edge density (~9.5 edges) planted, 50 disjoint modules per graph at a time; reported: the
fraction with p < 0.05 / p < 0.001, whole and as half a module plus 10 random genes.

Graphs: the offline demo's STRING snapshot (external/snapshots/string), STRING v12 biobtree subset in
../shared/data/string at combined score ≥ 700 and ≥ 400 (when present), and a synthetic graph with
power-law degrees, communities and a rich club.

usage: python benchmarks/bench_network_calibration.py [--sets 2000] [--permutation] [--shared PATH]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, default=2000)
    parser.add_argument("--permutation", action="store_true", help="also the Monte Carlo class null (slow)")
    parser.add_argument(
        "--shared", default=os.environ.get("SAE_GENOMICS_SHARED", str(REPO.parent / "shared"))
    )
    args = parser.parse_args()
    methods = ["moments", "chung_lu"] + (["permutation"] if args.permutation else [])
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


if __name__ == "__main__":
    main()
