"""Feature pages from a warehouse: what they embed, refusals, and that a failed build keeps the old pages.
(Rendering and search in a real browser: tests/e2e/test_ui.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import polars as pl
import pytest

from sae_genomics_core.viz.pages import PagesUnavailable, build_feature_pages, collect


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
        "cells": pl.DataFrame({"dataset": "d", "cell_index": [7], "cell_type": ["CD14+ Monocyte"]}),
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
    assert not (out / "index.html.partial").exists()


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
        },
        schema_overrides={"most_specific": pl.Boolean, "overlap_genes": pl.List(pl.String)},
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
