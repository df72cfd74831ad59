"""Feature pages from a warehouse: what they embed, refusals, and that a failed build keeps the old pages.
(Rendering and search in a real browser: tests/e2e/test_ui.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import torch

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.pipeline.pages import run_pages
from sae_genomics_core.sae.matching import nearest_directions
from sae_genomics_core.viz.pages import PagesUnavailable, build_feature_pages, collect, similar_features


def _warehouse(path: Path, with_enrichment: bool = True) -> Path:
    tables = {
        "feature_stats": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0, 1, 2],
                "fire_count": [5, 0, 9],
                "frequency": [0.1, 0.0, 0.2],
                "mean_activation": 1.0,
                "max_activation": 2.0,
                "n_cells_active": [3, 0, 4],
                "checkpoint_id": "resid_post-k1",
            }
        ),
        "feature_genes": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0, 0, 2],
                "rank": [1, 2, 1],
                "symbol": ["LYZ", None, "CD3E"],
                "ensembl_id": ["ENSG00000090382", "ENSG00000000001", "ENSG00000198851"],
                "score": [3.0, 2.0, 1.0],
                "specificity": [4.0, 3.0, 2.0],
                "n_tokens": [5, 4, 3],
                "selected": True,
                "replicated": [True, False, True],
                "held_out_specificity": [3.5, 1.0, 2.5],
            }
        ),
        "feature_cells": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0],
                "cell_index": [7],
                "cell_id": ["AAAC-1"],
                "max_activation": [2.0],
                "rank": [1],
            }
        ),
        "feature_cell_genes": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": 0,
                "cell_rank": 1,
                "cell_index": 7,
                "cell_id": "AAAC-1",
                "rank": [1, 2],
                "symbol": ["LYZ", "S100A8"],
                "ensembl_id": ["ENSG00000090382", "ENSG00000143546"],
                "activation": [2.0, 1.0],
                "expression_bin": [40, 12],
            }
        ),
        "cells": pl.DataFrame(
            {
                "dataset": "d",
                "cell_index": [3, 5, 7, 9],
                "cell_type": ["B", "B", "CD14+ Monocyte", "B"],
                "umap_1": [0.0, 1.0, 2.0, None],  # cell 9 is not drawn
                "umap_2": [0.5, 1.5, 2.5, None],
            }
        ),
        "feature_cell_map": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0, 0, 0, 2],
                "cell_index": [3, 5, 7, 5],
                "max_activation": [0.5, 1.0, 2.0, 0.7],
            }
        ),
        "feature_cell_types": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0],
                "cell_type": ["CD14+ Monocyte"],
                "mean_activation": [1.0],
                "frac_active": [0.5],
                "log2_fold_change": [2.0],
                "log2_fold_change_lower": [1.5],
                "q_value": [0.001],
                "test_unit": ["cell"],
                "n_units": [40],
                "selected": [True],
                "replicated": [True],
                "held_out_log2_fold_change": [1.8],
            }
        ),
        "feature_histograms": pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0, 0],
                "bin": [0, 19],
                "bin_start": [0.0, 1.9],
                "bin_end": [0.1, 2.0],
                "n_cells": [1, 2],
            }
        ),
    }
    if with_enrichment:
        tables["enrichment"] = pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [0, 0],
                "database": ["hpo", "hpo"],
                "term_id": ["HP:0002715", "HP:0000001"],
                "term_name": ["Abnormality of the immune system", "All"],
                "overlap": [3, 1],
                "feature_set_size": [20, 20],
                "term_size": [3, 500],
                "odds_ratio": [float("inf"), 1.0],
                "log10_p_value": [-8.0, 0.0],
                "q_value": [1e-6, 1.0],
                "significant": [True, False],
                "most_specific": [True, None],
                "overlap_genes": [["LYZ", "S100A8", "S100A9"], None],
                "selected": [True, False],
                "replicated": [True, False],
                "held_out_odds_ratio": [5.0, None],
            }
        )
    with duckdb.connect(str(path)) as connection:
        for name, frame in tables.items():
            connection.register("frame", frame.to_arrow())
            connection.execute(f"create table {name} as select * from frame")
            connection.unregister("frame")
    return path


def _embedded(page: str) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, flags=re.S)
    assert match
    return json.loads(match.group(1))


def test_pages_embed_what_each_feature_shows(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    result = build_feature_pages(warehouse, "d", 0, tmp_path / "pages")
    page = result.path.read_text()
    assert result.n_features == 3 and result.n_bytes == len(page.encode())
    assert "window.vegaEmbed" in page  # the renderer is inside: no CDN, opens offline
    assert "https://cdn" not in page
    data = _embedded(page)
    assert data["genes"]["gene"] == ["LYZ", "ENSG00000000001", "CD3E"]  # symbol, else the Ensembl id
    assert data["cells"]["cell_type"] == ["CD14+ Monocyte"]
    assert data["enrichment"]["odds_ratio"] == ["inf", 1.0]  # JSON has no infinity
    assert data["enrichment"]["overlap_genes"][0] == ["LYZ", "S100A8", "S100A9"]
    assert data["histograms"]["n_cells"] == [1, 2]
    assert data["baselines"] == {}  # not materialised yet: the page says so instead of failing
    assert data["enrichment"]["most_specific"] == [True, None]


def test_pages_without_enrichment_still_build(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb", with_enrichment=False)
    assert collect(warehouse, "d", 0)["enrichment"] == {}


def test_a_missing_layer_is_refused_and_the_previous_pages_stay(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    out = tmp_path / "pages"
    first = build_feature_pages(warehouse, "d", 0, out).path.read_text()
    with pytest.raises(PagesUnavailable, match="materialise the feature tables"):
        build_feature_pages(warehouse, "d", 5, out)
    assert (out / "index.html").read_text() == first
    assert not list(out.parent.rglob("*.partial"))


@pytest.mark.parametrize("text", ["</script><b>x", "<!--<script>", "a & b > c"])
def test_script_breaking_text_in_the_data_is_escaped(tmp_path: Path, text: str) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("update enrichment set term_name = ? where term_id = 'HP:0000001'", [text])
    page = build_feature_pages(warehouse, "d", 0, tmp_path / "pages").path.read_text()
    data_block = page.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_block and ">" not in data_block  # nothing the HTML parser could act on
    assert text in _embedded(page)["enrichment"]["term_name"]


def test_every_database_keeps_its_best_rows_on_the_page(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    many_hpo = pl.DataFrame(
        {
            "dataset": "d",
            "layer": 0,
            "feature": 2,
            "database": "hpo",
            "term_id": [f"HP:{i:07d}" for i in range(20)],
            "term_name": "t",
            "overlap": 2,
            "feature_set_size": 20,
            "term_size": 10,
            "odds_ratio": 2.0,
            "log10_p_value": [-3.0 + 0.1 * i for i in range(20)],
            "q_value": 0.5,
            "significant": [i < 8 for i in range(20)],
            "most_specific": None,
            "overlap_genes": None,
            "selected": False,
            "replicated": False,
            "held_out_odds_ratio": None,
        },
        schema_overrides={
            "most_specific": pl.Boolean,
            "overlap_genes": pl.List(pl.String),
            "held_out_odds_ratio": pl.Float64,
        },
    )
    string = many_hpo.head(1).with_columns(  # weaker than every HPO row, still shown: its own database
        database=pl.lit("string"), term_id=pl.lit("STRING:within-set-edges"), log10_p_value=pl.lit(-0.1)
    )
    with duckdb.connect(str(warehouse)) as connection:
        for frame in (many_hpo, string):
            connection.register("frame", frame.to_arrow())
            connection.execute("insert into enrichment by name select * from frame")
            connection.unregister("frame")
    embedded = collect(warehouse, "d", 0)["enrichment"]
    enrichment = pl.DataFrame({k: embedded[k] for k in ("feature", "database", "term_id")}).filter(
        pl.col("feature") == 2
    )
    assert enrichment.group_by("database").len().sort("database").rows() == [
        ("hpo", 8),
        ("string", 1),
    ]  # best 5 + all significant
    assert enrichment.filter(pl.col("database") == "hpo")["term_id"].to_list() == [
        f"HP:{i:07d}" for i in range(8)
    ]


def _planted_decoder() -> torch.Tensor:
    """Random directions, with feature 17 along 200 (another norm, a little noise) and 5 opposite 200."""
    generator = torch.Generator().manual_seed(0)
    decoder = torch.randn(300, 64, generator=generator)
    decoder[17] = 3 * decoder[200] + 0.01 * torch.randn(64, generator=generator)
    decoder[5] = -decoder[200]
    return decoder


def test_similar_features_are_the_nearest_decoder_directions() -> None:
    decoder = _planted_decoder()
    neighbours, cosines = nearest_directions(decoder, 5, chunk_rows=7)  # 7 does not divide 300
    similar = similar_features(decoder)
    assert similar["feature"].to_list() == np.repeat(np.arange(300), 5).tolist()
    assert (similar["similar"].to_numpy().reshape(300, 5) == neighbours).all()
    assert neighbours[17, 0] == 200 and neighbours[200, 0] == 17 and cosines[17, 0] > 0.99
    assert 5 not in neighbours[200] and (neighbours != np.arange(300)[:, None]).all()  # not itself
    assert (np.diff(cosines, axis=1) <= 0).all()  # nearest first
    unit = decoder / decoder.norm(dim=1, keepdim=True)
    whole = (unit @ unit.T).fill_diagonal_(-2.0)  # the d_sae × d_sae matrix the chunks avoid
    assert (neighbours == whole.topk(5).indices.numpy()).all()
    few = similar_features(decoder[:3])  # fewer than 5 others: each has the other two
    assert few.group_by("feature").agg(pl.col("similar").sort()).sort("feature").rows() == [
        (0, [1, 2]),
        (1, [0, 2]),
        (2, [0, 1]),
    ]


def _matches(warehouse: Path) -> None:
    matches = pl.DataFrame(
        {
            "dataset": ["d", "d", "d", "e"],
            "layer": [0, 0, 0, 0],
            "feature": [0, 0, 2, 0],
            "other_dataset": ["d", "e", "d", "d"],
            "other_layer": [1, 0, 1, 0],
            "best_match": [7, 3, 4, 0],
            "best_cosine": [0.81234, 0.5, 0.2, 0.9],
            "mutual": [True, False, False, True],
            "matched_feature": [7, -1, 4, 0],
            "matched_cosine": [0.81234, float("nan"), 0.2, 0.9],
            "chance_cosine": [0.3, 0.3, 0.3, 0.3],
        }
    )
    with duckdb.connect(str(warehouse)) as connection:
        connection.register("frame", matches.to_arrow())
        connection.execute("create table feature_matches as select * from frame")
        connection.unregister("frame")


def test_pages_carry_similar_features_and_the_matches_above_chance(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    bare = collect(warehouse, "d", 0)
    assert bare["similar"] == {} and bare["matches"] == {}  # no checkpoint, no atlas: no sections
    _matches(warehouse)
    similar = similar_features(torch.randn(3, 4))
    page = build_feature_pages(warehouse, "d", 0, tmp_path / "pages", similar).path.read_text()
    data = _embedded(page)
    assert data["similar"] == {name: similar[name].to_list() for name in similar.columns}
    # feature 2's best match is below chance, and dataset e's rows belong to e's pages
    assert data["matches"] == {
        "feature": [0, 0],
        "other_dataset": ["d", "e"],
        "other_layer": [1, 0],
        "best_match": [7, 3],
        "best_cosine": [0.812, 0.5],
        "mutual": [True, False],
        "matched_feature": [7, -1],
        "matched_cosine": [0.812, None],  # no one-to-one partner
        "chance_cosine": [0.3, 0.3],
    }


def _publish_checkpoint(store: ArtefactStore, decoder: torch.Tensor) -> str:
    """A real sae-lens checkpoint with this decoder, published as the current SAE of d layer 0; its id."""
    from sae_genomics_core.sae.checkpoint import checkpoint_id, save_checkpoint
    from sae_genomics_core.sae.settings import SaeTrainingConfig
    from sae_genomics_core.sae.train import Normalizer, TrainingOutcome, build_sae

    d_sae, d_in = decoder.shape
    sae = build_sae(d_in, SaeTrainingConfig(expansion_factor=d_sae // d_in, k=2))
    sae.W_dec.data = decoder.clone()
    outcome = TrainingOutcome(sae, Normalizer(torch.zeros(d_in), 1.0), [], {}, 0.0, 0, 0)
    checkpoint = store.new_sae_run("d", 0, "resid_post", "k1") / "checkpoint"
    save_checkpoint(checkpoint, outcome, {"layer": 0, "hook": "resid_post"})
    store.publish_checkpoint("d", 0, checkpoint)
    return checkpoint_id(checkpoint)


def test_run_pages_takes_similar_features_from_the_checkpoint_of_the_tables(tmp_path: Path) -> None:
    warehouse, store = _warehouse(tmp_path / "w.duckdb"), ArtefactStore(tmp_path / "artefacts")
    page = store.pages("d", 0) / "index.html"
    assert run_pages("d", 0, store, warehouse).summary["similar_features"] == "no SAE checkpoint"
    assert _embedded(page.read_text())["similar"] == {}  # the pages build without one
    decoder = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    decoder[9] = 2 * decoder[30]
    assert _publish_checkpoint(store, decoder) == "resid_post-k1"  # the tables' checkpoint_id
    assert (
        run_pages("d", 0, store, warehouse).summary["similar_features"] == "5 per feature, by decoder cosine"
    )
    similar = pl.DataFrame(_embedded(page.read_text())["similar"])
    assert similar.filter(pl.col("feature") == 9)["similar"][0] == 30
    assert similar.height == 32 * 5
    with duckdb.connect(str(warehouse)) as connection:  # tables of an older SAE: its neighbours would lie
        connection.execute("update feature_stats set checkpoint_id = 'resid_post-old'")
    summary = run_pages("d", 0, store, warehouse).summary
    assert (
        "come from checkpoint resid_post-old, the current SAE is resid_post-k1" in summary["similar_features"]
    )
    assert _embedded(page.read_text())["similar"] == {}


def test_map_activations_unpack_to_each_drawn_cells_value() -> None:
    """The page's packing (dense bytes or sparse position/level triples), unpacked as the page does."""
    from sae_genomics_core.viz.pages import _packed

    rng = np.random.default_rng(0)
    drawn = np.sort(rng.choice(5000, 1200, replace=False))
    expected = {0: rng.exponential(1.0, drawn.size) * (rng.random(drawn.size) < 0.8), 1: np.zeros(drawn.size)}
    expected[1][[3, 700, 1199]] = [0.2, 4.0, 1e-6]  # sparse; a tiny value stays visible (level 1)
    frame = pl.DataFrame(
        [
            {"feature": f, "cell_index": int(drawn[j]), "max_activation": float(a[j])}
            for f, a in expected.items()
            for j in np.flatnonzero(a)
        ]
    )
    packed = _packed(frame, drawn)
    assert packed["feature"] == [0, 1] and packed["dense"] == [True, False]
    for i, f in enumerate(packed["feature"]):
        raw, scale = np.frombuffer(base64.b64decode(packed["data"][i]), np.uint8), packed["max"][i] / 255
        values = np.zeros(drawn.size)
        if packed["dense"][i]:
            values = raw * scale
        else:
            triples = raw.reshape(-1, 3).astype(int)
            values[triples[:, 0] | (triples[:, 1] << 8)] = triples[:, 2] * scale
        assert np.all((values > 0) == (expected[f] > 0))
        # half a level off at most, a full level for values under half a level (shown as level 1, not 0)
        error = np.abs(values - expected[f])
        assert error.max() <= scale and error[expected[f] >= scale / 2].max() <= scale / 2 + 1e-4
    assert len(packed["data"][1]) == 12  # three 3-byte triples in base64
    tiny = _packed(
        pl.DataFrame({"feature": [0], "cell_index": [int(drawn[0])], "max_activation": [3e-5]}), drawn
    )
    assert tiny["max"] == [3e-5]  # significant digits: a feature firing weakly still shows


def test_a_layer_whose_feature_tables_predate_the_map_shows_none(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb")
    drawn = collect(warehouse, "d", 0)["map"]
    assert drawn["cells"]["cell_index"] == [3, 5, 7] and drawn["feature"] == [0, 2]
    with duckdb.connect(str(warehouse)) as connection:  # this layer's rows gone, the table still there
        connection.execute("delete from feature_cell_map where layer = 0")
    assert collect(warehouse, "d", 0)["map"] == {}
