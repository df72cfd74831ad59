"""The explorer's own logic in a real browser, opened from file:// (Chromium driven by Playwright): labels
that claim only what replicated, the list's orderings, whole gene symbols first in search, neighbours and
links out, CSV downloads. (The demo's pages in the Dagster UI: tests/e2e/test_ui.py.)"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import torch

from sae_genomics_core.viz.pages import build_feature_pages, similar_features
from tests.unit.test_pages import _matches, _warehouse

CHROMIUM = os.environ.get("SAE_GENOMICS_CHROMIUM", "/usr/bin/chromium")
IMMUNE = "Abnormality of the immune system"


def _insert(warehouse: Path, table: str, frame: pl.DataFrame) -> None:
    with duckdb.connect(str(warehouse)) as connection:
        connection.register("frame", frame.to_arrow())
        connection.execute(f"insert into {table} by name select * from frame")
        connection.unregister("frame")


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features 0 (a replicated term and cell type), 2 and 4 (significant terms, none replicated), 3 (CD40
    and CD44 at the top) and 4 (CD4 at rank 10); 1 never fires."""
    folder = tmp_path_factory.mktemp("explorer")
    warehouse = _warehouse(folder / "w.duckdb")
    _matches(warehouse)
    _insert(
        warehouse,
        "feature_stats",
        pl.DataFrame(
            {
                "dataset": "d",
                # layer 1: feature 7 only, feature 0's best match there; layer 3: tables, no pages yet
                "layer": [0, 0, 1, 3],
                "feature": [3, 4, 7, 9],
                "fire_count": [2, 1, 3, 1],
                "frequency": [0.05, 0.01, 0.02, 0.01],
            }
        ),
    )
    _insert(
        warehouse,
        "feature_genes",
        pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [3, 3, 4, 4],
                "rank": [1, 2, 1, 10],
                "symbol": ["CD40", "CD44", "CD8A", "CD4"],
                "ensembl_id": ["ENSG00000101017", "ENSG00000026508", "ENSG00000153563", "ENSG00000010610"],
                "specificity": [9.0, 8.0, 1.0, 0.5],
            }
        ),
    )
    _insert(
        warehouse,
        "enrichment",
        pl.DataFrame(
            {
                "dataset": "d",
                "layer": 0,
                "feature": [2, 4, 4],
                "database": "hpo",
                "term_id": ["HP:0005403", "HP:0002090", "MONDO_0004975"],
                "term_name": ["Decrease in T cell count", "Pneumonia", "Alzheimer disease"],
                "log10_p_value": -5.0,
                "q_value": 0.001,
                "significant": True,
                "selected": True,
                "replicated": False,
            }
        ),
    )
    decoder = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    decoder[3] = 2 * decoder[0]
    with duckdb.connect(str(warehouse)) as connection:  # layers 0-2 extracted; 2 has no feature tables
        connection.execute(
            "create table activation_sets as select 'd' as dataset, range as layer from range(4)"
        )
    pages = folder / "pages" / "d"
    build_feature_pages(warehouse, "d", 1, pages / "L1")
    return build_feature_pages(warehouse, "d", 0, pages / "L0", similar_features(decoder)).path


