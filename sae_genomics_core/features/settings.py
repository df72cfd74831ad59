"""How features are tied to genes and cells: the settings and their defaults, defined once (the Dagster
configs derive from them). No torch import, so the Dagster definitions load fast."""

from __future__ import annotations

from dataclasses import dataclass

HOLDOUT_SEED = 0  # the seed of the selection / evaluation halves (cells here, genes in enrichment)


@dataclass(frozen=True, kw_only=True)
class AssociationSettings:
    top_genes: int = 50  # genes kept per feature in feature_genes
    top_cells: int = 50  # cells kept per feature in feature_cells
    cells_with_genes: int = 10  # of those, the top cells whose firing genes feature_cell_genes keeps
    genes_per_cell: int = 10  # firing genes kept per such cell, strongest first
    min_gene_tokens: int = 3  # a gene needs this many firing tokens to be ranked
    batch_tokens: int = 8192  # tokens encoded at once
    fdr: float = 0.05  # BH level of a selected claim and of its replication on the held-out half
    holdout_seed: int = HOLDOUT_SEED
    device: str = "cpu"
