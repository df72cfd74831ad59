"""One forward pass per batch for every configured layer and hook point, streamed into shards.

Cells are read from the .h5ad in chunks (one chunk = one shard), tokenised, sorted by length into
micro-batches to waste little compute on padding, and run once through the model; the activations of
real gene tokens go to the shard's memory-mapped arrays, the <cls> rows apart as per-cell vectors.
PAD tokens never reach the store. Memory is bounded by one chunk, whatever the dataset's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from filelock import FileLock, Timeout

from sae_genomics_core.activations.settings import ExtractionSettings
from sae_genomics_core.activations.store import STORAGE_DTYPES, ActivationStore, ShardWriter, site_name
from sae_genomics_core.data.h5ad import DatasetOptions, OpenMatrix, open_matrix
from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.model.load import LoadedModel
from sae_genomics_core.model.tokenize import TokenBatch


class NoGenesInVocab(SaeGenomicsError, ValueError):
    pass


@dataclass
class ExtractionResult:
    store: ActivationStore
    n_cells: int
    n_tokens: int
    n_cells_skipped: int
    n_genes: int
    n_genes_in_vocab: int
    seconds: float
    resumed_from_cell: int
    bytes: int
    sites: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cells_per_second(self) -> float:
        return self.n_cells / self.seconds if self.seconds > 0 else float("nan")


def gene_keys(genes: Any, loaded: LoadedModel) -> list[str | None]:
    """The vocab key of each gene: its Ensembl id (tiny-random, whose vocab is the dataset's, falls back to
    the symbol; random-init has the real model's vocab)."""
    ensembl = genes["ensembl_id"].to_list()
    if loaded.vocab_from_dataset:
        return [e or s for e, s in zip(ensembl, genes["symbol"].to_list(), strict=True)]
    return ensembl


class ActivationExtractor:
    """One extraction into `out_dir`: the sites to capture, the store's lock, and one shard per row chunk.

    `genes` (the `genes` table of the dataset, with symbols already mapped to Ensembl through HGNC)
    overrides the ids read from the file.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        h5ad_path: Path,
        options: DatasetOptions,
        out_dir: Path,
        settings: ExtractionSettings,
        header: dict[str, Any],
        *,
        device: str = "cpu",
        progress: Callable[[int, int], None] | None = None,
        lock_timeout_s: float = 24 * 3600,
        genes: Any = None,
    ) -> None:
        config = loaded.config
        settings.validate(config.n_layers)
        self.loaded, self.h5ad_path, self.options, self.out_dir = loaded, h5ad_path, options, out_dir
        self.settings, self.header, self.device, self.progress = settings, header, device, progress
        self.lock_timeout_s, self.genes = lock_timeout_s, genes
        self.tokenizer = loaded.tokenizer(settings.max_length, settings.seed)
        self.sites = [site_name(layer, hook) for layer in settings.layers for hook in settings.hooks]
        self.widths = {
            site_name(layer, hook): config.d_ffn if hook == "mlp_hidden" else config.d_model
            for layer in settings.layers
            for hook in settings.hooks
        }
        self.capture = {layer: set(settings.hooks) for layer in settings.layers}
        self.use_autocast = device.startswith("cuda") and settings.compute_dtype in {"auto", "bfloat16"}
        self.storage_dtype = STORAGE_DTYPES[settings.storage_dtype]

    def run(self, stop_after_shards: int | None = None) -> ExtractionResult:
        """Extract every site, resuming a partial run; `stop_after_shards` ends early (as a crash would)."""
        with self._acquire_lock(), open_matrix(self.h5ad_path, self.options) as opened:
            vocab_ids = self._vocab_ids(opened)
            n_in_vocab = int((vocab_ids >= 0).sum())
            store = self._open_store(opened, len(vocab_ids), n_in_vocab)
            resumed_from = store.next_cell
            started = time.perf_counter()
            written = 0
            for first, block in opened.row_chunks(self.settings.shard_cells, start=resumed_from):
                if not self._write_shard(store, first, block, vocab_ids):
                    continue  # no cell with tokens: neither progress nor a shard towards `stop_after_shards`
                written += 1
                if self.progress is not None:
                    self.progress(first + block.shape[0], opened.n_cells)
                if stop_after_shards is not None and written >= stop_after_shards:
                    break
            seconds = time.perf_counter() - started
            if store.next_cell >= opened.n_cells:
                _finish(store)
        return ExtractionResult(
            store=store,
            n_cells=store.n_cells,
            n_tokens=store.n_tokens,
            n_cells_skipped=_cells_skipped(store),
            n_genes=len(vocab_ids),
            n_genes_in_vocab=n_in_vocab,
            seconds=seconds,
            resumed_from_cell=resumed_from,
            bytes=sum(p.stat().st_size for p in store.root.rglob("*.npy")),
            sites=self.sites,
        )

    def _acquire_lock(self) -> Any:
        """One writer per store: a second run of the same extraction waits, then finds it done (or resumes it)."""
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{self.out_dir}.lock", timeout=self.lock_timeout_s)
        try:
            return lock.acquire()  # released when the caller's `with` ends
        except Timeout as error:
            raise RuntimeError(
                f"another run is writing the activations in {self.out_dir}; wait for it to finish"
            ) from error

    def _vocab_ids(self, opened: OpenMatrix) -> np.ndarray:
        """The vocab id of each gene (-1 where absent); a file with none of its genes in the vocab is refused."""
        keys = gene_keys(opened.genes if self.genes is None else self.genes, self.loaded)
        vocab_ids = self.loaded.vocab.ids_for(keys)
        if not (vocab_ids >= 0).any():
            id_source = "Ensembl ids" if any(keys) else "gene symbols only (no Ensembl ids)"
            raise NoGenesInVocab(
                f"{self.h5ad_path}: none of its {len(keys)} genes is in the vocab of {self.loaded.model_id}; the genes carry "
                f"{id_source}. tahoe-x1's vocab holds unversioned human Ensembl gene ids: register the dataset "
                "with --ensembl-column <var column with ENSG ids>, or map symbols to Ensembl through HGNC "
                "(gene_identifiers). Mouse or other species' ids do not match."
            )
        return vocab_ids

    def _open_store(self, opened: OpenMatrix, n_genes: int, n_in_vocab: int) -> ActivationStore:
        """The store in `out_dir`, new or as a previous partial run left it, with this run's header."""
        settings = self.settings
        store = ActivationStore.open_for_writing(
            self.out_dir,
            {
                **self.header,
                "sites": self.sites,
                "layers": list(settings.layers),
                "hooks": list(settings.hooks),
                "dtype": settings.storage_dtype,
                "widths": self.widths,
                "max_length": self.tokenizer.max_length,
                "seed": settings.seed,
                "compute_dtype": "bfloat16-autocast" if self.use_autocast else "float32",
                "n_cells_total": opened.n_cells,
                "n_genes": n_genes,
                "n_genes_in_vocab": n_in_vocab,
                "drug_token": self.loaded.drug_label,
            },
        )
        self.loaded.vocab.save(store.root / "vocab.json")  # token ids in the shards mean these genes
        return store

    def _write_shard(
        self, store: ActivationStore, first: int, block: sp.csr_matrix, vocab_ids: np.ndarray
    ) -> bool:
        """Tokenise one row chunk and commit its shard; False when none of its cells has a token."""
        cell_indices = np.arange(first, first + block.shape[0])
        batch, skipped = self.tokenizer.batch(block, cell_indices, vocab_ids)
        if batch is None:
            store.start_shard(0, 0, self.widths).commit(first, int(cell_indices[-1]), len(skipped))
            return False
        lengths = batch.key_padding_mask.sum(dim=1)
        n_tokens = int(lengths.sum()) - len(lengths) * batch.n_prefix  # <cls> (and <drug>) are not genes
        writer = store.start_shard(n_tokens, len(lengths), self.widths)
        # longest cells first, so each micro-batch pads little
        order = torch.argsort(lengths, descending=True, stable=True)
        for rows in order.split(self.settings.batch_size):
            self._write_micro_batch(writer, batch, rows, int(lengths[rows].max()))
        writer.commit(first, int(cell_indices[-1]), len(skipped))
        return True

    def _write_micro_batch(
        self, writer: ShardWriter, batch: TokenBatch, rows: torch.Tensor, width: int
    ) -> None:
        """One forward pass over cells `rows` (padded to `width`); their gene tokens' activations to `writer`."""
        captured, real = self._forward(batch, rows, width)
        gene_tokens = real.clone()
        gene_tokens[:, : batch.n_prefix] = False
        per_cell = gene_tokens.sum(dim=1).cpu().numpy()
        token_mask_cpu = gene_tokens.cpu()
        acts, cls = {}, {}
        for layer, hooks in captured.items():
            for hook, value in hooks.items():
                stored = value.to(self.storage_dtype)  # convert before gathering: half the bytes to move
                acts[site_name(layer, hook)] = stored[gene_tokens]
                cls[site_name(layer, hook)] = stored[:, 0]
        cells = batch.cell_index[rows.numpy()]
        writer.add(
            {
                "cell_index": np.repeat(cells, per_cell),
                "gene_id": batch.genes[rows, :width][token_mask_cpu].numpy().astype(np.int32),
                "value": batch.raw[rows, :width][token_mask_cpu].numpy(),
                "bin": batch.values[rows, :width][token_mask_cpu].numpy().astype(np.int16),
            },
            cells,
            acts,
            cls,
        )

    def _forward(
        self, batch: TokenBatch, rows: torch.Tensor, width: int
    ) -> tuple[dict[int, dict[str, torch.Tensor]], torch.Tensor]:
        """The captured activations of cells `rows`, and their real-token mask (on the device)."""
        device, drug_id = self.device, self.loaded.drug_id
        gene_ids = batch.genes[rows, :width].to(device)
        values = batch.values[rows, :width].to(device)
        real = batch.key_padding_mask[rows, :width].to(device)
        drug_ids = None if drug_id is None else torch.full((len(rows),), drug_id, device=device)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_autocast),
        ):
            output = self.loaded.model(
                gene_ids, values, real, capture=self.capture, run_to_end=False, drug_ids=drug_ids
            )
        return output.captured, real


