"""Do cell-type fold changes track genes per cell? Spearman, across cell types, between a type's median
log2 fold change over all features and its mean number of expressed genes, per layer.

usage: python benchmarks/bench_cell_type_confound.py [--warehouse PATH] [--dataset pbmc68k]
(default warehouse: $SAE_GENOMICS_HOME/warehouse.duckdb, i.e. after `make demo`)
"""

from __future__ import annotations

import argparse

import duckdb
from scipy.stats import spearmanr

from sae_genomics_core.config import Home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default=str(Home.from_env().warehouse))
    parser.add_argument("--dataset", default="pbmc68k")
    args = parser.parse_args()
    try:
        connection = duckdb.connect(args.warehouse, read_only=True)
    except duckdb.Error as error:
        print(f"skipped: no readable warehouse at {args.warehouse} ({error}); run `make demo` first")
        return
    genes_per_cell = dict(
        connection.execute(
            "select cell_type, avg(n_genes_expressed) from cells where dataset = ? and cell_type is not null "
            "group by all",
            [args.dataset],
        ).fetchall()
    )
    layers = connection.execute(
        "select distinct layer from feature_cell_types where dataset = ? order by layer", [args.dataset]
    ).fetchall()
    for (layer,) in layers:
        rows = connection.execute(
            "select cell_type, median(log2_fold_change) from feature_cell_types where dataset = ? and layer = ? "
            "group by all",
            [args.dataset, layer],
        ).fetchall()
        rho = spearmanr(
            [fold for _, fold in rows], [genes_per_cell[cell_type] for cell_type, _ in rows]
        ).statistic
        print(
            f"layer {layer}: Spearman(median log2 FC, genes per cell) = {rho:.3f} over {len(rows)} cell types"
        )


if __name__ == "__main__":
    main()
