"""The command line as a user runs it: a real process, a real home, a real warehouse file."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from sae_genomics_core.config import Home
from tests.conftest import TENX_H5, cli, counts, write_h5ad
from tests.unit.test_registry import late_nan_h5ad, one_gene_vocab_model


def test_demo_then_sql_prints_700(demo_home: Path) -> None:
    result = cli(demo_home, "sql", "select count(*) from cells where dataset='pbmc68k'")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].strip(" |") == "700"
    assert (demo_home / "warehouse.duckdb").exists()
    sets = cli(
        demo_home,
        "sql",
        "select count(*) as n, bool_and(random_weights) as r from activation_sets",
        "--format",
        "csv",
    )
    assert sets.stdout == "n,r\n8,true\n"
    saes = cli(
        demo_home,
        "sql",
        "select count(*) as n from sae_checkpoints where dataset = 'pbmc68k'",
        "--format",
        "csv",
    )
    assert saes.stdout == "n\n4\n"
    # the atlas: every layer's features matched to the other three layers
    atlas = cli(
        demo_home,
        "sql",
        "select count(*) as n, count(distinct (layer, other_layer)) as pairs, bool_and(layer <> other_layer) as apart, "
        "bool_and(best_cosine >= matched_cosine) as best_first from feature_matches where dataset = 'pbmc68k'",
        "--format",
        "csv",
    )
    assert atlas.stdout == "n,pairs,apart,best_first\n6144,12,true,true\n"
    # run history lives in the home's Dagster instance
    assert (demo_home / "dagster" / "dagster.yaml").exists()
    assert any((demo_home / "dagster").rglob("runs.db")) or any((demo_home / "dagster").rglob("*.db"))


def test_sql_formats(demo_home: Path) -> None:
    query = "select cell_type, count(*) as n from cells group by cell_type order by n desc limit 2"
    as_json = json.loads(cli(demo_home, "sql", query, "--format", "json").stdout)
    assert as_json[0] == {"cell_type": "Dendritic", "n": 240}
    as_csv = cli(demo_home, "sql", query, "--format", "csv").stdout.splitlines()
    assert as_csv[:2] == ["cell_type,n", "Dendritic,240"]


@pytest.mark.parametrize(
    "query",
    [
        "delete from cells",
        "attach 'x.duckdb'",
        "copy cells to 'x.csv'",
        "install httpfs",
        "select * from read_csv('/etc/hostname')",
    ],
)
def test_sql_refusals(demo_home: Path, query: str) -> None:
    result = cli(demo_home, "sql", query)
    assert result.returncode == 2
    assert "refused" in result.stderr
    assert cli(demo_home, "sql", "select count(*) as n from cells", "--format", "csv").stdout == "n\n700\n"


def _csv(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_steer_a_feature_then_contrast_two_cell_types(demo_home: Path) -> None:
    busiest = "select feature from feature_stats where dataset = 'pbmc68k' and layer = 1 order by fire_count desc limit 1"
    feature = _csv(cli(demo_home, "sql", busiest, "--format", "csv"))[0]["feature"]
    where = ("steer", "--dataset", "pbmc68k", "--layer", "1", "--cells", "48", "--format", "csv")
    steered = _csv(cli(demo_home, *where, "--feature", feature, "--strength", "2", "--top", "400"))
    genes = steered
    # every gene is named; one HGNC could not map keeps its symbol and no Ensembl id
    assert genes and all(row["ensembl_id"].startswith("ENSG") or row["symbol"] for row in genes)
    assert all((float(row["effect"]) > 0) == (row["direction"] == "up") for row in genes)
    # strength 0 changes no prediction at all: no gene moves up or down
    unmoved = _csv(cli(demo_home, *where, "--feature", feature, "--strength", "0", "--top", "400"))
    assert unmoved == []
    shifts = _csv(cli(demo_home, *where, "--feature", feature, "--show", "cell-types"))
    assert {row["cell_type"] for row in shifts} >= {"Dendritic", "CD14+ Monocyte"}
    contrast = _csv(cli(demo_home, *where, "--source", "CD14+ Monocyte", "--target", "Dendritic"))
    assert contrast and [int(row["rank"]) for row in contrast] == list(range(1, len(contrast) + 1))
    assert all(0 < float(row["percentile_same_frequency"]) <= 1 for row in contrast)
    relative = [float(row["relative_shift"]) for row in contrast]
    assert relative == sorted(relative, reverse=True)
    first = contrast[0]
    assert float(first["relative_shift"]) == pytest.approx(
        float(first["toward_target"]) - float(first["toward_source"])
    )
    unknown = cli(demo_home, *where, "--source", "Neuron", "--target", "Dendritic")
    assert unknown.returncode == 2 and "CD14+ Monocyte" in unknown.stderr  # says which types exist
    missing = cli(demo_home, *where, "--feature", "99999")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_register_bad_file_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = counts().toarray()
    bad[1, 1] = -3
    path = write_h5ad(tmp_path / "scaled.h5ad", bad)
    result = cli(home, "register", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "negative values" in result.stderr and "fix:" in result.stderr
    assert not (home / "warehouse.duckdb").exists()
    assert list((home / "registry").iterdir()) == []


def test_a_10x_file_registered_as_it_is_gets_clusters_and_pages_offline(tmp_path: Path) -> None:
    """A new user's own data: CellRanger's .h5 (raw counts, Ensembl ids, no cell types), no annotation
    tables, no network: the product converts it, clusters its cells and builds every layer's pages."""
    home = tmp_path / "home"
    result = cli(
        home,
        "register",
        str(TENX_H5),
        "--name",
        "chr21",
        "--ensembl-column",
        "gene_ids",
        "--layers",
        "1",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "1107 cells × 507 genes" in result.stdout and "converted" in result.stdout
    query = "select count(distinct cell_type) as n from cells where cell_type like 'cluster %'"
    assert int(_csv(cli(home, "sql", query, "--format", "csv"))[0]["n"]) > 1
    pages = sorted((home / "artefacts" / "pages" / "chr21").glob("L*/index.html"))
    assert [page.parent.name for page in pages] == ["L1", "L2"] and all(page.stat().st_size for page in pages)
    listed = cli(home, "datasets").stdout
    assert listed.startswith("chr21\t")
    genes = cli(
        home, "sql", "select count(*) as n from genes where ensembl_id like 'ENSG%'", "--format", "csv"
    )
    assert genes.stdout == "n\n507\n"
    assert cli(home, "unregister", "chr21").returncode == 0
    assert cli(home, "datasets").stdout == ""


def test_validate_prints_report(tenx_h5ad: Path, tmp_path: Path) -> None:
    result = cli(tmp_path / "home", "validate", str(tenx_h5ad), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value_kind"] == "raw_counts"


def _nothing_registered(home: Path) -> None:
    """No registry entry, no dataset partition, no warehouse rows."""
    from sae_genomics_core.config import Home
    from sae_genomics_dagster.instance import get_instance

    assert list((home / "registry").iterdir()) == []
    with get_instance(Home(home)) as instance:
        assert instance.get_dynamic_partitions("dataset") == []
    assert not (home / "warehouse.duckdb").exists()


def _empty_names(path: Path) -> Path:
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(40)])
    with pytest.warns(UserWarning, match="not unique"):
        ad.AnnData(X=counts(), obs=obs, var=pd.DataFrame(index=[""] * 30)).write_h5ad(path)
    return path