@pytest.fixture(scope="module")
def page(explorer: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set SAE_GENOMICS_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(explorer.as_uri())
        page.locator("#density svg").wait_for()
        yield page
        browser.close()
    assert not errors, errors


def _listed(page: Any) -> list[int]:
    return [
        int(f) for f in page.eval_on_selector_all("#list a", "links => links.map(a => a.dataset.feature)")
    ]


def test_labels_claim_only_what_replicated(page: Any) -> None:
    entry = page.locator('#list a[data-feature="0"]').inner_text()
    assert f"{IMMUNE} · CD14+ Monocyte" in entry and "LYZ" in entry  # claims, then the top genes
    assert page.locator('#list a[data-feature="2"]').inner_text().startswith("#2 top genes: CD3E")
    four = page.locator('#list a[data-feature="4"]').inner_text()  # significant terms, none replicated
    assert "top genes: CD8A, CD4" in four and "Pneumonia" not in four


@pytest.mark.parametrize(
    ("order", "features"),
    [
        ("default", [4, 2, 0, 3]),  # significant terms, then frequency
        ("frequency", [2, 0, 3, 4]),
        ("specificity", [3, 0, 2, 4]),  # of the top gene
        ("enrichment", [0, 4, 2, 3]),  # replicated terms, then significant ones
        ("cell_type", [0, 2, 3, 4]),  # only 0 has a cell type that passes; the rest keep feature order
    ],
)
def test_the_list_orders_as_chosen(page: Any, order: str, features: list[int]) -> None:
    page.fill("#search", "")
    page.select_option("#order", order)
    assert _listed(page) == features  # feature 1 never fires: never listed


def test_search_puts_whole_gene_symbols_first(page: Any) -> None:
    page.select_option("#order", "default")
    page.fill("#search", "cd4")
    page.get_by_text("2 features match “cd4”").wait_for()
    # CD4 at rank 10 of feature 4 before CD40 and CD44, the top two of feature 3
    assert _listed(page) == [4, 3]
    page.fill("#search", "ENSG00000026508")  # an Ensembl id: whole ids only
    page.get_by_text("1 feature match").wait_for()
    assert _listed(page) == [3]


def test_a_feature_page_links_its_neighbours_and_the_databases(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#feature=0")
    title = page.locator("#feature-title")
    title.filter(has_text="Feature 0").wait_for()
    assert title.inner_text() == f"Feature 0 · {IMMUNE} · CD14+ Monocyte"
    assert page.title().startswith(f"#0 {IMMUNE}")
    hgnc = page.locator('a.out[href="https://www.genenames.org/tools/search/#!/?query=LYZ"]')
    assert hgnc.get_attribute("target") == "_blank" and hgnc.get_attribute("rel") == "noopener"
    links = page.eval_on_selector_all("a.out", "links => links.map(a => a.textContent)")
    # LYZ: all five; the gene without a symbol: Ensembl and Open Targets only
    assert links.count("Ensembl") == 2 and links.count("HGNC") == links.count("STRING") == 1
    assert page.locator('a[href="https://hpo.jax.org/browse/term/HP:0002715"]').count() == 1
    assert page.locator('a[href="../L1/index.html#feature=7"]').count() == 2  # best match, one-to-one
    assert page.locator('a[href="../../e/L0/index.html#feature=3"]').count() == 1
    page.locator('#page a[href="#feature=3"]').first.click()  # its nearest decoder direction
    title.filter(has_text="Feature 3").wait_for()
    assert title.inner_text() == "Feature 3 · top genes: CD40, CD44"


def test_top_cells_show_the_genes_the_feature_fires_on(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#feature=0")
    page.locator("#feature-title").filter(has_text="Feature 0").wait_for()
    fired = page.locator("span.fired")
    assert fired.all_inner_texts() == ["LYZ", "S100A8"]  # strongest first
    assert fired.first.get_attribute("title") == "activation 2.000, expression bin 40"
    # shaded by activation relative to the cell's maximum (2.0): full for LYZ, half for S100A8
    assert "0.90" in fired.first.get_attribute("style") and "0.51" in fired.last.get_attribute("style")


def _map_colours(page: Any, feature: int) -> list[str]:
    page.goto(page.url.split("#")[0] + f"#feature={feature}")
    page.locator("#feature-title").filter(has_text=f"Feature {feature}").wait_for()
    page.locator("#map-chart svg").wait_for()
    return page.eval_on_selector_all(
        "#map-chart .mark-symbol path", "marks => marks.map(m => m.getAttribute('fill'))"
    )


def test_the_map_draws_the_cells_coloured_by_the_feature(page: Any) -> None:
    colours = _map_colours(page, 0)
    assert len(colours) == 3 and len(set(colours)) == 3  # the drawn cells (the fourth has no coordinates)
    assert "#d9dbe3" not in colours  # it fires in all three
    assert _map_colours(page, 2).count("#d9dbe3") == 2  # feature 2 fires in one drawn cell


def test_the_layer_switcher_goes_to_the_features_match_in_that_layer(page: Any, explorer: Path) -> None:
    page.goto((explorer.parent.parent / "index.html").as_uri())  # the dataset's explorer: its first layer
    page.locator("#density svg").wait_for()
    assert page.url == explorer.as_uri()
    options = page.eval_on_selector_all("#layer option", "os => os.map(o => [o.textContent, o.disabled])")
    assert options == [["0", False], ["1", False], ["2 (no feature tables when built)", True], ["3", False]]
    page.goto(explorer.as_uri() + "#feature=0")
    page.locator("#feature-title").filter(has_text="Feature 0").wait_for()
    page.select_option("#layer", "1")
    page.locator("#feature-title").filter(has_text="Feature 7").wait_for()
    assert page.url.endswith("/L1/index.html#feature=7")
    assert "No map for this layer" in page.inner_text("#page")  # layer 1's tables predate the map
    assert page.eval_on_selector("#layer", "s => s.value") == "1"
    page.select_option("#layer", "0")  # no feature shown here, so layer 0's overview
    page.locator("#density svg").wait_for()
    assert page.url == explorer.as_uri()


def test_term_ids_link_to_monarch(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#feature=4")
    page.locator("#feature-title").filter(has_text="Feature 4").wait_for()
    assert (
        page.locator('a[href="https://monarchinitiative.org/MONDO:0004975"]').inner_text() == "MONDO_0004975"
    )


def test_tables_download_as_csv(page: Any, tmp_path: Path) -> None:
    page.goto(page.url.split("#")[0] + "#feature=0")
    page.locator("#feature-title").filter(has_text="Feature 0").wait_for()
    tables = {}
    for name in ("genes", "enrichment"):
        with page.expect_download() as download:
            page.locator(f'a[data-csv="{name}"]').click()
        assert download.value.suggested_filename == f"d-L0-feature-0-{name}.csv"
        download.value.save_as(tmp_path / f"{name}.csv")
        with (tmp_path / f"{name}.csv").open(newline="") as handle:
            tables[name] = list(csv.DictReader(handle))
    assert [row["gene"] for row in tables["genes"]] == ["LYZ", "ENSG00000000001"]
    assert tables["genes"][0]["held_out_specificity"] == "3.5"
    assert tables["enrichment"][0]["overlap_genes"] == "LYZ;S100A8;S100A9"
    assert tables["enrichment"][0]["odds_ratio"] == "inf"


def test_over_http_the_switcher_says_when_a_layers_pages_are_not_built(page: Any, explorer: Path) -> None:
    from sae_genomics_core.viz.serve import serve_in_background
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    server = serve_in_background(explorer.parent.parent.parent, url)
    try:
        page.goto(f"{url}/d/L0/index.html")
        page.locator("#density svg").wait_for()
        assert not page.eval_on_selector_all("#layer option", "os => os.some(o => o.disabled)")  # it can ask
        with page.expect_event("dialog") as shown:
            page.select_option("#layer", "3")  # feature tables, but its pages were never built
        message = shown.value.message
        shown.value.accept()
        assert message == "Layer 3 has no feature pages yet: materialise feature_pages for d layer 3."
        assert page.url == f"{url}/d/L0/index.html" and page.eval_on_selector("#layer", "s => s.value") == "0"
    finally:
        server.shutdown()
