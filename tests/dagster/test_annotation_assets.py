"""Annotation assets in Dagster: snapshot and live refreshes, failures that keep the old table, schedules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from sae_genomics_core.config import Home
from sae_genomics_dagster.definitions import build_definitions
from tests.fakes.http_service import Answer, FakeService

REPO = Path(__file__).resolve().parents[2]
GENCC_SNAPSHOT = REPO / "external" / "snapshots" / "gencc" / "gencc-submissions.csv"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def materialise(
    home: Home, instance: dg.DagsterInstance, assets: list[str], mode: str = "snapshot", **files: list[str]
) -> dg.ExecuteInProcessResult:
    """Runs each asset's refresh job (the one its schedule launches), in order; stops at a failure."""
    defs = build_definitions(home)
    for name in assets:
        job = defs.resolve_job_def(f"refresh_{name}")
        run_config = {"ops": {name: {"config": {"mode": mode, "files": files.get(name, [])}}}}
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
        if not result.success:
            break
    return result


def query(home: Home, sql: str) -> list[tuple]:
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_snapshot_refresh_fills_tables_view_and_metadata(home: Home, instance: dg.DagsterInstance) -> None:
    result = materialise(home, instance, ["gene_identifiers", "annotations_gencc"])
    assert result.success
    (n_genes,) = query(home, "select count(*) from gene_identifiers")[0]
    assert n_genes > 40_000
    rows = query(home, "select ensembl_id, symbol, term_id, score, source_version from gene_annotations")
    assert rows and all(r[0] == "ENSG00000115758" and r[1] == "ODC1" for r in rows)  # ODC1's HGNC:8109 mapped
    assert {r[2] for r in rows} == {"MONDO:0033642"} and rows[0][3] == pytest.approx(0.8)
    event = instance.get_latest_materialization_event(dg.AssetKey("annotations_gencc"))
    metadata = event.asset_materialization.metadata
    assert metadata["source_version"].value == rows[0][4] == "GenCC export of 2026-07-26"
    assert metadata["rows"].value == 1 and metadata["genes"].value == 1 and metadata["terms"].value == 1
    assert metadata["diff_rows_added"].value == 1 and metadata["diff_rows_removed"].value == 0
    assert metadata["id_mapping"].value["mapped"] == 1

    # a second refresh of the same release adds and removes nothing
    assert materialise(home, instance, ["annotations_gencc"]).success
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("annotations_gencc")
    ).asset_materialization.metadata
    assert (metadata["diff_rows_added"].value, metadata["diff_rows_removed"].value) == (0, 0)
    assert metadata["diff_previous_version"].value == "GenCC export of 2026-07-26"


def test_annotations_need_gene_identifiers_first(home: Home, instance: dg.DagsterInstance) -> None:
    result = materialise(home, instance, ["annotations_gencc"])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "materialise the `gene_identifiers` asset first" in failure.description


def _sources_with(tmp_path: Path, **urls: str) -> Path:
    sources = yaml.safe_load((REPO / "external" / "sources.yaml").read_text())
    for database, url in urls.items():
        sources["databases"][database]["bulk_url"] = url
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(sources))
    return path


