from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetOptions
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.warehouse.schema import columns
from sae_genomics_dagster.definitions import build_definitions
from sae_genomics_dagster.defs.datasets.jobs import dataset_pipeline_job
from tests.conftest import counts, write_h5ad


def _ingest(home: Home, instance: dg.DagsterInstance, name: str) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("dataset", name):
        instance.add_dynamic_partitions("dataset", [name])
    job = build_definitions(home).resolve_job_def(dataset_pipeline_job.name)
    return job.execute_in_process(partition_key=name, instance=instance, raise_on_error=False)


def _count(home: Home, sql: str) -> int:
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        return connection.execute(sql).fetchone()[0]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_demo_materialises_cells_genes_and_datasets(
    home: Home, instance: dg.DagsterInstance, demo_h5ad: Path
) -> None:
    Registry(home).register(demo_h5ad, "pbmc68k", DatasetOptions(cell_type_key="bulk_labels"))
    result = _ingest(home, instance, "pbmc68k")
    assert result.success
    assert _count(home, "select count(*) from cells where dataset = 'pbmc68k'") == 700
    assert _count(home, "select count(*) from genes where dataset = 'pbmc68k'") == 765
    assert _count(home, "select count(distinct cell_type) from cells") == 10
    assert _count(home, "select n_cells from datasets where dataset = 'pbmc68k'") == 700
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        for table in ("cells", "genes", "datasets"):
            present = [row[0] for row in connection.execute(f"describe {table}").fetchall()]
            assert present == columns(table), table

    cells_event = instance.get_latest_materialization_event(dg.AssetKey("cells"))
    metadata = cells_event.asset_materialization.metadata
    assert metadata["n_cells"].value == 700
    assert "raw.X" in metadata["validation_report"].value
    assert metadata["dagster/partition_row_count"].value == 700
    assert "cell_type" in [c.name for c in metadata["dagster/column_schema"].schema.columns]

    # a second run replaces the partition's rows instead of appending
    assert _ingest(home, instance, "pbmc68k").success
    assert _count(home, "select count(*) from cells") == 700


def test_partitions_are_independent(
    home: Home, instance: dg.DagsterInstance, tenx_h5ad: Path, demo_h5ad: Path
) -> None:
    registry = Registry(home)
    registry.register(demo_h5ad, "pbmc68k")
    registry.register(tenx_h5ad, "chr21")
    assert _ingest(home, instance, "pbmc68k").success
    assert _ingest(home, instance, "chr21").success
    assert _count(home, "select count(*) from cells where dataset = 'chr21'") == 1107
    assert _count(home, "select count(*) from cells where dataset = 'pbmc68k'") == 700
    assert (
        _count(home, "select count(*) from genes where dataset = 'chr21' and ensembl_id like 'ENSG%'") == 507
    )


def test_a_file_gone_bad_fails_and_keeps_the_previous_rows(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    path = write_h5ad(tmp_path / "d.h5ad", counts())
    Registry(home).register(path, "d")
    assert _ingest(home, instance, "d").success
    before = _count(home, "select count(*) from cells where dataset = 'd'")

    bad = counts(n_cells=10).toarray()
    bad[0, 0] = -1.0
    write_h5ad(path, bad)
    result = _ingest(home, instance, "d")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "negative values" in failure.step_failure_data.user_failure_data.description
    assert _count(home, "select count(*) from cells where dataset = 'd'") == before == 40


def test_unregistered_partition_fails_with_instructions(home: Home, instance: dg.DagsterInstance) -> None:
    result = _ingest(home, instance, "ghost")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "sae-genomics register" in failure.step_failure_data.user_failure_data.description
    assert not home.warehouse.exists()


def test_sample_column_reaches_cells_and_datasets(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    obs = {"cell_type": ["T", "B"] * 20, "donor_id": [f"d{i % 5}" for i in range(40)]}
    Registry(home).register(write_h5ad(tmp_path / "donors.h5ad", counts(), obs=obs), "donors")
    assert _ingest(home, instance, "donors").success
    assert _count(home, "select count(distinct sample) from cells where dataset = 'donors'") == 5
    assert _count(home, "select count(*) from cells where sample = 'd3'") == 8
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        key, n_samples = connection.execute("select sample_key, n_samples from datasets").fetchone()
    assert (key, n_samples) == ("donor_id", 5)


def test_a_registration_found_without_vocab_genes_after_ingest_is_undone(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The vocab check was deferred (vocab unreadable at registration) and the run found no gene in it:
    entry, partition and ingest rows go, in one transaction for the rows, and the message says so."""
    from sae_genomics_dagster.cli import _undo_if_no_vocab
    from sae_genomics_dagster.instance import get_instance
    from tests.unit.test_registry import one_gene_vocab_model

    path = write_h5ad(tmp_path / "genes.h5ad", counts())
    _, tables = Registry(home).register(path, "genes", model_spec=f"dir:{tmp_path / 'not_yet'}")
    assert tables.report.n_genes_in_vocab is None
    with get_instance(home) as instance:
        assert _ingest(home, instance, "genes").success
    assert _count(home, "select count(*) from cells where dataset = 'genes'") == 40

    assert _undo_if_no_vocab(home, "genes", tables, one_gene_vocab_model(tmp_path / "model")) == 2
    message = capsys.readouterr().err
    assert "none of its 30 genes is in the vocab" in message
    assert "registration of genes undone" in message and "(40 cells, 30 genes, 1 datasets)" in message
    assert Registry(home).names() == []
    with get_instance(home) as instance:
        assert instance.get_dynamic_partitions("dataset") == []
    for table in ("cells", "genes", "datasets"):
        assert _count(home, f"select count(*) from {table}") == 0