@pytest.mark.parametrize("run", [True, False], ids=["run", "no-run"])
def test_a_nan_past_the_quick_scan_is_refused_with_nothing_left(tmp_path: Path, run: bool) -> None:
    home = tmp_path / "home"
    path = late_nan_h5ad(tmp_path / "late_nan.h5ad")
    result = cli(home, "register", str(path), *([] if run else ["--no-run"]))
    assert result.returncode == 2, result.stdout
    assert "1 non-finite" in result.stderr and "nothing was written" in result.stderr
    _nothing_registered(home)


def test_empty_gene_names_are_refused_by_validate_and_register(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = _empty_names(tmp_path / "unnamed.h5ad")
    validated = cli(home, "validate", str(path))
    assert validated.returncode == 2 and "all 30 genes have an empty name" in validated.stderr
    registered = cli(home, "register", str(path))
    assert registered.returncode == 2 and "all 30 genes have an empty name" in registered.stderr
    _nothing_registered(home)


def test_no_gene_in_the_model_vocab_leaves_nothing_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    spec = one_gene_vocab_model(tmp_path / "model")
    monkeypatch.setenv("SAE_GENOMICS_MODEL", spec)
    result = cli(home, "register", str(write_h5ad(tmp_path / "genes.h5ad", counts())))
    assert result.returncode == 2, result.stdout
    assert f"none of its 30 genes is in the vocab of {spec}" in result.stderr
    assert "nothing was written" in result.stderr
    _nothing_registered(home)


def test_materialize_only_chosen_assets_reads_upstream_as_stored(
    demo_home: Path, demo_pages_url: str
) -> None:
    from sae_genomics_dagster.instance import get_instance

    def latest(asset: str) -> float:
        instance = get_instance(Home(demo_home))
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.timestamp if event else 0.0

    before = {asset: latest(asset) for asset in ("sae_checkpoint", "feature_stats", "feature_pages")}
    result = cli(
        demo_home,
        *("materialize", "pbmc68k", "--assets", "feature_pages", "--layers", "1"),
        SAE_GENOMICS_PAGES_URL=demo_pages_url,  # where the UI test serves the pages
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("succeeded") == 1  # one partition, one run
    assert latest("feature_pages") > before["feature_pages"]
    assert all(latest(asset) == before[asset] for asset in ("sae_checkpoint", "feature_stats"))
    refused = cli(demo_home, "materialize", "pbmc68k", "--assets", "feature_pagez")
    assert refused.returncode == 2 and "unknown asset or group feature_pagez" in refused.stderr
    assert "reports" in refused.stderr  # the groups it knows


def test_feature_pages_are_served_over_http_where_the_ui_links(demo_home: Path, demo_pages_url: str) -> None:
    import os
    import sys
    import urllib.request

    from sae_genomics_dagster.instance import get_instance

    url = demo_pages_url  # the demo's pages link there
    env = {**os.environ, "SAE_GENOMICS_HOME": str(demo_home), "SAE_GENOMICS_PAGES_URL": url}
    server = subprocess.Popen(
        [sys.executable, "-m", "sae_genomics_dagster.cli", "pages"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert url in server.stdout.readline()  # printed once it listens
        with urllib.request.urlopen(f"{url}/pbmc68k/L1/index.html", timeout=30) as response:
            assert response.status == 200 and "feature-title" in response.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the asset's link is that server's, not a file:// URL the UI's browser would refuse
    event = get_instance(Home(demo_home)).get_latest_materialization_event(dg.AssetKey("feature_pages"))
    link = event.asset_materialization.metadata["open"].value
    assert link.startswith(f"{url}/pbmc68k/L") and link.endswith("/index.html")
