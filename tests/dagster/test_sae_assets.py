from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import Home
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.pipeline.features import FEATURE_TABLES
from sae_genomics_core.sae.checkpoint import load_checkpoint
from sae_genomics_core.warehouse.schema import columns
from sae_genomics_dagster.definitions import build_definitions
from sae_genomics_dagster.defs.sae.sensors import train_saes_after_activations
from sae_genomics_dagster.resources import ArtefactsResource

# the dead window and warm-up are left to scale with the run (60k tokens, far below the old 1M window)
SMALL = {"training_tokens": 60_000, "batch_size": 2048}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tenx_h5ad: Path):
    root = tmp_path_factory.mktemp("sae") / "home"
    home = Home(root).ensure()
    with dg.DagsterInstance.ephemeral() as instance:
        Registry(home).register(tenx_h5ad, "chr21")
        instance.add_dynamic_partitions("dataset", ["chr21"])
        defs = build_definitions(home)
        assert (
            defs.resolve_job_def("dataset_pipeline")
            .execute_in_process(partition_key="chr21", instance=instance)
            .success
        )
        key = dg.MultiPartitionKey({"dataset": "chr21", "layer": "1"})
        result = defs.resolve_job_def("sae_pipeline").execute_in_process(
            partition_key=key,
            instance=instance,
            run_config={"ops": {"sae_checkpoint": {"config": SMALL}}},
            raise_on_error=False,
        )
        yield home, instance, defs, result


def test_sae_pipeline_writes_checkpoint_tables_and_checks(trained) -> None:
    home, instance, _, result = trained
    assert result.success
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        row = connection.execute(
            "select hook, d_in, d_sae, k, explained_variance, dead_fraction, uri, random_weights from sae_checkpoints "
            "where dataset = 'chr21' and layer = 1"
        ).fetchone()
        steps = connection.execute(
            "select count(*), max(tokens_seen) from sae_training_log where dataset = 'chr21' and layer = 1"
        ).fetchone()
    hook, d_in, d_sae, k, ev, dead, uri, random_weights = row
    assert (hook, d_in, d_sae, k, random_weights) == ("resid_post", 64, 512, 16, True)
    assert 0 < ev <= 1 and 0 <= dead <= 1
    assert steps[0] >= 1 and steps[1] > 0
    loaded = load_checkpoint(
        Path(uri.removeprefix("file://")),
        expect={"layer": 1, "hook": "resid_post", "d_in": 64, "dataset": "chr21"},
    )
    assert loaded.provenance["random_weights"] is True
    event = instance.get_latest_materialization_event(dg.AssetKey("sae_checkpoint"))
    metadata = event.asset_materialization.metadata
    assert "data:image/png;base64," in metadata["training_curves"].value
    assert metadata["explained_variance"].value == pytest.approx(ev)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "explained_variance_floor",
        "dead_fraction_ceiling",
        "loss_recovered_floor",
        "calibration",
    }
    # no annotation tables in this home: enrichment tests nothing, its check says so, and the feature
    # pages are built from what exists
    assert not checks["calibration"].passed and "not evaluated" in checks["calibration"].description
    enrichment = instance.get_latest_materialization_event(dg.AssetKey("enrichment")).asset_materialization
    assert enrichment.metadata["rows"].value == 0 and "not_run" in enrichment.metadata
    assert instance.get_latest_materialization_event(dg.AssetKey("feature_pages")) is not None
    assert checks["explained_variance_floor"].passed == (ev >= 0.7)


def test_loss_recovered_is_measured_on_held_out_cells_and_stored(trained) -> None:
    home, _, _, result = trained
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        row = connection.execute(
            "select loss_recovered_expr_zero, loss_recovered_mvc_zero, loss_recovered_expr_mean, loss_expr_clean, "
            "loss_expr_sae, loss_expr_zero from sae_checkpoints where dataset = 'chr21' and layer = 1"
        ).fetchone()
    expr_zero, mvc_zero, expr_mean, clean, spliced, zeroed = row
    assert None not in row
    assert expr_zero == pytest.approx((zeroed - spliced) / (zeroed - clean))
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}["loss_recovered_floor"]
    assert check.passed == (min(expr_zero, mvc_zero) >= 0.8)
    assert check.metadata["loss_recovered_mvc_zero"].value == pytest.approx(mvc_zero)
    assert expr_mean is not None


def _never_fire(loaded, batches) -> float:
    fired = None
    for batch in batches:
        counts = (loaded.encode(batch) > 0).sum(dim=0)
        fired = counts if fired is None else fired + counts
    return float((fired == 0).float().mean())


