"""The artefact store: the one owner of where activation stores, SAE checkpoints, charts and pages live,
which of them is current, and how a new one is published.

Layout under the root (a local folder by default, or any fsspec URL such as s3://bucket/prefix):

    activations/<dataset>/<content key>/        one extraction (shards, manifest.json, vocab.json)
    activations/<dataset>/CURRENT.json          points at the dataset's current extraction
    sae/<dataset>/L<layer>/<hook>-<key>/        one training run; its sae-lens checkpoint in checkpoint/
    sae/<dataset>/L<layer>/CURRENT.json         points at the current checkpoint
    charts/<dataset>/L<layer>/<name>.html|png   charts of a dataset × layer
    pages/<dataset>/L<layer>/index.html         the feature explorer

An artefact is written in full first and published last, by replacing its pointer: one small object,
so a reader sees the previous artefact or the new one, never half of one. Pointers name their target
relative to their folder, so a home can move (or be copied to object storage) as a whole.

On object storage, stages still write and memory-map local files: they work in a local replica of the
root (under the cache folder). Publishing uploads the folder's files, then its SHA256SUMS.json, then the
pointer; never a directory rename, which is a copy and delete on S3. A reader downloads a published
folder into the replica once, verifying every file against SHA256SUMS.json; the replica is bounded,
the least recently used folders leave first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upath import UPath

from sae_genomics_core.config import Environment, Home
from sae_genomics_core.errors import InputError, SaeGenomicsError, SettingsError

if TYPE_CHECKING:
    from sae_genomics_core.activations.store import ActivationStore

POINTER = "CURRENT.json"
CHECKSUMS = "SHA256SUMS.json"  # written after a folder's files, before its pointer
VERIFIED = ".verified"  # in a replica folder: downloaded (or uploaded) whole and checked
LOCAL_PROTOCOLS = ("", "file", "local")
RECENTLY_USED_S = 600.0  # a replica folder used this recently is never evicted (a reader may hold it)


class ArtefactMissing(InputError):
    """An artefact a stage needs has not been produced (or published) yet."""


class ArtefactStoreUnavailable(SaeGenomicsError):
    """The object store could not be reached or refused a request; nothing was published."""

    fix = "check that the object store is running and reachable and that its credentials are set, then run again"


class ArtefactCorrupt(SaeGenomicsError):
    """A downloaded artefact does not match the checksums published with it."""

    fix = "materialise the stage that wrote it again (its files on the object store were changed or cut)"


def _is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: UPath, text: str) -> None:
    """Replace `path` by `text` so readers never see a partial object: a rename on a local disk; on object
    storage one PUT of a small object already is all-or-nothing."""
    if not _is_local(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(path.path).with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path.path)


class ArtefactStore:
    """Where every artefact lives and which one is current; no other code builds an artefact path.

    `cache`: the local replica of a remote root (required for one), bounded by `cache_bytes`."""

    def __init__(
        self,
        root: str | os.PathLike[str] | UPath,
        cache: Path | None = None,
        cache_bytes: int = int(Environment.artefact_cache_gb * 2**30),
    ):
        self.root = UPath(root)
        self.remote = not _is_local(self.root)
        if self.remote and cache is None:
            raise SettingsError(
                f"artefacts under {self.root} need a local cache folder for the stages' working files",
                fix="pass cache= (the home's cache/artefacts)",
            )
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        self.replica = Path(cache) / key if cache is not None and self.remote else Path(self.root.path)
        self.cache_bytes = cache_bytes

    def __repr__(self) -> str:
        return f"ArtefactStore({str(self.root)!r})"

    # -- layout -------------------------------------------------------------------------------------

    def activations_folder(self, dataset: str) -> UPath:
        return self.root / "activations" / dataset

    def sae_folder(self, dataset: str, layer: int) -> UPath:
        return self.root / "sae" / dataset / f"L{layer}"

    def new_activations(self, dataset: str, key: str) -> Path:
        """The folder an extraction with this content key is written to (a rerun resumes in it)."""
        return self.local(self.activations_folder(dataset) / key)

    def new_sae_run(self, dataset: str, layer: int, hook: str, key: str) -> Path:
        """The folder a training run with this content key works in (its resumable state, its checkpoint)."""
        folder = self.local(self.sae_folder(dataset, layer) / f"{hook}-{key}")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def charts(self, dataset: str, layer: int) -> Path:
        folder = self.local(self.root / "charts" / dataset / f"L{layer}")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def pages(self, dataset: str, layer: int) -> Path:
        return self.pages_root() / dataset / f"L{layer}"

    def pages_root(self) -> Path:
        """The local folder of every dataset × layer's pages (what `sae-genomics pages` serves)."""
        return self.local(self.root / "pages")

    def local(self, path: UPath) -> Path:
        """Where `path` (under the root) is on this machine: itself on a local root, else its replica."""
        if not self.remote:
            return Path(path.path)
        return self.replica / self._relative(path)

    def _relative(self, path: UPath) -> str:
        return path.path.removeprefix(self.root.path).strip("/")

    def uri(self, local: Path) -> str:
        """Where a published local folder or file is, for tables and links: its object-store URL when remote."""
        return str(self._remote(local)) if self.remote else local.as_uri()

    def _remote(self, local: Path) -> UPath:
        return self.root / local.relative_to(self.replica).as_posix() if self.remote else UPath(local)

    # -- publishing ---------------------------------------------------------------------------------

    def publish_activations(self, dataset: str, folder: Path, checksum: str) -> None:
        self._upload(folder)
        self._publish(self.activations_folder(dataset), folder, checksum=checksum)

    def publish_checkpoint(self, dataset: str, layer: int, checkpoint: Path) -> None:
        """Publish a training run's checkpoint (the run folder goes along: its training curves)."""
        self._upload(checkpoint.parent)
        self._publish(self.sae_folder(dataset, layer), checkpoint)

    def publish_pages(self, dataset: str, layer: int) -> None:
        """The layer's explorer folder, and the dataset's entry page beside it."""
        folder = self.pages(dataset, layer)
        self._upload(folder)
        entry = folder.parent / "index.html"
        if self.remote and entry.exists():
            with self._reaching():
                self._remote(entry).fs.put_file(str(entry), self._remote(entry).path)

    def save_chart(self, dataset: str, layer: int, name: str, chart: Any) -> str:
        """Save an Altair chart (HTML and PNG) among the dataset × layer's charts; its markdown image."""
        from sae_genomics_core.viz.charts import chart_markdown, save_chart

        folder = self.charts(dataset, layer)
        save_chart(chart, folder / name)
        self._upload(folder)
        return chart_markdown(chart, name.replace("_", " "))

    def _publish(self, folder: UPath, target: Path, **extra: Any) -> None:
        relative = os.path.relpath(target, self.local(folder))
        with self._reaching():
            _write_atomically(folder / POINTER, json.dumps({"path": relative, **extra}))

    def _upload(self, folder: Path) -> None:
        """Copy a finished local folder to the object store: its files, then their checksums (one object)."""
        if not self.remote:
            return
        sums = {
            file.relative_to(folder).as_posix(): _sha256(file)
            for file in sorted(folder.rglob("*"))
            if file.is_file() and file.name not in (VERIFIED, CHECKSUMS) and not file.name.endswith(".tmp")
        }
        remote = self._remote(folder)
        with self._reaching():
            for name in sums:
                remote.fs.put_file(str(folder / name), (remote / name).path)
            (remote / CHECKSUMS).write_text(json.dumps(sums, sort_keys=True))
        (folder / VERIFIED).touch()

    # -- current pointers ---------------------------------------------------------------------------

    def current_activations_folder(self, dataset: str) -> Path | None:
        target = self._current(self.activations_folder(dataset))
        return None if target is None else self._fetch(target)

    def current_activations(self, dataset: str) -> ActivationStore:
        """The dataset's current activation store; ArtefactMissing (with what to run) before one exists."""
        from sae_genomics_core.activations.store import ActivationStore

        folder = self.current_activations_folder(dataset)
        if folder is None:
            raise ArtefactMissing(
                f"no activations for {dataset}", fix=f"materialise `activations` for {dataset} first"
            )
        return ActivationStore(folder)

    def current_checkpoint(self, dataset: str, layer: int) -> Path | None:
        target = self._current(self.sae_folder(dataset, layer))
        return None if target is None else self._fetch(target.parent) / target.name

    def require_checkpoint(self, dataset: str, layer: int) -> Path:
        checkpoint = self.current_checkpoint(dataset, layer)
        if checkpoint is None:
            raise ArtefactMissing(
                f"no SAE for {dataset} layer {layer}",
                fix=f"materialise `sae_checkpoint` for {dataset} layer {layer} first",
            )
        return checkpoint

    def extracted_layers(self, dataset: str) -> list[int]:
        """The layers of the dataset's current activations ([] before the first extraction)."""
        if self.current_activations_folder(dataset) is None:
            return []
        return [int(layer) for layer in self.current_activations(dataset).manifest["layers"]]

    def _current(self, folder: UPath) -> UPath | None:
        pointer = folder / POINTER
        with self._reaching():
            if not pointer.exists():
                return None
            named = json.loads(pointer.read_text())["path"]
        # homes written before pointers were relative name absolute paths
        if "://" in named or os.path.isabs(named):
            return UPath(named)
        target = os.path.normpath(os.path.join(folder.path, named))
        return (
            UPath(f"{folder.protocol}://{target}", **folder.storage_options) if self.remote else UPath(target)
        )

    # -- the local replica of a remote root ---------------------------------------------------------

    def _fetch(self, remote: UPath) -> Path:
        """The published folder `remote` on this machine: downloaded once and verified, then reused."""
        if not self.remote:
            return Path(remote.path)
        local = self.local(remote)
        if not (local / VERIFIED).exists():
            self._download(remote, local)
        (local / VERIFIED).touch()  # its mtime says when it was last used
        self._evict(keep=local)
        return local

    def _download(self, remote: UPath, local: Path) -> None:
        with self._reaching():
            sums: dict[str, str] = json.loads((remote / CHECKSUMS).read_text())
            local.mkdir(parents=True, exist_ok=True)
            for name, expected in sums.items():
                target = local / name
                if target.exists() and _sha256(target) == expected:
                    continue  # written here, or downloaded before an interruption
                target.parent.mkdir(parents=True, exist_ok=True)
                remote.fs.get_file((remote / name).path, str(target))
                if _sha256(target) != expected:
                    target.unlink()
                    raise ArtefactCorrupt(f"{remote / name} does not match its published checksum")

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used replica folders while the replica is over its size budget."""
        folders = sorted((marker.parent for marker in self.replica.rglob(VERIFIED)), key=_last_used)
        total = sum(_size(folder) for folder in folders)
        now = time.time()
        for folder in folders:
            if total <= self.cache_bytes:
                break
            if folder == keep or now - _last_used(folder) < RECENTLY_USED_S:
                continue
            total -= _size(folder)
            shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Errors of the object store as one error that says what to check (local roots raise as they are)."""
        if not self.remote:
            yield
            return
        try:
            yield
        except SaeGenomicsError:
            raise
        except (OSError, RuntimeError, ValueError) as error:
            raise ArtefactStoreUnavailable(f"the artefact store {self.root} failed: {error}") from error
        except Exception as error:  # botocore's and aiohttp's own error types
            if type(error).__module__.split(".")[0] not in ("botocore", "aiobotocore", "aiohttp", "s3fs"):
                raise
            raise ArtefactStoreUnavailable(f"the artefact store {self.root} failed: {error}") from error


def artefact_store(home: Home) -> ArtefactStore:
    """The home's artefact store: $SAE_GENOMICS_ARTEFACTS (any fsspec URL) or the home's artefacts/ folder."""
    environment = Environment.read()
    return ArtefactStore(
        environment.artefacts_root or home.artefacts,
        cache=home.cache / "artefacts",
        cache_bytes=int(environment.artefact_cache_gb * 2**30),
    )


def _last_used(folder: Path) -> float:
    return (folder / VERIFIED).stat().st_mtime


def _size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
