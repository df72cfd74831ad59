"""Activations: one tahoe-x1 forward pass per dataset for every configured layer and hook point.

Logic: sae_genomics_core.activations.extract.extract_activations (model: sae_genomics_core.model).
"""

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from sae_genomics_core.annotations.store import read_table
from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids
from sae_genomics_core.data.h5ad import file_checksum, open_matrix
from sae_genomics_core.model.specs import RANDOM_INIT, TINY_RANDOM
from sae_genomics_core.warehouse.writer import warehouse_writer
from sae_genomics_dagster.assets.common import BY_DATASET, OWNERS, user_errors
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import HomeResource, ModelResource

GROUP = "activations"
CURRENT = "CURRENT.json"  # points at the latest complete extraction of a dataset


def dataset_genes(warehouse: Path, dataset: str, from_file: pl.DataFrame) -> pl.DataFrame:
    """The dataset's `genes` rows as ingested (symbols mapped to Ensembl), else the file's mapped now."""
    stored = read_table(warehouse, "genes")
    if stored is not None:
        stored = stored.filter(pl.col("dataset") == dataset).sort("gene_index")
        if stored.height == from_file.height:
            return stored.select("gene_index", "feature_name", "ensembl_id", "symbol")
    resolver, _ = default_resolver(warehouse)
    return map_gene_ids(from_file, resolver)[0]


def _dataset_dir(home: HomeResource, dataset: str) -> Path:
    return home.home.artefacts / "activations" / dataset