def test_dead_fraction_is_the_full_pass_value_and_the_check_uses_it(trained) -> None:

    from sae_genomics_core.sae.train import StoreSource

    home, instance, _, result = trained
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        dead, heldout, window, uri = connection.execute(
            "select dead_fraction, dead_fraction_heldout, dead_window_tokens, uri from sae_checkpoints "
            "where dataset = 'chr21' and layer = 1"
        ).fetchone()
    loaded = load_checkpoint(Path(uri.removeprefix("file://")))
    store = ArtefactStore(home.artefacts).current_activations("chr21")
    held_out = StoreSource(store, 1, "resid_post", 0.1, loaded.provenance["seed"]).held_out_cells
    # brute force, independent of training: every token of the store, then the held-out cells' tokens
    assert dead == pytest.approx(_never_fire(loaded, store.iter_batches(1, "resid_post", 4096)))
    assert heldout == pytest.approx(
        _never_fire(loaded, store.iter_batches(1, "resid_post", 4096, cells=held_out))
    )
    assert window == 6000  # a tenth of the 60k training tokens
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "dead_fraction_ceiling")
    assert check.metadata["dead_fraction"].value == pytest.approx(dead)
    assert check.passed == (dead <= 0.1)
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("sae_checkpoint")
    ).asset_materialization.metadata
    assert metadata["dead_fraction_heldout"].value == pytest.approx(heldout)
    assert metadata["training_warnings"].value == "none"


def test_a_run_too_short_for_auxk_says_so_in_metadata(trained) -> None:
    _, instance, defs, _ = trained
    one_step = {"ops": {"sae_checkpoint": {"config": {"training_tokens": 2048, "batch_size": 2048}}}}
    with pytest.warns(RuntimeWarning, match="AuxK cannot engage"):
        result = defs.resolve_job_def("sae_pipeline").execute_in_process(
            partition_key=dg.MultiPartitionKey({"dataset": "chr21", "layer": "0"}),
            instance=instance,
            run_config=one_step,
            asset_selection=[dg.AssetKey("sae_checkpoint")],
        )
    assert result.success
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("sae_checkpoint")
    ).asset_materialization.metadata
    assert "AuxK cannot engage" in metadata["training_warnings"].value
    assert metadata["auxk_steps"].value == 0


def test_a_hook_that_was_not_extracted_fails_clearly(trained) -> None:
    _, instance, defs, _ = trained
    key = dg.MultiPartitionKey({"dataset": "chr21", "layer": "2"})
    result = defs.resolve_job_def("sae_pipeline").execute_in_process(
        partition_key=key,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"sae_checkpoint": {"config": {**SMALL, "hook": "mlp_hidden"}}}},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert (
        "no activations for layer 2, hook mlp_hidden"
        in failure.step_failure_data.user_failure_data.description
    )


def test_finished_ingest_requests_one_sae_run_per_extracted_layer(trained) -> None:
    home, instance, _, _ = trained
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="dataset_pipeline"))
    run = runs[0]
    success = next(
        iter(instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records)
    ).event_log_entry.dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name="train_saes_after_activations",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=success,
        resources={"artefacts": ArtefactsResource(root=str(home.artefacts))},
    )
    requests = train_saes_after_activations(context)
    assert sorted(r.partition_key for r in requests) == [f"chr21|{layer}" for layer in range(4)]


def test_feature_tables_are_written_and_the_summary_view_reads_them(trained) -> None:
    home, instance, defs, _ = trained
    key = dg.MultiPartitionKey({"dataset": "chr21", "layer": "1"})
    result = defs.resolve_job_def("sae_pipeline").execute_in_process(
        partition_key=key,
        instance=instance,
        run_config={"ops": {"sae_checkpoint": {"config": SMALL}}},
        raise_on_error=False,
        asset_selection=[dg.AssetKey(name) for name in FEATURE_TABLES],
    )
    assert result.success
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        n_features = connection.execute(
            "select count(*) from feature_stats where dataset = 'chr21' and layer = 1"
        ).fetchone()[0]
        genes = connection.execute(
            "select count(*), count(ensembl_id), bool_and(ensembl_id like 'ENSG%') from feature_genes where dataset = 'chr21' and layer = 1"
        ).fetchone()
        summary = connection.execute(
            "select count(*), count(top_genes) from feature_summary where dataset = 'chr21'"
        ).fetchone()
    assert n_features == 512
    assert genes[0] > 0 and genes[0] == genes[1] and genes[2]
    assert summary[0] == 512 and summary[1] > 0
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        cells_binned, cells_active = connection.execute(
            "select (select sum(n_cells) from feature_histograms where dataset = 'chr21' and layer = 1), "
            "(select sum(n_cells_active) from feature_stats where dataset = 'chr21' and layer = 1)"
        ).fetchone()
    assert cells_binned == cells_active > 0  # every active cell of every feature sits in one bin
    # charts: images in the metadata, HTML and PNG beside the artefacts
    stats_metadata = instance.get_latest_materialization_event(
        dg.AssetKey("feature_stats")
    ).asset_materialization.metadata
    for chart in ("feature_density", "l0_histogram"):
        assert "data:image/png;base64," in stats_metadata[chart].value
        assert (home.artefacts / "charts" / "chr21" / "L1" / f"{chart}.html").exists()
        assert (home.artefacts / "charts" / "chr21" / "L1" / f"{chart}.png").exists()
    assert stats_metadata["mean_l0"].value > 0


