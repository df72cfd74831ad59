"""A re-run must write the same feature_genes bits: nothing may depend on the order in which polars' hash
aggregation hands the (gene, feature) groups back, which varies from run to run (a float sum over them
then rounds differently: feature_genes.specificity of two clean runs differed by up to 4e-14)."""

from __future__ import annotations

import numpy as np

from sae_genomics_core.features.associate import AssociationSettings, FeatureMoments, _KeyedSums, rank_genes

D_SAE, N_GENES = 8, 400
RNG = np.random.default_rng(0)
# the feature's own spread (σ²/n_g between 1 and 10) is comparable to the genes' (lognormal means), so
# shrinkage weights are far from 0 and 1 and carry every bit of the prior variance into specificity
MOMENTS = FeatureMoments(10_000, mean=np.ones(D_SAE), variance=np.full(D_SAE, 50.0))
GENE_TOKENS = RNG.integers(5, 50, size=N_GENES)


class _Shuffled(_KeyedSums):
    """Fixed totals, in another (seeded) order, as another run's group_by may return them."""

    def __init__(self, keys: np.ndarray, sums: np.ndarray, seed: int) -> None:
        super().__init__()
        order = np.random.default_rng(seed).permutation(keys.size)
        self.keys, self.sums = keys[order], sums[order]

    def totals(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        keep = self.sums[:, 0] >= min_count
        return self.keys[keep], self.sums[keep]


def _rows(sums: _KeyedSums) -> list[tuple]:
    ranked = rank_genes(sums, GENE_TOKENS, MOMENTS, AssociationSettings(top_genes=N_GENES))
    return ranked.sort("feature", "gene_id").rows()


def test_feature_genes_do_not_depend_on_the_order_of_the_groups() -> None:
    keys = np.arange(N_GENES * D_SAE, dtype=np.int64)
    tokens = GENE_TOKENS[keys // D_SAE].astype(np.float64)
    gene_sum = tokens * RNG.lognormal(0.0, 1.0, size=keys.size)  # Σ a: the gene's mean times its tokens
    sums = np.column_stack([tokens, gene_sum, gene_sum * 3.0, gene_sum * 2.0])
    reference = _rows(_Shuffled(keys, sums, seed=0))
    for seed in range(1, 6):
        assert _rows(_Shuffled(keys, sums, seed)) == reference, f"group order {seed} changed feature_genes"
