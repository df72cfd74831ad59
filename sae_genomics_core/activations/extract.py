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
import torch
from filelock import FileLock, Timeout

from sae_genomics_core.activations.settings import ExtractionSettings
from sae_genomics_core.activations.store import STORAGE_DTYPES, ActivationStore, site_name
from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix
from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.model.load import LoadedModel


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
    config = loaded.config
    settings.validate(config.n_layers)
    tokenizer = loaded.tokenizer(settings.max_length, settings.seed)
    sites = [site_name(layer, hook) for layer in settings.layers for hook in settings.hooks]
    widths = {
        site_name(layer, hook): config.d_ffn if hook == "mlp_hidden" else config.d_model
        for layer in settings.layers
        for hook in settings.hooks
    }
    capture = {layer: set(settings.hooks) for layer in settings.layers}
    use_autocast = device.startswith("cuda") and settings.compute_dtype in {"auto", "bfloat16"}
    model = loaded.model
    storage_dtype = STORAGE_DTYPES[settings.storage_dtype]

    # one writer per store: a second run of the same extraction waits, then finds it done (or resumes it)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{out_dir}.lock", timeout=lock_timeout_s)
    try:
        held = lock.acquire()  # released when the `with` below ends
    except Timeout as error:
        raise RuntimeError(
            f"another run is writing the activations in {out_dir}; wait for it to finish"
        ) from error
    with held, open_matrix(h5ad_path, options) as opened:
        keys = gene_keys(opened.genes if genes is None else genes, loaded)
        vocab_ids = loaded.vocab.ids_for(keys)
        n_in_vocab = int((vocab_ids >= 0).sum())
        if n_in_vocab == 0:
            id_source = "Ensembl ids" if any(keys) else "gene symbols only (no Ensembl ids)"
            raise NoGenesInVocab(
                f"{h5ad_path}: none of its {len(keys)} genes is in the vocab of {loaded.model_id}; the genes carry "
                f"{id_source}. tahoe-x1's vocab holds unversioned human Ensembl gene ids: register the dataset "
                "with --ensembl-column <var column with ENSG ids>, or map symbols to Ensembl through HGNC "
                "(gene_identifiers). Mouse or other species' ids do not match."
            )
        store = ActivationStore.open_for_writing(
            out_dir,
            {
                **header,
                "sites": sites,
                "layers": list(settings.layers),
                "hooks": list(settings.hooks),
                "dtype": settings.storage_dtype,
                "widths": widths,
                "max_length": tokenizer.max_length,
                "seed": settings.seed,
                "compute_dtype": "bfloat16-autocast" if use_autocast else "float32",
                "n_cells_total": opened.n_cells,
                "n_genes": len(keys),
                "n_genes_in_vocab": n_in_vocab,
                "drug_token": loaded.drug_label,
            },
        )
        loaded.vocab.save(store.root / "vocab.json")  # token ids in the shards mean these genes
        resumed_from = store.next_cell
        started = time.perf_counter()
        written = 0
        for first, block in opened.row_chunks(settings.shard_cells, start=resumed_from):
            cell_indices = np.arange(first, first + block.shape[0])
            batch, skipped = tokenizer.batch(block, cell_indices, vocab_ids)
            if batch is None:
                store.start_shard(0, 0, widths).commit(first, int(cell_indices[-1]), len(skipped))
                continue
            lengths = batch.key_padding_mask.sum(dim=1)
            n_tokens = int(lengths.sum()) - len(lengths) * batch.n_prefix  # <cls> (and <drug>) are not genes
            writer = store.start_shard(n_tokens, len(lengths), widths)
            order = torch.argsort(lengths, descending=True, stable=True)
            for rows in order.split(settings.batch_size):
                width = int(lengths[rows].max())
                genes = batch.genes[rows, :width].to(device)
                values = batch.values[rows, :width].to(device)
                real = batch.key_padding_mask[rows, :width].to(device)
                drug_ids = (
                    None
                    if loaded.drug_id is None
                    else torch.full((len(rows),), loaded.drug_id, device=device)
                )
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast),
                ):
                    output = model(genes, values, real, capture=capture, run_to_end=False, drug_ids=drug_ids)
                gene_tokens = real.clone()
                gene_tokens[:, : batch.n_prefix] = False
                per_cell = gene_tokens.sum(dim=1).cpu().numpy()
                token_mask_cpu = gene_tokens.cpu()
                acts, cls = {}, {}
                for layer, hooks in output.captured.items():
                    for hook, value in hooks.items():
                        stored = value.to(storage_dtype)  # convert before gathering: half the bytes to move
                        acts[site_name(layer, hook)] = stored[gene_tokens]
                        cls[site_name(layer, hook)] = stored[:, 0]
                writer.add(
                    {
                        "cell_index": np.repeat(batch.cell_index[rows.numpy()], per_cell),
                        "gene_id": batch.genes[rows, :width][token_mask_cpu].numpy().astype(np.int32),
                        "value": batch.raw[rows, :width][token_mask_cpu].numpy(),
                        "bin": batch.values[rows, :width][token_mask_cpu].numpy().astype(np.int16),
                    },
                    batch.cell_index[rows.numpy()],
                    acts,
                    cls,
                )
            writer.commit(first, int(cell_indices[-1]), len(skipped))
            written += 1
            if progress is not None:
                progress(int(cell_indices[-1]) + 1, opened.n_cells)
            if stop_after_shards is not None and written >= stop_after_shards:
                break
        seconds = time.perf_counter() - started
        if store.next_cell >= opened.n_cells:
            store.finish(
                {
                    "n_cells": store.n_cells,
                    "n_tokens": store.n_tokens,
                    "n_cells_skipped": sum(s["n_cells_skipped"] for s in store.manifest["shards"]),
                }
            )

    size = sum(p.stat().st_size for p in store.root.rglob("*.npy"))
    return ExtractionResult(
        store=store,
        n_cells=store.n_cells,
        n_tokens=store.n_tokens,
        n_cells_skipped=sum(s["n_cells_skipped"] for s in store.manifest["shards"]),
        n_genes=len(keys),
        n_genes_in_vocab=n_in_vocab,
        seconds=seconds,
        resumed_from_cell=resumed_from,
        bytes=size,
        sites=sites,
    )