@dg.asset(
    partitions_def=dataset_partitions,
    deps=["cells", "genes"],
    group_name=GROUP,
    kinds={"torch", "numpy"},
    owners=OWNERS,
    pool="gpu",
    description=(
        "Token activations of tahoe-x1 for every configured layer and hook point (mlp_out, resid_post, "
        "attn_out, mlp_hidden), from one forward pass per batch, streamed to shards under "
        "`$SAE_GENOMICS_HOME/artefacts/activations/<dataset>/`. PAD tokens are never stored; the `<cls>` "
        "row is kept apart as the cell vector. With the model spec `tiny-random` (the offline demo) "
        "the weights are RANDOM: the architecture is real, the features are not biology. "
        "`random-init:<spec>` is the baseline for a real model: its architecture and vocab, random weights "
        "(model id `random-init(seed=…):…`)."
    ),
)
def activations(
    context: dg.AssetExecutionContext, home: HomeResource, model: ModelResource
) -> dg.MaterializeResult:
    # torch and the model load here, not when Dagster imports the definitions
    from sae_genomics_core.activations.extract import extract_activations
    from sae_genomics_core.model.tokenize import TOKENIZER_VERSION

    dataset = context.partition_key
    with user_errors():
        entry = home.registry.get(dataset)
        with open_matrix(entry.path, entry.options) as opened:
            genes = dataset_genes(home.home.warehouse, dataset, opened.genes)
        device = model.resolved_device()
        loaded = model.load(gene_keys_source=genes, device=device)
    settings = model.settings(loaded.config.n_layers)
    header = {
        "dataset": dataset,
        "dataset_checksum": file_checksum(entry.path),
        "model_id": loaded.model_id,
        "revision": loaded.revision,
        "random_weights": loaded.random_weights,
        "tokenizer_version": TOKENIZER_VERSION,
        # the HGNC mapping decides which genes become which tokens, so it is part of the identity
        "gene_keys_sha256": hashlib.sha256(json.dumps(genes["ensembl_id"].to_list()).encode()).hexdigest(),
    }
    key = hashlib.sha256(
        # the device decides the compute precision (bf16 autocast on CUDA), so it is part of the identity
        json.dumps([header, settings.__dict__, device], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    out_dir = _dataset_dir(home, dataset) / key
    if loaded.random_weights:
        use = (
            "a baseline for the real model" if loaded.model_id.startswith(RANDOM_INIT) else "smoke runs only"
        )
        context.log.warning(f"{loaded.model_id}: RANDOM weights; activations are for {use}")
    with user_errors():
        result = extract_activations(
            loaded,
            entry.path,
            entry.options,
            out_dir,
            settings,
            header,
            device=device,
            genes=genes,
            progress=lambda done, total: context.log.info(f"{dataset}: {done}/{total} cells"),
        )
    pointer = _dataset_dir(home, dataset) / CURRENT
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"path": str(out_dir), "checksum": result.store.manifest["checksum"]}))
    os.replace(tmp, pointer)
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": out_dir.as_uri(),
            "path": dg.MetadataValue.path(str(out_dir)),
            "checksum": result.store.manifest["checksum"],
            "model_id": loaded.model_id,
            "revision": str(loaded.revision),
            "random_weights": loaded.random_weights,
            "drug_token": str(loaded.drug_label),  # None: left out, as upstream's use_chem_inf=False
            "device": device,
            "layers": dg.MetadataValue.json(list(settings.layers)),
            "hooks": dg.MetadataValue.json(list(settings.hooks)),
            "n_cells": result.n_cells,
            "n_cells_skipped": result.n_cells_skipped,
            "n_tokens": result.n_tokens,
            "n_genes_in_vocab": result.n_genes_in_vocab,
            "n_genes": result.n_genes,
            "bytes": result.bytes,
            "storage_dtype": settings.storage_dtype,
            "max_length": result.store.manifest["max_length"],
            "seconds": round(result.seconds, 2),
            "tokens_per_second": round(result.tokens_per_second, 1),
            "cells_per_second": round(result.cells_per_second, 2),
            "resumed_from_cell": result.resumed_from_cell,
        }
    )


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[activations],
    io_manager_key="warehouse",
    metadata=BY_DATASET,
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    owners=OWNERS,
    pool="duckdb",
    description="Catalogue of a dataset's activations: one row per layer × hook with uri, shape, dtype, checksum and model. Table `activation_sets`.",
)
def activation_sets(context: dg.AssetExecutionContext, home: HomeResource) -> pl.DataFrame:
    from sae_genomics_core.activations.store import ActivationStore

    dataset = context.partition_key
    pointer = _dataset_dir(home, dataset) / CURRENT
    if not pointer.exists():
        raise dg.Failure(description=f"no activations for {dataset}; materialise `activations` for it first")
    store = ActivationStore(Path(json.loads(pointer.read_text())["path"]))
    manifest = store.manifest
    rows = [
        {
            "dataset": dataset,
            "layer": layer,
            "hook": hook,
            "n_cells": manifest["n_cells"],
            "n_tokens": manifest["n_tokens"],
            "d_model": manifest["widths"][f"L{layer}.{hook}"],
            "dtype": manifest["dtype"],
            "uri": (store.root / f"L{layer}.{hook}").as_uri(),
            "checksum": manifest["checksum"],
            "model_id": manifest["model_id"],
            "revision": manifest["revision"],
            "random_weights": manifest["random_weights"],
            "drug_token": manifest.get("drug_token"),
            "max_length": manifest["max_length"],
            "n_cells_skipped": manifest["n_cells_skipped"],
            "n_genes_in_vocab": manifest["n_genes_in_vocab"],
            "created_at": datetime.now(UTC),
        }
        for layer in manifest["layers"]
        for hook in manifest["hooks"]
    ]
    # tiny-random's vocab holds the dataset's symbols too; every other model's holds Ensembl ids only
    symbols_too = str(manifest["model_id"]).startswith(TINY_RANDOM)
    _record_vocab_coverage(context, home, dataset, store.root / "vocab.json", symbols_too)
    return pl.DataFrame(rows, schema_overrides={"revision": pl.String, "drug_token": pl.String})


def _record_vocab_coverage(
    context: dg.AssetExecutionContext, home: HomeResource, dataset: str, vocab_path: Path, symbols_too: bool
) -> None:
    """datasets.n_genes_in_vocab and genes.in_vocab, unknown at ingest, from the vocab just used."""

    from sae_genomics_core.warehouse.vocab_coverage import record_vocab_coverage

    vocab = json.loads(vocab_path.read_text())
    database = str(home.home.warehouse)
    with warehouse_writer(database) as connection:
        n_in_vocab = record_vocab_coverage(connection, dataset, vocab.keys(), symbols_too)
    context.log.info(f"{dataset}: {n_in_vocab} genes in the model vocab recorded in datasets and genes")