def _cells_skipped(store: ActivationStore) -> int:
    return sum(s["n_cells_skipped"] for s in store.manifest["shards"])


def _finish(store: ActivationStore) -> None:
    """Mark the store complete, with its totals in the manifest."""
    store.finish(
        {"n_cells": store.n_cells, "n_tokens": store.n_tokens, "n_cells_skipped": _cells_skipped(store)}
    )


def extract_activations(
    loaded: LoadedModel,
    h5ad_path: Path,
    options: DatasetOptions,
    out_dir: Path,
    settings: ExtractionSettings,
    header: dict[str, Any],
    *,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    stop_after_shards: int | None = None,
    lock_timeout_s: float = 24 * 3600,
    genes: Any = None,
) -> ExtractionResult:
    """Extract every configured site into `out_dir`, resuming a previous partial run there.

    `stop_after_shards` ends the run early (as a crash would), for tests of resumption. `genes` (the
    `genes` table of the dataset, with symbols already mapped to Ensembl through HGNC) overrides the ids
    read from the file.
    """
    extractor = ActivationExtractor(
        loaded,
        h5ad_path,
        options,
        out_dir,
        settings,
        header,
        device=device,
        progress=progress,
        lock_timeout_s=lock_timeout_s,
        genes=genes,
    )
    return extractor.run(stop_after_shards=stop_after_shards)
