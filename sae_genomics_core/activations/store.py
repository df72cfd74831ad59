"""The on-disk activation store: shards of token activations, written incrementally, read as streams.

Layout of one extraction (a directory under the artefact root):

    manifest.json                   what was extracted, by which model, and the list of finished shards
    tokens/shard-00000.npz-less     per shard: cell_index.npy, gene_id.npy, value.npy, bin.npy, cls_cell_index.npy
    L{layer}.{hook}/shard-00000/    per shard: acts.npy (n_tokens × width) and cls.npy (n_cells × width)

Arrays are .npy files (memory-mappable; bf16 kept as its uint16 bit pattern, the manifest says so),\nwritten sequentially.
A shard is written into a temporary directory, checksummed, renamed into place, and only then listed
in the manifest (itself replaced atomically). A run that crashes half-way leaves at most an unlisted
temporary directory, which the next run removes before it resumes after the last listed shard: no
token is ever stored twice and no listed file is ever partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TOKEN_FIELDS = ("cell_index", "gene_id", "value", "bin")


def site_name(layer: int, hook: str) -> str:
    return f"L{layer}.{hook}"


def _array_sha256(path: Path) -> str:
    """sha256 of an .npy file's data (C order), the same digest the writer accumulated while filling it."""
    digest = hashlib.sha256()
    array = np.load(path, mmap_mode="r") if path.stat().st_size else np.empty(0)
    flat = array.reshape(-1) if array.size else array
    step = max(1, (8 << 20) // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        digest.update(memoryview(np.ascontiguousarray(flat[start : start + step])).cast("B"))
    return digest.hexdigest()


def to_storage(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """A CPU array in the storage dtype; bf16 as uint16 bits (numpy has no bfloat16)."""
    converted = tensor.detach().to("cpu", STORAGE_DTYPES[dtype])
    if dtype == "bfloat16":
        return converted.view(torch.int16).numpy().view(np.uint16)
    return converted.numpy()


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # a slice of a read-only memory map: torch wants memory it may own
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


@dataclass
class ShardWriter:
    """The .npy files of one shard, each filled front to back by appending rows, then committed.

    Rows arrive in order, so each file is written sequentially (much faster than page-faulting a
    fresh memory map) and its digest is accumulated on the way instead of re-reading the file.
    """

    store: ActivationStore
    index: int
    n_tokens: int
    n_cells: int
    _tmp: Path
    _files: dict[str, Any]  # name -> open binary handle, positioned after the .npy header
    _dtypes: dict[str, np.dtype]
    _token_cursor: int = 0
    _cell_cursor: int = 0
    _digests: dict[str, Any] = field(default_factory=dict)
    # one background thread writes and hashes (both release the GIL) while the next batch computes;
    # a single worker keeps every file's blocks in order
    _io: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    _pending: list[Future] = field(default_factory=list)

    def _write(self, name: str, block: np.ndarray) -> None:
        view = memoryview(block).cast("B")
        self._files[name].write(view)
        self._digests.setdefault(name, hashlib.sha256()).update(view)

    def _put(self, name: str, values: np.ndarray) -> None:
        block = np.ascontiguousarray(values, dtype=self._dtypes[name])
        self._pending.append(self._io.submit(self._write, name, block))
        if len(self._pending) > 256:  # bound the memory held by queued blocks
            self._drain(keep=128)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def add(
        self,
        tokens: dict[str, np.ndarray],
        cls_cells: np.ndarray,
        acts: dict[str, torch.Tensor],
        cls: dict[str, torch.Tensor],
    ) -> None:
        for name in TOKEN_FIELDS:
            self._put(f"tokens/{name}", tokens[name])
        self._put("tokens/cls_cell_index", cls_cells)
        dtype = self.store.manifest["dtype"]
        for site, values in acts.items():
            self._put(f"{site}/acts", to_storage(values, dtype))
            self._put(f"{site}/cls", to_storage(cls[site], dtype))
        self._token_cursor += len(tokens["cell_index"])
        self._cell_cursor += len(cls_cells)

    def commit(self, first_cell: int, last_cell: int, n_skipped: int) -> None:
        self._drain()
        self._io.shutdown()
        for handle in self._files.values():
            handle.close()
        if self._token_cursor != self.n_tokens or self._cell_cursor != self.n_cells:
            raise RuntimeError(f"shard {self.index}: filled {self._token_cursor}/{self.n_tokens} tokens")
        # no fsync: the kernel writes the pages back even if this process dies, and checksums catch
        # anything a machine crash could leave half-written
        files = {name: self._digests.get(name, hashlib.sha256()).hexdigest() for name in self._files}
        self.store._commit_shard(self, files, first_cell, last_cell, n_skipped)


class ActivationStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        )

    # -- writing ----------------------------------------------------------------------------------

    @classmethod
    def open_for_writing(cls, root: Path, header: dict[str, Any]) -> ActivationStore:
        """Create the store, or reopen it to resume when it was started with the same header."""
        store = cls(root)
        if store.manifest and {k: store.manifest.get(k) for k in header} != header:
            raise ValueError(
                f"{root} holds an extraction with other settings; remove it or use another directory"
            )
        if not store.manifest:
            store.root.mkdir(parents=True, exist_ok=True)
            store.manifest = {"format_version": FORMAT_VERSION, **header, "shards": [], "complete": False}
            store._save_manifest()
        for leftover in store.root.glob("*.tmp-shard-*"):  # a crashed run's unfinished shard
            shutil.rmtree(leftover)
        return store

    @property
    def next_cell(self) -> int:
        shards = self.manifest.get("shards", [])
        return shards[-1]["last_cell"] + 1 if shards else 0

    def start_shard(self, n_tokens: int, n_cells: int, widths: dict[str, int]) -> ShardWriter:
        index = len(self.manifest["shards"])
        tmp = self.root / f".tmp-shard-{index:05d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        dtype = self.manifest["dtype"]
        storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        layout: dict[str, tuple[tuple[int, ...], Any]] = {
            "tokens/cell_index": ((n_tokens,), np.int64),
            "tokens/gene_id": ((n_tokens,), np.int32),
            "tokens/value": ((n_tokens,), np.float32),
            "tokens/bin": ((n_tokens,), np.int16),
            "tokens/cls_cell_index": ((n_cells,), np.int64),
        }
        for site, width in widths.items():
            layout[f"{site}/acts"] = ((n_tokens, width), storage)
            layout[f"{site}/cls"] = ((n_cells, width), storage)
        files, dtypes = {}, {}
        for name, (shape, dtype_) in layout.items():
            path = tmp / f"{name}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "wb", buffering=1 << 22)  # noqa: SIM115 - closed in commit()
            np.lib.format.write_array_header_1_0(
                handle,
                {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype_)),
                    "fortran_order": False,
                    "shape": shape,
                },
            )
            files[name], dtypes[name] = handle, np.dtype(dtype_)
        return ShardWriter(self, index, n_tokens, n_cells, tmp, files, dtypes)

    def _commit_shard(
        self, writer: ShardWriter, files: dict[str, str], first: int, last: int, skipped: int
    ) -> None:
        name = f"shard-{writer.index:05d}"
        for group in {key.split("/")[0] for key in files}:
            target = self.root / group / name
            if target.exists():  # unlisted remains of a crash between rename and manifest update
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(writer._tmp / group, target)
        shutil.rmtree(writer._tmp)
        self.manifest["shards"].append(
            {
                "name": name,
                "first_cell": first,
                "last_cell": last,
                "n_cells": writer.n_cells,
                "n_tokens": writer.n_tokens,
                "n_cells_skipped": skipped,
                "sha256": files,
            }
        )
        self._save_manifest()

    def finish(self, extra: dict[str, Any]) -> None:
        self.manifest.update(extra)
        self.manifest["complete"] = True
        self.manifest["checksum"] = self.checksum()
        self._save_manifest()

    def _save_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=1))
        os.replace(tmp, self.manifest_path)

    # -- reading ----------------------------------------------------------------------------------

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for shard in self.manifest["shards"]:
            for name in sorted(shard["sha256"]):
                digest.update(f"{shard['name']}/{name}:{shard['sha256'][name]}\n".encode())
        return f"sha256:{digest.hexdigest()}"

    def verify(self) -> None:
        for shard in self.manifest["shards"]:
            for name, expected in shard["sha256"].items():
                group, array_name = name.split("/")
                if _array_sha256(self.root / group / shard["name"] / f"{array_name}.npy") != expected:
                    raise ValueError(
                        f"{self.root}: {group}/{shard['name']}/{array_name}.npy does not match its checksum"
                    )

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    @property
    def n_cells(self) -> int:
        return sum(s["n_cells"] for s in self.manifest["shards"])

    def _array(self, group: str, shard: str, name: str) -> np.ndarray:
        return np.load(self.root / group / shard / f"{name}.npy", mmap_mode="r")

    def tokens(self, shard: str) -> dict[str, np.ndarray]:
        return {name: self._array("tokens", shard, name) for name in (*TOKEN_FIELDS, "cls_cell_index")}

    def acts(self, layer: int, hook: str, shard: str) -> np.ndarray:
        return self._array(site_name(layer, hook), shard, "acts")

    def cls(self, layer: int, hook: str, shard: str) -> np.ndarray:
        return self._array(site_name(layer, hook), shard, "cls")

    def iter_batches(
        self,
        layer: int,
        hook: str,
        batch_size: int,
        *,
        seed: int = 0,
        cells: np.ndarray | None = None,
        exclude_cells: np.ndarray | None = None,
        shuffle_buffer_tokens: int = 1 << 18,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[torch.Tensor]:
        """Shuffled (batch_size, width) token batches of one site, streamed shard by shard.

        Shards are visited in a seeded random order; their rows pass through a shuffle buffer of
        `shuffle_buffer_tokens` rows, so memory stays bounded whatever the store's size. `cells` or
        `exclude_cells` select tokens by cell (the held-out split of SAE training).
        """
        site = site_name(layer, hook)
        if site not in self.manifest.get("sites", []):
            raise KeyError(
                f"{self.root} has no activations for layer {layer}, hook {hook}; it has {self.manifest.get('sites')}"
            )
        generator = np.random.default_rng(seed)
        storage = self.manifest["dtype"]
        # rows are read in blocks and pooled in the storage dtype; only the batch handed out is
        # converted, so memory stays near the shuffle buffer's size whatever a shard holds
        block = max(batch_size, shuffle_buffer_tokens // 4)
        buffer: list[torch.Tensor] = []
        buffered = 0
        for position in generator.permutation(len(self.manifest["shards"])):
            shard = self.manifest["shards"][position]["name"]
            rows = np.arange(self.manifest["shards"][position]["n_tokens"])
            if cells is not None or exclude_cells is not None:
                owner = self._array("tokens", shard, "cell_index")
                if cells is not None:
                    rows = rows[np.isin(owner, cells)]
                if exclude_cells is not None:
                    rows = rows[~np.isin(owner, exclude_cells)]
            acts = self.acts(layer, hook, shard)
            for start in range(0, rows.size, block):
                chunk = rows[start : start + block]
                buffer.append(from_storage(acts[chunk[0] : chunk[-1] + 1][chunk - chunk[0]], storage))
                buffered += chunk.size
                while buffered >= shuffle_buffer_tokens:
                    pool = torch.cat(buffer)
                    pool = pool[torch.from_numpy(generator.permutation(pool.shape[0]))]
                    n_out = (pool.shape[0] // 2 // batch_size) * batch_size or batch_size
                    for batch in pool[:n_out].split(batch_size):
                        yield batch.to(dtype)
                    buffer, buffered = [pool[n_out:]], pool.shape[0] - n_out
        if buffered:
            pool = torch.cat(buffer)
            for batch in pool[torch.from_numpy(generator.permutation(pool.shape[0]))].split(batch_size):
                yield batch.to(dtype)
