"""The artefact store: the one owner of where activation stores, SAE checkpoints, charts and pages live,
which of them is current, and how a new one is published.

Layout under the root (a local folder by default, any fsspec URL through universal-pathlib):

    activations/<dataset>/<content key>/        one extraction (shards, manifest.json, vocab.json)
    activations/<dataset>/CURRENT.json          points at the dataset's current extraction
    sae/<dataset>/L<layer>/<hook>-<key>/        one training run; its sae-lens checkpoint in checkpoint/
    sae/<dataset>/L<layer>/CURRENT.json         points at the current checkpoint
    charts/<dataset>/L<layer>/<name>.html|png   charts of a dataset × layer
    pages/<dataset>/L<layer>/index.html         the feature explorer

An artefact is written in full first and published last, by replacing its pointer: one small object,
so a reader sees the previous artefact or the new one, never half of one. Pointers name their target
relative to their folder, so a home can move (or be copied to object storage) as a whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upath import UPath

from sae_genomics_core.errors import InputError, SettingsError

if TYPE_CHECKING:
    from sae_genomics_core.activations.store import ActivationStore

POINTER = "CURRENT.json"
LOCAL_PROTOCOLS = ("", "file", "local")


class ArtefactMissing(InputError):
    """An artefact a stage needs has not been produced (or published) yet."""


def _is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def _write_atomically(path: UPath, text: str) -> None:
    """Replace `path` by `text` so readers never see a partial object: a rename on a local disk; on object
    storage one PUT of a small object already is all-or-nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_local(path):
        path.write_text(text)
        return
    temporary = Path(path.path).with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path.path)


class ArtefactStore:
    """Where every artefact lives and which one is current; no other code builds an artefact path."""

    def __init__(self, root: str | os.PathLike[str] | UPath):
        self.root = UPath(root)

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
        return self.local(self.root / "pages" / dataset / f"L{layer}")

    def local(self, path: UPath) -> Path:
        """`path` as a local path, for the writers that memory-map or stream files."""
        if not _is_local(path):
            raise SettingsError(
                f"artefacts under {self.root} are not on a local disk; the stages read and write local files",
                fix="set the artefact root to a local folder",
            )
        return Path(path.path)

    # -- current pointers ---------------------------------------------------------------------------

    def publish_activations(self, dataset: str, folder: Path, checksum: str) -> None:
        self._publish(self.activations_folder(dataset), folder, checksum=checksum)

    def publish_checkpoint(self, dataset: str, layer: int, checkpoint: Path) -> None:
        self._publish(self.sae_folder(dataset, layer), checkpoint)

    def current_activations_folder(self, dataset: str) -> Path | None:
        target = self._current(self.activations_folder(dataset))
        return None if target is None else self.local(target)

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
        return None if target is None else self.local(target)

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

    def save_chart(self, dataset: str, layer: int, name: str, chart: Any) -> str:
        """Save an Altair chart (HTML and PNG) among the dataset × layer's charts; its markdown image."""
        from sae_genomics_core.viz.charts import chart_markdown, save_chart

        save_chart(chart, self.charts(dataset, layer) / name)
        return chart_markdown(chart, name.replace("_", " "))

    def _publish(self, folder: UPath, target: Path | UPath, **extra: Any) -> None:
        relative = os.path.relpath(str(target), str(self.local(folder)))
        _write_atomically(folder / POINTER, json.dumps({"path": relative, **extra}))

    def _current(self, folder: UPath) -> UPath | None:
        pointer = folder / POINTER
        if not pointer.exists():
            return None
        named = json.loads(pointer.read_text())["path"]
        # homes written before pointers were relative name absolute paths
        return UPath(named) if "://" in named or os.path.isabs(named) else folder / named
