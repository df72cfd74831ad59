from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import ttest_ind

from sae_genomics_core.activations.extract import ExtractionSettings, extract_activations
from sae_genomics_core.data.h5ad import DatasetOptions, inspect_h5ad, open_matrix
from sae_genomics_core.features.associate import AssociationSettings, associate
from sae_genomics_core.model.load import load_model
from sae_genomics_core.sae.checkpoint import load_checkpoint, save_checkpoint
from sae_genomics_core.sae.train import SaeTrainingConfig, StoreSource, train_sae


@pytest.fixture(scope="module")
def setup(tenx_h5ad: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("features")
    with open_matrix(tenx_h5ad) as opened:
        genes = opened.genes["ensembl_id"].to_list()
    loaded = load_model("tiny-random", dataset_genes=genes)
    settings = ExtractionSettings(
        layers=(2,), hooks=("resid_post",), storage_dtype="float32", shard_cells=400
    )
    store = extract_activations(
        loaded, tenx_h5ad, DatasetOptions(), work / "acts", settings, {"dataset": "t"}
    ).store
    config = SaeTrainingConfig(
        expansion_factor=4,
        k=8,
        training_tokens=40_000,
        batch_size=2048,
        log_every_steps=10,
        eval_tokens=2000,
        stats_tokens=4000,
    )
    outcome = train_sae(StoreSource(store, 2, "resid_post", 0.1, 0), config)
    save_checkpoint(work / "sae", outcome, {"layer": 2, "hook": "resid_post"})
    sae = load_checkpoint(work / "sae")
    cells = inspect_h5ad(tenx_h5ad).cells
    # two made-up cell types so the per-type test has something to compare
    cells = cells.with_columns(
        pl.when(pl.col("cell_index") % 3 == 0).then(pl.lit("A")).otherwise(pl.lit("B")).alias("cell_type"),
        # every other cell drawn on the map
        pl.when(pl.col("cell_index") % 2 == 0).then(pl.col("cell_index") * 0.5).alias("umap_1"),
    )
    tables = associate(
        store,
        2,
        "resid_post",
        sae,
        cells,
        AssociationSettings(top_genes=10_000, top_cells=10_000, min_gene_tokens=1, batch_tokens=1000),
    )
    return store, sae, cells, tables


def _dense(store, sae):
    """The straightforward dense computation: every token's full latent vector."""
    tokens = {
        k: np.concatenate([store.tokens(s["name"])[k] for s in store.manifest["shards"]])
        for k in ("gene_id", "bin", "cell_index")
    }
    acts = torch.from_numpy(
        np.concatenate([np.asarray(store.acts(2, "resid_post", s["name"])) for s in store.manifest["shards"]])
    )
    return tokens, sae.encode(acts).numpy().astype(np.float64)


def test_stats_genes_and_cells_equal_the_dense_computation(setup) -> None:
    store, sae, _, tables = setup
    tokens, dense = _dense(store, sae)
    assert tables.n_tokens == dense.shape[0]
    stats = tables.stats.sort("feature")
    np.testing.assert_array_equal(stats["fire_count"].to_numpy(), (dense > 0).sum(axis=0))
    np.testing.assert_allclose(stats["max_activation"].to_numpy(), dense.max(axis=0), rtol=1e-5)
    feature = int(stats.sort("fire_count", descending=True)["feature"][0])
    # gene scores of the busiest feature: Σ activation × expression bin per gene
    expected = {}
    for gene, value, activation in zip(tokens["gene_id"], tokens["bin"], dense[:, feature], strict=True):
        if activation > 0:
            expected[int(gene)] = expected.get(int(gene), 0.0) + activation * value
    ours = {
        int(g): s
        for g, s in tables.genes.filter(pl.col("feature") == feature).select("gene_id", "score").iter_rows()
    }
    assert ours.keys() == expected.keys()
    assert all(abs(ours[g] - expected[g]) <= 1e-4 * max(1.0, abs(expected[g])) for g in ours)
    # per-cell maximum
    per_cell = {}
    for cell, activation in zip(tokens["cell_index"], dense[:, feature], strict=True):
        per_cell[int(cell)] = max(per_cell.get(int(cell), 0.0), activation)
    top = tables.cells.filter(pl.col("feature") == feature).sort("rank")
    assert top["max_activation"][0] == pytest.approx(max(per_cell.values()), rel=1e-5)
    assert top["rank"].to_list() == list(range(1, top.height + 1))
    assert top["cell_id"].null_count() == 0
    # the top cell's firing genes: its tokens where the feature fires, strongest first
    first = int(top["cell_index"][0])
    in_cell = (tokens["cell_index"] == first) & (dense[:, feature] > 0)
    order = np.argsort(-dense[in_cell, feature], kind="stable")
    fired = tables.cell_genes.filter((pl.col("feature") == feature) & (pl.col("cell_rank") == 1)).sort("rank")
    expected_genes = tokens["gene_id"][in_cell][order][: fired.height]
    assert fired.height == min(10, int(in_cell.sum())) and fired["cell_index"].unique().to_list() == [first]
    assert fired["gene_id"].to_list() == expected_genes.tolist()
    assert fired["expression_bin"].to_list() == tokens["bin"][in_cell][order][: fired.height].tolist()
    np.testing.assert_allclose(
        fired["activation"].to_numpy(), dense[in_cell, feature][order][: fired.height], rtol=1e-5
    )


def test_the_map_holds_each_drawn_cells_maximum(setup) -> None:
    store, sae, _, tables = setup
    tokens, dense = _dense(store, sae)
    maxima = (
        pl.DataFrame({"cell_index": tokens["cell_index"], "a": dense[:, 5]})
        .group_by("cell_index")
        .agg(pl.col("a").max())
        .filter((pl.col("a") > 0) & (pl.col("cell_index") % 2 == 0))
        .sort("cell_index")
    )
    ours = tables.cell_map.filter(pl.col("feature") == 5).sort("cell_index")
    assert maxima.height > 10 and ours["cell_index"].to_list() == maxima["cell_index"].to_list()
    np.testing.assert_allclose(ours["max_activation"].to_numpy(), maxima["a"].to_numpy(), rtol=1e-5)


def test_genes_are_ranked_by_specificity_with_enough_support(setup) -> None:
    _, _, _, tables = setup
    ranked = tables.genes.filter(pl.col("feature") == tables.genes["feature"][0]).sort("rank")
    assert ranked["specificity"].is_sorted(descending=True)


def test_cell_type_test_uses_the_cells_mean_activation_with_welch_and_bh(setup) -> None:
    store, sae, cells, tables = setup
    tokens, dense = _dense(store, sae)
    row = tables.cell_types.sort("p_value").row(0, named=True)
    counts = np.bincount(tokens["cell_index"], minlength=cells.height)
    sums = np.bincount(tokens["cell_index"], weights=dense[:, row["feature"]], minlength=cells.height)
    seen = counts > 0  # cells the model skipped are not counted as silent
    per_cell = sums[seen] / counts[seen]
    inside = cells["cell_type"].to_numpy()[seen] == row["cell_type"]
    expected = ttest_ind(per_cell[inside], per_cell[~inside], equal_var=False, alternative="greater").pvalue
    assert row["p_value"] == pytest.approx(expected, rel=1e-6)
    assert row["mean_activation"] == pytest.approx(per_cell[inside].mean(), rel=1e-6)
    assert row["n_cells"] == row["n_units"] == int(inside.sum()) and row["test_unit"] == "cell"
    q = tables.cell_types["q_value"].to_numpy()
    assert (q >= tables.cell_types["p_value"].to_numpy() - 1e-15).all() and (q <= 1).all()


def test_l0_counts_and_activation_histograms_equal_the_dense_computation(setup) -> None:
    from sae_genomics_core.features.associate import HISTOGRAM_BINS

    store, sae, _, tables = setup
    tokens, dense = _dense(store, sae)
    l0 = (dense > 0).sum(axis=1)
    np.testing.assert_array_equal(tables.l0_counts[: l0.max() + 1], np.bincount(l0))
    assert tables.l0_counts.sum() == dense.shape[0]
    feature = int(tables.stats.sort("n_cells_active", descending=True)["feature"][0])
    per_cell = (
        pl.DataFrame({"cell": tokens["cell_index"], "a": dense[:, feature]})
        .group_by("cell")
        .agg(pl.col("a").max())
    )
    active = per_cell.filter(pl.col("a") > 0)["a"].to_numpy()
    rows = tables.histograms.filter(pl.col("feature") == feature).sort("bin")
    # counted shard by shard: 20 equal bins from 0 to a range that doubled as larger maxima came in
    assert len(store.manifest["shards"]) > 1
    top = HISTOGRAM_BINS * (rows["bin_end"][0] - rows["bin_start"][0])
    assert active.max() <= top < 2 * active.max()
    expected = np.bincount(
        np.minimum((active / (top / HISTOGRAM_BINS)).astype(int), HISTOGRAM_BINS - 1),
        minlength=HISTOGRAM_BINS,
    )
    got = np.zeros(HISTOGRAM_BINS, dtype=int)
    got[rows["bin"].to_numpy()] = rows["n_cells"].to_numpy()
    # the dense encoder rounds differently from the streaming one: a value on an edge may move one bin
    assert got.sum() == expected.sum() == active.size and np.abs(got - expected).sum() <= 2


def test_histograms_and_top_cells_kept_shard_by_shard_equal_those_of_all_cells_at_once() -> None:
    """Maxima grow 3× per shard, so each feature's histogram range doubles several times on the way."""
    from sae_genomics_core.features.associate import HISTOGRAM_BINS, _Firing, _PerCell

    settings = AssociationSettings(top_cells=5, cells_with_genes=3, genes_per_cell=2)
    rng, d_sae, per_cell = np.random.default_rng(8), 6, _PerCell(6, None, settings)
    triples = []
    for shard in range(4):
        owners = np.repeat(np.arange(shard * 50, (shard + 1) * 50), 10)  # 50 cells of 10 tokens
        genes, bins = np.tile(np.arange(10), 50), rng.integers(1, 51, owners.size)  # a gene per token
        fires = np.flatnonzero(rng.random(owners.size) < 0.6)
        features, activation = rng.integers(0, d_sae, fires.size), rng.exponential(3.0**shard, fires.size)
        per_cell.add_shard(owners, _Firing(owners[fires], features, activation, genes[fires], bins[fires]))
        triples.append(
            pl.DataFrame(
                {"cell_index": owners[fires], "feature": features, "a": activation, "gene_id": genes[fires]}
            )
        )
    everything = pl.concat(triples)
    maxima = everything.group_by("cell_index", "feature").agg(pl.col("a").max())
    histograms = per_cell.histograms.frame()
    for feature in range(d_sae):
        values = maxima.filter(pl.col("feature") == feature)["a"].to_numpy()
        rows = histograms.filter(pl.col("feature") == feature)
        top = HISTOGRAM_BINS * (rows["bin_end"][0] - rows["bin_start"][0])
        assert values.max() <= top < 2 * values.max()
        bins = np.minimum((values / (top / HISTOGRAM_BINS)).astype(int), HISTOGRAM_BINS - 1)
        expected = np.bincount(bins, minlength=HISTOGRAM_BINS)
        np.testing.assert_array_equal(expected[rows["bin"].to_numpy()], rows["n_cells"].to_numpy())
        assert rows["n_cells"].sum() == values.size == per_cell.n_cells_active[feature]
    expected_top = maxima.sort(["feature", "a", "cell_index"], descending=[False, True, False])
    expected_top = expected_top.group_by("feature", maintain_order=True).head(5)
    assert per_cell.top["cell_index"].to_list() == expected_top["cell_index"].to_list()
    # the genes firing in each feature's top 3 cells, the strongest 2 of each, from the shard the cell was in
    top3 = expected_top.group_by("feature", maintain_order=True).head(3).select("feature", "cell_index")
    expected_genes = (
        everything.join(top3, on=["feature", "cell_index"])
        .sort(["feature", "cell_index", "a"], descending=[False, False, True])
        .group_by(["feature", "cell_index"], maintain_order=True)
        .head(2)
    )
    top_cells = per_cell.top.with_columns(pl.int_range(1, pl.len() + 1).over("feature").alias("rank"))
    fired = per_cell.fired_genes(top_cells.with_columns(pl.lit("c").alias("cell_id")))
    key = ["feature", "cell_index", "gene_id"]
    assert sorted(fired.select(key).iter_rows()) == sorted(expected_genes.select(key).iter_rows())
    assert 6 * 3 < fired.height == expected_genes.height  # some top cells with two genes, some with one
    assert fired["rank"].max() == 2 and fired["cell_rank"].max() == 3


def test_keyed_sums_folded_along_the_way_equal_one_grouping_at_the_end(monkeypatch) -> None:
    from sae_genomics_core.features.associate import _KeyedSums

    monkeypatch.setattr(_KeyedSums, "FOLD_ROWS", 500)  # fold many times over the batches below
    rng = np.random.default_rng(5)
    batches = [(rng.integers(0, 300, 400), rng.random(400), rng.random(400)) for _ in range(12)]
    sums = _KeyedSums()
    folds = 0
    for keys, first, second in batches:
        before = len(sums.parts)
        sums.add(keys, first, second)
        folds += len(sums.parts) < before + 1
    assert folds >= 3, "the running total was folded along the way"
    keys, totals = sums.totals(min_count=2)
    all_keys = np.concatenate([b[0] for b in batches])
    counts = np.bincount(all_keys, minlength=300)
    expected_first = np.bincount(all_keys, weights=np.concatenate([b[1] for b in batches]), minlength=300)
    expected_second = np.bincount(all_keys, weights=np.concatenate([b[2] for b in batches]), minlength=300)
    order = np.argsort(keys)
    np.testing.assert_array_equal(keys[order], np.flatnonzero(counts >= 2))
    np.testing.assert_array_equal(totals[order, 0], counts[counts >= 2])
    np.testing.assert_allclose(totals[order, 1], expected_first[counts >= 2], rtol=1e-6)
    np.testing.assert_allclose(totals[order, 2], expected_second[counts >= 2], rtol=1e-6)


def test_scores_do_not_depend_on_whether_counts_or_log1p_were_registered(setup, tenx_h5ad, tmp_path) -> None:
    """The same cells registered as raw counts and as log1p CP10k give the same gene table."""
    import anndata as ad
    import scipy.sparse as sp

    _, sae, cells, tables = setup
    counts = ad.read_h5ad(tenx_h5ad)
    matrix = sp.csr_matrix(counts.X, dtype=np.float64)
    scaled = sp.diags(1e4 / np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1)) @ matrix
    logged = ad.AnnData(X=scaled.log1p().astype(np.float32), obs=counts.obs, var=counts.var)
    path = tmp_path / "log1p.h5ad"
    logged.write_h5ad(path)
    with open_matrix(path) as opened:
        genes = opened.genes["ensembl_id"].to_list()
    settings = ExtractionSettings(
        layers=(2,), hooks=("resid_post",), storage_dtype="float32", shard_cells=400
    )
    log_store = extract_activations(
        load_model("tiny-random", dataset_genes=genes),
        path,
        DatasetOptions(),
        tmp_path / "acts",
        settings,
        {},
    ).store
    association = AssociationSettings(
        top_genes=10_000, top_cells=10_000, min_gene_tokens=1, batch_tokens=1000
    )
    log_tables = associate(log_store, 2, "resid_post", sae, cells, association)
    columns = ["feature", "gene_id", "rank", "score"]
    ours, theirs = (t.genes.select(columns).sort("feature", "rank") for t in (tables, log_tables))
    assert ours.height > 0
    assert ours.select("feature", "gene_id", "rank").equals(theirs.select("feature", "gene_id", "rank"))
    np.testing.assert_allclose(ours["score"].to_numpy(), theirs["score"].to_numpy(), rtol=1e-5)


