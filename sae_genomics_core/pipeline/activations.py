"""Stage runners: a dataset's tahoe-x1 activations (one forward pass, every configured layer and hook),
and their catalogue table `activation_sets`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.activations.settings import ExtractionSettings
from sae_genomics_core.annotations.store import read_table
from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids
from sae_genomics_core.data.h5ad import file_checksum, open_matrix
from sae_genomics_core.data.registry import DatasetEntry
from sae_genomics_core.model.choice import ModelChoice
from sae_genomics_core.model.specs import RANDOM_INIT, TINY_RANDOM
from sae_genomics_core.pipeline.result import Log, StageResult, default_log
from sae_genomics_core.warehouse.vocab_coverage import record_vocab_coverage
from sae_genomics_core.warehouse.writer import write_transaction


def dataset_genes(warehouse: Path, dataset: str, from_file: pl.DataFrame) -> pl.DataFrame:
    """The dataset's `genes` rows as ingested (symbols mapped to Ensembl), else the file's mapped now."""
    stored = read_table(warehouse, "genes")
    if stored is not None:
        stored = stored.filter(pl.col("dataset") == dataset).sort("gene_index")
        if stored.height == from_file.height:
            return stored.select("gene_index", "feature_name", "ensembl_id", "symbol")
    resolver, _ = default_resolver(warehouse)
    return map_gene_ids(from_file, resolver)[0]


def extraction_key(header: dict[str, Any], settings: ExtractionSettings, device: str) -> str:
    """The content key of an extraction: the same inputs and settings find (and resume) the same folder."""
    # the device decides the compute precision (bf16 autocast on CUDA), so it is part of the identity
    identity = json.dumps([header, settings.__dict__, device], sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_activations(
    entry: DatasetEntry,
    store: ArtefactStore,
    warehouse: Path,
    model: ModelChoice,
    settings: ExtractionSettings,
    log: Log | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StageResult:
    """Run the model over the dataset, write the activations under their content key and publish them
    (`progress(done, total)` in cells; by default a bar or log lines with the rate and an ETA)."""
    from sae_genomics_core.activations.extract import extract_activations
    from sae_genomics_core.progress import Progress

    log = log or default_log()
    with open_matrix(entry.path, entry.options) as opened:
        genes = dataset_genes(warehouse, entry.name, opened.genes)
    device = model.resolved_device()
    loaded = model.load(genes, device, settings.seed)
    settings = settings.for_model(loaded.config.n_layers)
    header = _header(entry, loaded, genes)
    folder = store.new_activations(entry.name, extraction_key(header, settings, device))
    if loaded.random_weights:
        use = (
            "a baseline for the real model" if loaded.model_id.startswith(RANDOM_INIT) else "smoke runs only"
        )
        log.warning(f"{loaded.model_id}: RANDOM weights; activations are for {use}")
    result = extract_activations(
        loaded,
        entry.path,
        entry.options,
        folder,
        settings,
        header,
        device=device,
        genes=genes,
        progress=progress or Progress(f"{entry.name}: forward pass", "cells", log).update,
    )
    store.publish_activations(entry.name, folder, result.store.manifest["checksum"])
    return StageResult(summary=_summary(loaded, settings, device, store.uri(folder), result))


def _header(entry: DatasetEntry, loaded: Any, genes: pl.DataFrame) -> dict[str, Any]:
    """What identifies an extraction's inputs (stored in its manifest, part of its content key)."""
    from sae_genomics_core.model.tokenize import TOKENIZER_VERSION

    return {
        "dataset": entry.name,
        "dataset_checksum": file_checksum(entry.path),
        "model_id": loaded.model_id,
        "revision": loaded.revision,
        "random_weights": loaded.random_weights,
        "tokenizer_version": TOKENIZER_VERSION,
        # the HGNC mapping decides which genes become which tokens, so it is part of the identity
        "gene_keys_sha256": hashlib.sha256(json.dumps(genes["ensembl_id"].to_list()).encode()).hexdigest(),
    }


def _summary(loaded: Any, settings: ExtractionSettings, device: str, uri: str, result: Any) -> dict[str, Any]:
    manifest = result.store.manifest
    return {
        "uri": uri,
        "path": result.store.root,
        "checksum": manifest["checksum"],
        "model_id": loaded.model_id,
        "revision": str(loaded.revision),
        "random_weights": loaded.random_weights,
        "drug_token": str(loaded.drug_label),  # None: left out, as upstream's use_chem_inf=False
        "device": device,
        "layers": list(settings.layers or ()),
        "hooks": list(settings.hooks),
        "n_cells": result.n_cells,
        "n_cells_skipped": result.n_cells_skipped,
        "n_tokens": result.n_tokens,
        "n_genes_in_vocab": result.n_genes_in_vocab,
        "n_genes": result.n_genes,
        "bytes": result.bytes,
        "storage_dtype": settings.storage_dtype,
        "max_length": manifest["max_length"],
        "seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "cells_per_second": round(result.cells_per_second, 2),
        "resumed_from_cell": result.resumed_from_cell,
    }


def run_activation_sets(
    dataset: str, store: ArtefactStore, warehouse: Path, log: Log | None = None
) -> StageResult:
    """One `activation_sets` row per layer × hook of the current extraction; records which of the
    dataset's genes the model's vocab holds (datasets.n_genes_in_vocab, genes.in_vocab)."""
    log = log or default_log()
    activations = store.current_activations(dataset)
    manifest = activations.manifest
    created_at = datetime.now(UTC)
    rows = [
        {
            "dataset": dataset,
            "layer": layer,
            "hook": hook,
            "n_cells": manifest["n_cells"],
            "n_tokens": manifest["n_tokens"],
            "d_model": manifest["widths"][f"L{layer}.{hook}"],
            "dtype": manifest["dtype"],
            "uri": store.uri(activations.root / f"L{layer}.{hook}"),
            "checksum": manifest["checksum"],
            "model_id": manifest["model_id"],
            "revision": manifest["revision"],
            "random_weights": manifest["random_weights"],
            "drug_token": manifest.get("drug_token"),
            "max_length": manifest["max_length"],
            "n_cells_skipped": manifest["n_cells_skipped"],
            "n_genes_in_vocab": manifest["n_genes_in_vocab"],
            "created_at": created_at,
        }
        for layer in manifest["layers"]
        for hook in manifest["hooks"]
    ]
    vocab = json.loads((activations.root / "vocab.json").read_text())
    # tiny-random's vocab holds the dataset's symbols too; every other model's holds Ensembl ids only
    symbols_too = str(manifest["model_id"]).startswith(TINY_RANDOM)
    n_in_vocab = write_transaction(
        warehouse, lambda connection: record_vocab_coverage(connection, dataset, vocab.keys(), symbols_too)
    )
    log.info(f"{dataset}: {n_in_vocab} genes in the model vocab recorded in datasets and genes")
    table = pl.DataFrame(rows, schema_overrides={"revision": pl.String, "drug_token": pl.String})
    return StageResult(tables={"activation_sets": table})
