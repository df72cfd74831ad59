from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import Home
from sae_genomics_core.data.registry import Registry
from sae_genomics_dagster.definitions import build_definitions
from sae_genomics_dagster.defs.datasets.jobs import dataset_pipeline_job


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def _run(home: Home, instance: dg.DagsterInstance, name: str) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("dataset", name):
        instance.add_dynamic_partitions("dataset", [name])
    job = build_definitions(home).resolve_job_def(dataset_pipeline_job.name)
    return job.execute_in_process(partition_key=name, instance=instance, raise_on_error=False)


def test_pipeline_extracts_and_catalogues_activations(
    home: Home, instance: dg.DagsterInstance, tenx_h5ad: Path
) -> None:
    Registry(home).register(tenx_h5ad, "chr21")
    result = _run(home, instance, "chr21")
    assert result.success
    event = instance.get_latest_materialization_event(dg.AssetKey("activations"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["random_weights"] is True and "tiny-random" in metadata["model_id"]
    assert metadata["layers"] == [0, 1, 2, 3] and metadata["hooks"] == ["resid_post", "mlp_out"]
    assert metadata["n_tokens"] > 0 and metadata["tokens_per_second"] > 0
    path = Path(metadata["path"])
    assert ArtefactStore(home.artefacts).current_activations_folder("chr21") == path

    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        rows = connection.execute(
            "select layer, hook, n_tokens, d_model, dtype, random_weights, checksum from activation_sets "
            "where dataset = 'chr21' order by layer, hook"
        ).fetchall()
        in_vocab, flagged, n_genes = connection.execute(
            "select n_genes_in_vocab, (select count(*) filter (where in_vocab) from genes where dataset = 'chr21'), "
            "(select count(*) from genes where dataset = 'chr21') from datasets where dataset = 'chr21'"
        ).fetchone()
    assert len(rows) == 8
    # unknown at ingest, recorded from the vocab the activations used; the same count in both tables
    assert in_vocab == metadata["n_genes_in_vocab"] == flagged and 0 < in_vocab <= n_genes
    assert {row[2] for row in rows} == {metadata["n_tokens"]}
    assert all(row[3] == 64 and row[4] == "bfloat16" and row[5] for row in rows)
    assert rows[0][6] == metadata["checksum"]

    # a second run finds the finished store and does no model work
    assert _run(home, instance, "chr21").success
    event = instance.get_latest_materialization_event(dg.AssetKey("activations"))
    assert event.asset_materialization.metadata["resumed_from_cell"].value == 1107


def test_missing_weights_fail_with_the_ways_to_provide_them(
    home: Home, instance: dg.DagsterInstance, tenx_h5ad: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "half-copied-model"
    folder.mkdir()
    (folder / "model_config.yml").write_text("n_layers: 2\n")  # the weights never arrived
    monkeypatch.setenv("SAE_GENOMICS_MODEL", f"dir:{folder}")
    Registry(home).register(tenx_h5ad, "chr21")
    result = _run(home, instance, "chr21")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "activations")
    assert "tiny-random" in failure.step_failure_data.user_failure_data.description
