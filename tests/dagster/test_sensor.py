from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from sae_genomics_core.config import Home
from sae_genomics_core.data.registry import Registry
from sae_genomics_dagster.defs.datasets.sensors import incoming_h5ad
from sae_genomics_dagster.resources import HomeResource, ModelResource
from tests.conftest import counts, write_h5ad
from tests.unit.test_registry import late_nan_h5ad, one_gene_vocab_model


def _age(path: Path, seconds: float = 60.0) -> float:
    mtime = time.time() - seconds
    os.utime(path, (mtime, mtime))
    return path.stat().st_mtime


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def _tick(
    home: Home, instance: dg.DagsterInstance, cursor: str | None = None, spec: str = "tiny-random"
) -> dg.SensorResult:
    resources = {"home": HomeResource(root=str(home.root)), "model": ModelResource(spec=spec)}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return incoming_h5ad(context)


def test_a_dropped_file_is_registered_and_requested(
    home: Home, instance: dg.DagsterInstance, demo_h5ad: Path
) -> None:
    dropped = home.incoming / "PBMC 68k.h5ad"
    shutil.copyfile(demo_h5ad, dropped)
    mtime = _age(dropped)

    result = _tick(home, instance)
    assert [r.partition_key for r in result.run_requests] == ["pbmc_68k"]
    assert result.run_requests[0].run_key == f"pbmc_68k@{mtime}"
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "dataset" and list(add.partition_keys) == ["pbmc_68k"]
    assert Registry(home).get("pbmc_68k").source == "sensor"

    # the next tick with the returned cursor has nothing new
    again = _tick(home, instance, cursor=result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []

    # a changed file is ingested again, without adding the partition twice
    instance.add_dynamic_partitions("dataset", ["pbmc_68k"])
    _age(dropped, 30.0)
    changed = _tick(home, instance, cursor=result.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["pbmc_68k"]
    assert changed.dynamic_partitions_requests == []


def test_a_bad_file_is_skipped_and_not_registered(home: Home, instance: dg.DagsterInstance) -> None:
    bad = counts().toarray()
    bad[0, 0] = float("nan")
    path = write_h5ad(home.incoming / "broken.h5ad", bad)
    _age(path)
    result = _tick(home, instance)
    assert result.run_requests == []
    assert "broken.h5ad" in result.skip_reason.skip_message
    assert "non-finite" in result.skip_reason.skip_message
    assert Registry(home).names() == []


def test_a_file_still_being_written_waits(home: Home, instance: dg.DagsterInstance) -> None:
    write_h5ad(home.incoming / "fresh.h5ad", counts())  # mtime is now
    result = _tick(home, instance)
    assert result.run_requests == []
    assert Registry(home).names() == []


def test_a_file_registered_from_the_shell_keeps_its_name_and_options(
    home: Home, instance: dg.DagsterInstance
) -> None:
    from sae_genomics_core.data.h5ad import DatasetOptions

    path = write_h5ad(home.incoming / "sample.h5ad", counts(), obs={"label": ["x", "y"] * 20})
    _age(path)
    Registry(home).register(path, name="custom", options=DatasetOptions(cell_type_key="label"))
    result = _tick(home, instance)
    assert result.run_requests == []  # nothing new: the shell did it
    assert Registry(home).names() == ["custom"]
    _age(path, 10.0)  # the file changes: ingest again, under the same name and options
    changed = _tick(home, instance, cursor=result.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["custom"]
    assert Registry(home).get("custom").options.cell_type_key == "label"


def test_an_unreadable_file_does_not_block_the_others(
    home: Home, instance: dg.DagsterInstance, demo_h5ad: Path
) -> None:
    import h5py

    with h5py.File(home.incoming / "a_no_matrix.h5ad", "w") as handle:
        handle.create_group("obs")
    _age(home.incoming / "a_no_matrix.h5ad")
    shutil.copyfile(demo_h5ad, home.incoming / "b_good.h5ad")
    _age(home.incoming / "b_good.h5ad")
    result = _tick(home, instance)
    assert [r.partition_key for r in result.run_requests] == ["b_good"]
    again = _tick(home, instance, cursor=result.cursor)
    assert again.run_requests == []  # the bad one is not retried until it changes


def test_a_nan_past_the_quick_scan_registers_nothing(home: Home, instance: dg.DagsterInstance) -> None:
    path = late_nan_h5ad(home.incoming / "late_nan.h5ad")
    _age(path)
    result = _tick(home, instance)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert "non-finite" in result.skip_reason.skip_message
    assert Registry(home).names() == []


def test_a_file_with_no_gene_in_the_vocab_registers_nothing(
    home: Home, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    path = write_h5ad(home.incoming / "other_genes.h5ad", counts())
    _age(path)
    result = _tick(home, instance, spec=one_gene_vocab_model(tmp_path / "model"))
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert "vocab" in result.skip_reason.skip_message
    assert Registry(home).names() == []


def test_the_sensor_can_watch_an_object_storage_prefix(
    home: Home, instance: dg.DagsterInstance, demo_h5ad: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    import s3fs

    import sae_genomics_core.data.incoming as incoming

    bucket = f"incoming-{uuid.uuid4().hex[:8]}"
    s3_server.bucket(bucket)
    for variable, value in s3_server.environment.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SAE_GENOMICS_INCOMING", f"s3://{bucket}/drop/")
    # fsspec reuses a filesystem made with the same arguments: one from an earlier test holds another endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem(**s3_server.storage_options).put_file(str(demo_h5ad), f"{bucket}/drop/pbmc s3.h5ad")
    assert _tick(home, instance).run_requests == []  # just written: not settled yet
    monkeypatch.setattr(incoming, "SETTLE_SECONDS", 1.0)
    time.sleep(2.5)  # S3 times are whole seconds (possibly rounded up): let it settle by a clear margin
    result = _tick(home, instance)
    assert [r.partition_key for r in result.run_requests] == ["pbmc_s3"]
    entry = Registry(home).get("pbmc_s3")
    assert (
        entry.path == home.cache / "incoming" / "pbmc s3.h5ad"
        and entry.path.read_bytes() == demo_h5ad.read_bytes()
    )
    assert _tick(home, instance, cursor=result.cursor).run_requests == []  # unchanged: nothing again
