"""How features are tested against the annotation databases: the settings and their defaults, defined
once (the Dagster configs derive from them). Light on purpose, so the Dagster definitions load fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sae_genomics_core.errors import SettingsError
from sae_genomics_core.features.settings import HOLDOUT_SEED


@dataclass(frozen=True, kw_only=True)
class EnrichmentSettings:
    gene_set_size: int = 20
    gene_set_order: Literal["score", "rank"] = "score"
    gene_set_scope: Literal["background", "universe"] = "background"
    min_term_size: int = 5
    # terms larger than this fraction of the database's universe are not tested (0.1: the former 500 genes
    # of a typical 5,000-gene annotated universe); an absolute max_term_size, where given, replaces it
    max_term_fraction: float = 0.1
    max_term_size: int | None = None
    min_overlap: int = 2
    fdr: float = 0.05
    annotated_only: bool = True
    only_most_specific: bool = False
    exclude_term_kinds: tuple[str, ...] = ("inheritance",)
    # (database, root): only terms below the root are tested (HPO: Phenotypic abnormality)
    term_roots: tuple[tuple[str, str], ...] = (("hpo", "HP:0000118"),)
    min_network_score: float = 0.7
    seed: int = 0
    holdout_seed: int = HOLDOUT_SEED  # the selection / evaluation halves of the background genes

    def __post_init__(self) -> None:
        problems = []
        if self.gene_set_size < 1:
            problems.append("gene_set_size must be at least 1")
        if self.gene_set_order not in ("score", "rank"):
            problems.append("gene_set_order must be 'score' or 'rank'")
        if self.gene_set_scope not in ("background", "universe"):
            problems.append("gene_set_scope must be 'background' or 'universe'")
        if self.min_term_size < 1 or (
            self.max_term_size is not None and self.max_term_size < self.min_term_size
        ):
            problems.append("term sizes need 1 <= min_term_size <= max_term_size")
        if not 0 < self.max_term_fraction <= 1:
            problems.append(
                "max_term_fraction must be in (0, 1]: terms at most this fraction of the universe"
            )
        if self.min_overlap < 1:
            problems.append("min_overlap must be at least 1")
        if not 0 < self.fdr < 1:
            problems.append("fdr must be between 0 and 1")
        if problems:
            raise SettingsError("invalid enrichment settings: " + "; ".join(problems))

    def term_size_limit(self, universe_size: int) -> int:
        """The largest term tested in a universe of this many genes."""
        if self.max_term_size is not None:
            return self.max_term_size
        return int(self.max_term_fraction * universe_size)