def test_failed_live_refresh_keeps_the_previous_table(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert materialise(home, instance, ["gene_identifiers"]).success
    good = GENCC_SNAPSHOT.read_text()
    with FakeService() as service:
        monkeypatch.setenv(
            "SAE_GENOMICS_SOURCES", str(_sources_with(tmp_path, gencc=service.url + "/gencc.csv"))
        )
        service.route("/gencc.csv", Answer.text(good, headers={"ETag": '"r1"'}))
        assert materialise(home, instance, ["annotations_gencc"], mode="live").success
        before = query(home, "select * from annotations_gencc order by all")

        # the export loses a required column: a clear error, nothing written
        drifted = good.replace("disease_curie", "disease_id_renamed")
        service.route("/gencc.csv", Answer.text(drifted, headers={"ETag": '"r2"'}))
        result = materialise(home, instance, ["annotations_gencc"], mode="live")
        assert not result.success
        message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
        assert "previous table kept" in message and "disease_curie" in message
        assert query(home, "select * from annotations_gencc order by all") == before

        # a truncated download fails the same way
        service.route("/gencc.csv", Answer.text(good * 50, headers={"ETag": '"r3"'}, truncate_to=100))
        assert not materialise(home, instance, ["annotations_gencc"], mode="live").success
        assert query(home, "select * from annotations_gencc order by all") == before
    assert query(home, "select count(*) from gene_identifiers")[0][0] > 40_000


def test_unknown_mode_is_refused(home: Home, instance: dg.DagsterInstance) -> None:
    result = materialise(home, instance, ["gene_identifiers"], mode="sometimes")
    assert not result.success
    assert "unknown annotation mode 'sometimes'" in (
        result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    )
    assert not home.warehouse.exists() or not query(
        home, "select 1 from information_schema.tables where table_name = 'gene_identifiers'"
    )


def test_every_annotation_asset_has_a_schedule_on_its_cron(home: Home) -> None:
    defs = build_definitions(home)
    sources = yaml.safe_load((REPO / "external" / "sources.yaml").read_text())
    schedules = {s.name: s for s in defs.schedules}
    asset_names = {spec.key.path[-1] for spec in defs.resolve_all_asset_specs()}
    annotation_assets = sorted(n for n in asset_names if n.startswith("annotations_"))
    assert annotation_assets
    for asset in annotation_assets:
        schedule = schedules[f"refresh_{asset}_schedule"]
        assert (
            schedule.cron_schedule == sources["databases"][asset.removeprefix("annotations_")]["refresh_cron"]
        )
        key_env = sources["databases"][asset.removeprefix("annotations_")].get("key_env")
        # a key-gated source without its key starts stopped (the test environment sets no key)
        expected = dg.DefaultScheduleStatus.STOPPED if key_env else dg.DefaultScheduleStatus.RUNNING
        assert schedule.default_status == expected, asset
        assert "fetches https://" in schedule.description or "reads the" in schedule.description
    assert (
        schedules["refresh_gene_identifiers_schedule"].cron_schedule
        == (sources["gene_identifiers"]["hgnc"]["refresh_cron"])
    )


OMIM_FIXTURE = REPO / "tests" / "fixtures" / "annotations" / "omim" / "genemap2.synthetic.txt"


def _everything_the_run_left(
    home: Home, instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult
) -> str:
    """Event log (messages, metadata) and the warehouse, as one text to search for a secret."""
    logs = [repr(record) for record in instance.all_logs(result.run_id)]
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        tables = [
            repr(connection.execute(f'select * from "{name}"').fetchall())
            for (name,) in connection.execute("select table_name from information_schema.tables").fetchall()
            if name.startswith("annotations_")
        ]
    return "\n".join(logs + tables)


def test_keyed_source_without_key_is_skipped_not_failed(
    home: Home, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMIM_API_KEY", raising=False)
    assert materialise(home, instance, ["gene_identifiers"]).success
    result = materialise(home, instance, ["annotations_omim"], mode="live")
    assert result.success
    assert instance.get_latest_materialization_event(dg.AssetKey("annotations_omim")) is None
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("skipped annotations_omim" in m and "OMIM_API_KEY" in m for m in messages)
    schedule = next(
        s for s in build_definitions(home).schedules if s.name == "refresh_annotations_omim_schedule"
    )
    with dg.build_schedule_context(instance=instance) as context:
        evaluation = schedule.evaluate_tick(context)
    assert evaluation.skip_message and "OMIM_API_KEY is not set" in evaluation.skip_message


@pytest.mark.parametrize("database", ["opentargets", "monarch"])
def test_gene_driven_source_without_a_dataset_is_skipped_not_failed(
    home: Home, instance: dg.DagsterInstance, database: str
) -> None:
    # their live APIs are asked about the registered datasets' genes; a fresh install has none yet,
    # and a scheduled tick then must not be a failed run
    assert materialise(home, instance, ["gene_identifiers"]).success
    result = materialise(home, instance, [f"annotations_{database}"], mode="live")
    assert result.success
    assert instance.get_latest_materialization_event(dg.AssetKey(f"annotations_{database}")) is None
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any(f"skipped annotations_{database}" in m and "register a dataset" in m for m in messages)


def test_keyed_source_with_key_never_leaks_it(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "omim-test-key-5f2d91"
    monkeypatch.setenv("OMIM_API_KEY", key)
    assert materialise(home, instance, ["gene_identifiers"]).success
    with FakeService() as service:
        url = service.url + "/downloads/{key}/genemap2.txt"
        monkeypatch.setenv("SAE_GENOMICS_SOURCES", str(_sources_with(tmp_path, omim=url)))
        service.route(f"/downloads/{key}/genemap2.txt", Answer.text(OMIM_FIXTURE.read_text()))
        result = materialise(home, instance, ["annotations_omim"], mode="live")
        assert result.success
        assert service.requests[-1].path == f"/downloads/{key}/genemap2.txt"  # the key did reach the service
        (rows,) = query(home, "select count(*) from annotations_omim")[0]
        assert rows > 0
        assert key not in _everything_the_run_left(home, instance, result)

        service.route(f"/downloads/{key}/genemap2.txt", Answer.text("server error", status=500))
        failed = materialise(home, instance, ["annotations_omim"], mode="live")
        assert not failed.success
        assert key not in _everything_the_run_left(home, instance, failed)
        assert query(home, "select count(*) from annotations_omim")[0][0] == rows
    schedule = next(
        s for s in build_definitions(home).schedules if s.name == "refresh_annotations_omim_schedule"
    )
    with dg.build_schedule_context(instance=instance) as context:
        assert schedule.evaluate_tick(context).run_requests


def test_hpo_ontology_refresh_and_a_bad_file_keeps_the_previous_table(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    assert materialise(home, instance, ["hpo_ontology"]).success
    assert query(home, "select distinct version from hpo_ontology") == [("2023-01-27",)]
    (ancestors,) = query(home, "select ancestor_ids from hpo_ontology where term_id = 'HP:0001250'")[0]
    assert "HP:0000118" in ancestors  # Seizure → … → Phenotypic abnormality
    broken = tmp_path / "hp.obo"
    broken.write_text("this is not an ontology\n")
    result = materialise(home, instance, ["hpo_ontology"], mode="file", hpo_ontology=[str(broken)])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "previous table kept" in failure.step_failure_data.error.message
    assert query(home, "select count(*) from hpo_ontology")[0][0] > 15_000