def test_an_unmapped_gene_keeps_a_null_ensembl_id_and_its_symbol() -> None:
    from sae_genomics_core.features.associate import attach_gene_ids

    vocab = {"ENSG00000000001": 0, "RP11-782C8.1": 1}
    genes = pl.DataFrame({"ensembl_id": ["ENSG00000000001", None], "symbol": ["GENE1", "RP11-782C8.1"]})
    rows = attach_gene_ids(pl.DataFrame({"feature": [0, 0], "gene_id": [0, 1]}), vocab, genes).sort("gene_id")
    assert rows.select("ensembl_id", "symbol").rows() == [
        ("ENSG00000000001", "GENE1"),
        (None, "RP11-782C8.1"),
    ]


def test_many_passes_over_few_training_tokens_are_warned(setup) -> None:
    from sae_genomics_core.sae.train import MANY_PASSES, StoreSource, _passes_note

    store = setup[0]
    source = StoreSource(store, 2, "resid_post", 0.1, 0)
    held = sum(
        int(np.isin(np.asarray(store.tokens(s["name"])["cell_index"]), source.held_out_cells).sum())
        for s in store.manifest["shards"]
    )
    pool = source.n_train_tokens
    exact = store.manifest["n_tokens"] - held
    assert 0 < held < pool and abs(pool - exact) < 0.2 * exact  # an estimate from the share of cells
    (note,) = _passes_note(source, SaeTrainingConfig(training_tokens=(MANY_PASSES + 1) * pool))
    assert f"over {pool:,} training tokens" in note and "register more cells" in note
    assert _passes_note(source, SaeTrainingConfig(training_tokens=MANY_PASSES * pool)) == []
