"""The artefact store: layout, pointers and publishing on a local folder and on a real S3 server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from upath import UPath

from sae_genomics_core.artefacts import (
    CHECKSUMS,
    POINTER,
    ArtefactCorrupt,
    ArtefactMissing,
    ArtefactStore,
    ArtefactStoreUnavailable,
)
from tests.servers import S3Server


def _fake_extraction(store: ArtefactStore, dataset: str, key: str, payload: bytes) -> Path:
    folder = store.new_activations(dataset, key)
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "s0.npy").write_bytes(payload)
    (folder / "manifest.json").write_text(json.dumps({"layers": [0, 2], "checksum": key}))
    return folder


def _s3_store(server: S3Server, tmp_path: Path, cache_bytes: int = 2**30) -> ArtefactStore:
    bucket = f"b{uuid.uuid4().hex[:10]}"
    server.bucket(bucket)
    root = UPath(f"s3://{bucket}/home", **server.storage_options)
    return ArtefactStore(root, cache=tmp_path / f"cache-{bucket}", cache_bytes=cache_bytes)


def test_a_local_store_publishes_relative_pointers_and_reads_old_absolute_ones(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "artefacts")
    with pytest.raises(ArtefactMissing, match="no activations for d") as missing:
        store.current_activations("d")
    assert "materialise `activations` for d" in missing.value.explain()
    folder = _fake_extraction(store, "d", "k1", b"x" * 10)
    store.publish_activations("d", folder, "k1")
    pointer = json.loads((tmp_path / "artefacts" / "activations" / "d" / POINTER).read_text())
    assert pointer == {"path": "k1", "checksum": "k1"}
    assert store.current_activations_folder("d") == folder and store.extracted_layers("d") == [0, 2]
    # a home moved elsewhere keeps working: the pointer is relative
    moved = tmp_path / "moved"
    (tmp_path / "artefacts").rename(moved)
    assert ArtefactStore(moved).current_activations_folder("d") == moved / "activations" / "d" / "k1"
    # pointers written before they were relative name absolute paths
    (moved / "activations" / "d" / POINTER).write_text(json.dumps({"path": str(moved / "elsewhere")}))
    assert ArtefactStore(moved).current_activations_folder("d") == moved / "elsewhere"


def test_publishing_replaces_the_pointer_last(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path)
    first = _fake_extraction(store, "d", "k1", b"1")
    store.publish_activations("d", first, "k1")
    second = _fake_extraction(store, "d", "k2", b"2")
    assert store.current_activations_folder("d") == first  # written, not yet published
    store.publish_activations("d", second, "k2")
    assert store.current_activations_folder("d") == second
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_s3_store_uploads_then_points_and_another_machine_downloads_and_verifies(
    s3_server: S3Server, tmp_path: Path
) -> None:
    writer = _s3_store(s3_server, tmp_path)
    folder = _fake_extraction(writer, "d", "k1", b"activations" * 1000)
    writer.publish_activations("d", folder, "k1")
    remote = writer.root / "activations" / "d"
    assert json.loads((remote / POINTER).read_text())["path"] == "k1"
    assert set(json.loads((remote / "k1" / CHECKSUMS).read_text())) == {"shards/s0.npy", "manifest.json"}
    assert writer.uri(folder) == str(remote / "k1")

    # a second machine: an empty cache, the same root
    reader = ArtefactStore(writer.root, cache=tmp_path / "other-machine")
    local = reader.current_activations_folder("d")
    assert local is not None and local.is_relative_to(tmp_path / "other-machine")
    assert (local / "shards" / "s0.npy").read_bytes() == b"activations" * 1000
    assert reader.extracted_layers("d") == [0, 2]

    # a changed object is caught on download, not read
    (remote / "k1" / "shards" / "s0.npy").write_bytes(b"cut")
    third = ArtefactStore(writer.root, cache=tmp_path / "third-machine")
    with pytest.raises(ArtefactCorrupt, match="checksum"):
        third.current_activations_folder("d")


def test_checkpoints_and_pages_travel_with_their_run_folder(s3_server: S3Server, tmp_path: Path) -> None:
    store = _s3_store(s3_server, tmp_path)
    run = store.new_sae_run("d", 3, "resid_post", "abc")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "provenance.json").write_text("{}")
    (run / "training_curves.html").write_text("<html>")
    store.publish_checkpoint("d", 3, run / "checkpoint")
    assert (store.root / "sae" / "d" / "L3" / "resid_post-abc" / "training_curves.html").exists()
    elsewhere = ArtefactStore(store.root, cache=tmp_path / "elsewhere")
    checkpoint = elsewhere.require_checkpoint("d", 3)
    assert (checkpoint / "provenance.json").read_text() == "{}"
    pages = store.pages("d", 3)
    pages.mkdir(parents=True)
    (pages / "index.html").write_text("<html>pages")
    store.publish_pages("d", 3)
    assert (store.root / "pages" / "d" / "L3" / "index.html").read_text() == "<html>pages"


def test_the_local_replica_stays_within_its_budget(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sae_genomics_core.artefacts as artefacts

    monkeypatch.setattr(artefacts, "RECENTLY_USED_S", 0.0)
    writer = _s3_store(s3_server, tmp_path)
    for dataset in ("a", "b", "c"):
        writer.publish_activations(dataset, _fake_extraction(writer, dataset, "k", b"z" * 40_000), "k")
    reader = ArtefactStore(writer.root, cache=tmp_path / "small", cache_bytes=100_000)
    for dataset in ("a", "b", "c"):
        assert reader.current_activations_folder(dataset) is not None
    kept = sorted(path.parent.parent.name for path in (tmp_path / "small").rglob("manifest.json"))
    assert kept == ["b", "c"]  # the least recently used went first
    assert reader.current_activations_folder("a") is not None  # and comes back when asked for


def test_an_unreachable_object_store_is_a_clear_error(tmp_path: Path) -> None:
    from tests.servers import ACCESS_KEY, SECRET_KEY, _free_port_block

    port = _free_port_block(1)
    root = UPath(
        "s3://nowhere/home",
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"},
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2},
    )
    store = ArtefactStore(root, cache=tmp_path / "cache")
    with pytest.raises(
        ArtefactStoreUnavailable, match="the artefact store s3://nowhere/home failed"
    ) as error:
        store.current_activations_folder("d")
    assert "reachable" in error.value.explain()