def test_a_checkpoint_for_another_layer_is_refused(trained) -> None:
    home, instance, defs, _ = trained
    # point layer 3's SAE at layer 1's checkpoint, as a mistaken copy would
    store = ArtefactStore(home.artefacts)
    store.publish_checkpoint("chr21", 3, store.require_checkpoint("chr21", 1))
    result = defs.resolve_job_def("sae_pipeline").execute_in_process(
        partition_key=dg.MultiPartitionKey({"dataset": "chr21", "layer": "3"}),
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(name) for name in FEATURE_TABLES],
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert "refused" in message and "layer" in message


def test_an_unreachable_object_store_fails_the_step_clearly_and_keeps_the_tables(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.servers import _free_port_block

    home, instance, _, _ = trained
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        before = connection.execute("select * from sae_checkpoints order by layer").fetchall()
    monkeypatch.setenv("SAE_GENOMICS_ARTEFACTS", "s3://gone/sae-genomics")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port_block(1)}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = (
        build_definitions(home)
        .resolve_job_def("sae_pipeline")
        .execute_in_process(
            partition_key=dg.MultiPartitionKey({"dataset": "chr21", "layer": "1"}),
            instance=instance,
            raise_on_error=False,
            asset_selection=[dg.AssetKey("sae_checkpoints"), dg.AssetKey("sae_training_log")],
        )
    )
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # the filesystem made for the dead endpoint must not be reused
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description
    assert "the artefact store s3://gone/sae-genomics failed" in description and "reachable" in description
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        assert connection.execute("select * from sae_checkpoints order by layer").fetchall() == before


def test_feature_effects_are_written_for_a_capped_subset_on_cpu(trained) -> None:
    home, instance, _, result = trained
    assert result.success
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        summary = connection.execute(
            "select count(distinct feature), count(distinct strength), min(n_cells), "
            "count(*) filter (where ensembl_id is null), bool_and(consistency between 0 and 1) "
            "from feature_effects where dataset = 'chr21' and layer = 1"
        ).fetchone()
        directions = connection.execute(
            "select direction, bool_and(effect > 0), bool_and(effect < 0) from feature_effects "
            "where dataset = 'chr21' and layer = 1 group by direction order by direction"
        ).fetchall()
    features, strengths, fewest_cells, unnamed, consistent = summary
    assert 0 < features <= 8  # the CPU default caps the features evaluated
    assert (
        strengths == 5 and fewest_cells >= 1 and unnamed == 0 and consistent
    )  # four strengths and 0 (ablate)
    assert directions == [("down", False, True), ("up", True, False)]
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        written = connection.execute("select * from feature_effects limit 0").pl().columns
    assert written == columns("feature_effects")  # the public contract describes every column
    event = instance.get_latest_materialization_event(dg.AssetKey("feature_effects"))
    assert event.asset_materialization.metadata["features"].value == features


def test_seed_stability_matches_a_second_seed_against_random_directions(trained) -> None:
    home, _, _, result = trained
    assert result.success
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        rows, seeds, stable = connection.execute(
            "select count(*), count(distinct seed), count(distinct feature) filter (where stable) "
            "from feature_stability where dataset = 'chr21' and layer = 1"
        ).fetchone()
        summary = (
            connection.execute(
                "select n_seeds, best_above_0_9, null_best_above_0_9, null_mean_best_cosine, fraction_stable, "
                "explained_variance_mean, explained_variance_sd from sae_stability where dataset = 'chr21' and layer = 1"
            )
            .pl()
            .row(0, named=True)
        )
        in_summary = connection.execute(
            "select count(*) filter (where stable), count(*) filter (where stable is null) from feature_summary "
            "where dataset = 'chr21' and layer = 1"
        ).fetchone()
    assert (rows, seeds) == (512, 1) and summary["n_seeds"] == 2  # tiny-random: two seeds
    assert summary["fraction_stable"] == pytest.approx(stable / 512)
    assert summary["null_best_above_0_9"] == 0.0 and summary["null_mean_best_cosine"] < 0.7
    assert summary["explained_variance_sd"] is not None and 0 < summary["explained_variance_mean"] <= 1
    assert in_summary == (stable, 0)  # feature_summary shows the flag for every feature


def test_seed_stability_with_one_seed_is_refused_before_anything_runs(trained) -> None:
    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_core.errors import SettingsError
    from sae_genomics_core.pipeline.stability import run_sae_stability
    from sae_genomics_core.sae.settings import SaeStageSettings

    home, *_ = trained
    with pytest.raises(SettingsError, match="at least one other seed"):
        run_sae_stability(
            "chr21", 1, artefact_store(home), home.warehouse, SaeStageSettings(stability_seeds=1)
        )
