"""`make ui` as a newcomer meets it: the real `dagster dev` on 127.0.0.1 lists the assets and partitions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sae_genomics_core.viz.pages import MIN_LOG2_FOLD_CHANGE
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ui_home(demo_home: Path) -> Path:
    """The session's demo home (built once for the CLI, cookbook and UI tests)."""
    return demo_home


@pytest.fixture(scope="module")
def pages_url(demo_pages_url: str) -> str:
    return demo_pages_url


@pytest.fixture(scope="module")
def webserver(ui_home: Path, pages_url: str) -> Iterator[str]:
    home = ui_home
    env = {**os.environ, "SAE_GENOMICS_HOME": str(home), "SAE_GENOMICS_PAGES_URL": pages_url}
    env.pop("DAGSTER_HOME", None)
    port = free_port()
    while f":{port}" in pages_url:  # the pages' port was free when chosen, and is free again now
        port = free_port()
    log = (home / "ui.log").open("w")
    # `make ui` itself: webserver, daemon and the feature pages' server; its own session, so that SIGTERM
    # to the group stops webserver, daemon and code server together
    process = subprocess.Popen(
        [sys.executable, "-m", "sae_genomics_dagster.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (home / "ui.log").read_text()
            time.sleep(1)
        else:
            pytest.fail("dagster dev did not start within 120 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _graphql(url: str, query: str) -> dict:
    for _ in range(60):  # the code location may still be loading right after start-up
        response = requests.post(f"{url}/graphql", json={"query": query}, timeout=30)
        response.raise_for_status()
        data = response.json()
        if data.get("data") and data["data"].get("assetNodes"):
            return data["data"]
        time.sleep(1)
    raise AssertionError(f"no assets from {url}: {data}")


@pytest.mark.slow
def test_ui_lists_assets_with_dataset_partitions_and_history(webserver: str) -> None:
    data = _graphql(
        webserver,
        """{ assetNodes { assetKey { path } groupName
              partitionKeysByDimension { partitionKeys }
              assetMaterializations(limit: 1) { partition runId } } }""",
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {
        "dataset_h5ad",
        "cells",
        "genes",
        "datasets",
        "activations",
        "activation_sets",
        "sae_checkpoint",
        "sae_checkpoints",
        "sae_training_log",
        "feature_stats",
        "feature_genes",
        "feature_cells",
        "feature_cell_types",
        "hpo_ontology",
        "enrichment",
        "enrichment_baselines",
    } <= set(nodes)
    assert nodes["enrichment"]["groupName"] == nodes["enrichment_baselines"]["groupName"] == "enrichment"
    assert nodes["enrichment"]["assetMaterializations"], "the demo materialised enrichment"
    for name in ("cells", "genes", "datasets", "activations", "activation_sets"):
        assert nodes[name]["partitionKeysByDimension"][0]["partitionKeys"] == ["pbmc68k"]
        # the demo's run (in-process, before the server started) is in the persistent history
        assert nodes[name]["assetMaterializations"][0]["partition"] == "pbmc68k"
    page = requests.get(f"{webserver}/assets", timeout=10)
    assert page.ok and "<html" in page.text.lower()


@pytest.mark.slow
def test_ui_shows_one_running_schedule_per_annotation_database(webserver: str) -> None:
    _graphql(webserver, "{ assetNodes { assetKey { path } } }")  # waits for the code location
    response = requests.post(
        f"{webserver}/graphql",
        json={
            "query": """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
                ... on RepositoryLocation { repositories { schedules {
                    name cronSchedule scheduleState { status } } } } } } } } }"""
        },
        timeout=30,
    )
    response.raise_for_status()
    entries = response.json()["data"]["workspaceOrError"]["locationEntries"]
    schedules = {
        s["name"]: s
        for entry in entries
        for repository in entry["locationOrLoadError"]["repositories"]
        for s in repository["schedules"]
    }
    from sae_genomics_core.annotations.base import load_sources
    from sae_genomics_core.annotations.refresh import CLIENTS

    sources = load_sources()
    for database in CLIENTS:
        schedule = schedules[f"refresh_annotations_{database}_schedule"]
        assert schedule["cronSchedule"] == sources[database].refresh_cron
        # a key-gated source without its key (none here) starts stopped; the others run
        expected = "STOPPED" if sources[database].key_env else "RUNNING"
        assert schedule["scheduleState"]["status"] == expected, database
    assert "refresh_gene_identifiers_schedule" in schedules
    data = _graphql(
        webserver, "{ assetNodes { assetKey { path } groupName assetMaterializations(limit: 1) { runId } } }"
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    # the demo refreshed every redistributable database from its snapshot; OMIM and DisGeNET were skipped
    for database in CLIENTS:
        node = nodes[f"annotations_{database}"]
        assert node["groupName"] == "annotations"
        assert bool(node["assetMaterializations"]) == (database not in {"omim", "disgenet"}), database


# --- in a real browser: Debian's Chromium (installed by `make test`), driven by Playwright ---------------

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("SAE_GENOMICS_CHROMIUM", "/usr/bin/chromium")
GROUPS = ("datasets", "activations", "sae", "features", "annotations", "enrichment", "reports")
# what the pages count as a cell type finding (q, the fold change's lower bound, its size), as SQL
PASSES = "{0}q_value < 0.05 and {0}log2_fold_change_lower > 0 and {0}log2_fold_change >= " + str(
    MIN_LOG2_FOLD_CHANGE
)


@pytest.fixture(scope="module")
def browser(webserver: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium; or set SAE_GENOMICS_CHROMIUM"
        )
    _dismiss_welcome_dialog(webserver)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _dismiss_welcome_dialog(url: str) -> None:
    """The UI's "Join the Dagster community" dialog (animated, at an unpredictable moment) is off in the
    instance (`nux: enabled: false` in dagster.yaml): it never covers a first visit."""
    check = requests.post(f"{url}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30)
    assert check.json()["data"]["shouldShowNux"] is False, check.text


def _page(browser: object) -> object:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})  # type: ignore[attr-defined]
    page.set_default_timeout(60_000)
    return page


@pytest.mark.slow
def test_browser_asset_graph_shows_every_group(webserver: str, browser: object) -> None:
    page = _page(browser)
    page.goto(f"{webserver}/asset-groups")
    page.get_by_text("Global asset lineage").wait_for()
    for group in GROUPS:
        page.get_by_text(group, exact=True).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "ui-asset-graph.png"))
    page.close()


@pytest.mark.slow
def test_browser_materialises_cells_and_the_run_succeeds(webserver: str, browser: object) -> None:
    page = _page(browser)
    page.goto(f"{webserver}/assets/cells")
    page.get_by_role("button", name="Materialize…").click()
    # cells comes from a multi-asset with genes and datasets: the UI asks to confirm materialising all three
    page.get_by_role("dialog").filter(has_text="Additional assets will be materialized").get_by_role(
        "button", name="Confirm"
    ).click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    launch.get_by_role("button", name="All", exact=True).click()  # every dataset partition: pbmc68k
    launch.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text("Launched run").wait_for()
    page.get_by_role("link", name="View").first.click()
    page.wait_for_url("**/runs/**")
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    deadline = time.time() + 240
    status = None
    while time.time() < deadline:
        status = _graphql_run_status(webserver, run_id)
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(2)
    assert status == "SUCCESS", status
    page.reload()
    page.get_by_text("Success").first.wait_for()  # what the user sees on the run page
    page.screenshot(path=str(ARTIFACTS / "ui-cells-run.png"))
    page.close()


def _graphql_run_status(url: str, run_id: str) -> str | None:
    response = requests.post(
        f"{url}/graphql",
        json={"query": f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}'},
        timeout=30,
    )
    response.raise_for_status()
    return (response.json()["data"]["runOrError"] or {}).get("status")


@pytest.mark.slow
def test_browser_feature_page_search(ui_home: Path, webserver: str, browser: object) -> None:
    import duckdb

    pages = ui_home / "artefacts" / "pages" / "pbmc68k" / "L1" / "index.html"
    assert pages.exists(), "the demo writes the feature pages"
    with duckdb.connect(str(ui_home / "warehouse.duckdb"), read_only=True) as connection:
        feature, symbol = connection.execute(
            "select feature, symbol from feature_genes where dataset = 'pbmc68k' and layer = 1 and rank = 1 "
            "and symbol is not null order by feature limit 1"
        ).fetchone()
    page = _page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(pages.as_uri())
    page.locator("#density svg").wait_for()  # the overview's chart rendered by the bundled Vega
    page.fill("#search", symbol)
    page.get_by_text(f"match “{symbol}”").wait_for()
    page.locator(f'#list a[data-feature="{feature}"]').click()
    page.locator("#feature-title").filter(has_text=f"Feature {feature}").wait_for()
    page.locator("#genes-chart svg").wait_for()
    page.locator("#hist-chart svg").wait_for()
    assert symbol in page.inner_text("#page")
    page.locator("#map-chart svg").wait_for()  # the dataset's UMAP, coloured by the feature
    assert page.locator("#map-chart .mark-symbol path").count() == 700  # every demo cell is drawn
    assert page.locator("span.fired").count() >= 10  # the genes it fires on in its top cells
    page.screenshot(path=str(ARTIFACTS / "feature-page.png"), full_page=True)
    page.locator("#map-chart").screenshot(path=str(ARTIFACTS / "feature-page-umap.png"))

    # by term id: the features whose embedded rows (best 5 per database, and all significant) hold it
    with duckdb.connect(str(ui_home / "warehouse.duckdb"), read_only=True) as connection:
        term, term_feature, n_term = connection.execute(
            "with shown as (select feature, term_id, significant, row_number() over (partition by feature, database "
            "order by log10_p_value) as position from enrichment where dataset = 'pbmc68k' and layer = 1) "
            "select term_id, min(feature), count(distinct feature) as n from shown where position <= 5 or significant "
            "group by term_id order by n, term_id limit 1"
        ).fetchone()
        cell_type, n_typed = connection.execute(
            f"select cell_type, (select count(distinct feature) from feature_cell_types t where t.dataset = 'pbmc68k' "
            f"and t.layer = 1 and {PASSES.format('t.')} and contains(lower(t.cell_type), lower(c.cell_type))) "
            f"from feature_cell_types c where dataset = 'pbmc68k' and layer = 1 and {PASSES.format('')} "
            "group by cell_type order by count(*), cell_type limit 1"
        ).fetchone()
    page.fill("#search", term)
    page.get_by_text(f"{n_term} feature{'' if n_term == 1 else 's'} match “{term}”").wait_for()
    assert page.locator(f'#list a[data-feature="{term_feature}"]').count() == 1
    # by cell type: every feature for which that type passes q, the lower bound and the minimal fold change
    page.fill("#search", cell_type)
    page.get_by_text(f"{n_typed} feature{'' if n_typed == 1 else 's'} match “{cell_type}”").wait_for()
    # what a feature does: its effects chart, ablation table and its SAE's loss recovered
    with duckdb.connect(str(ui_home / "warehouse.duckdb"), read_only=True) as connection:
        (steered,) = connection.execute(
            "select min(feature) from feature_effects where dataset = 'pbmc68k' and layer = 1 and cells = 'silent'"
        ).fetchone()
    page.goto(f"{pages.as_uri()}#feature={steered}")
    page.locator("#feature-title").filter(has_text=f"Feature {steered}").wait_for()
    page.locator("#effects-chart svg").wait_for()
    text = page.inner_text("#page")
    assert "What it does" in text and "Loss recovered by this layer's SAE: expression decoder" in text
    assert "across 2 training seeds" in text  # the feature's seed stability
    page.screenshot(path=str(ARTIFACTS / "feature-effects.png"), full_page=True)
    page.select_option("#layer", "0")  # the layer switcher: layer 0 of the same explorer
    page.wait_for_url("**/L0/index.html*")
    page.locator("#density svg").wait_for()
    assert "sae-genomics · pbmc68k · layer 0" in page.title()
    assert not errors, errors
    page.close()


@pytest.mark.slow
def test_browser_opens_the_served_feature_pages_from_the_uis_link(
    webserver: str, pages_url: str, browser: object
) -> None:
    """Chromium refuses file:// links from an http page; the asset's link goes to the pages server that
    `sae-genomics ui` runs beside the webserver."""
    page = _page(browser)
    page.goto(f"{webserver}/assets/feature_pages?view=events")
    link = page.locator(f'a[href^="{pages_url}/pbmc68k/"]').first
    link.wait_for()
    with page.expect_popup() as opened:
        link.click()
    explorer = opened.value
    explorer.locator("#density svg").wait_for()  # the explorer itself, over http
    assert explorer.url.startswith(pages_url) and "layer" in explorer.inner_text("#page")
    page.screenshot(path=str(ARTIFACTS / "ui-feature-pages-link.png"))
    explorer.close()
    page.close()
