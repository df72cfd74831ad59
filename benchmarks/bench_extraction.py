"""Activation extraction: wall time against a bare forward pass, and peak memory against dataset size.

1. ratio: the full extraction (read .h5ad, tokenise, forward with every hook of every layer captured,
   write bf16 shards) against the bare forward pass of the very same tokenised micro-batches with
   nothing captured. Goal: ≤ 1.15×.
2. memory: peak RSS of an extraction run in a fresh process at 1× and 10× the cells. Goal: flat.

usage: python benchmarks/bench_extraction.py [--cells 1000] [--d-model 256] [--layers 4] [--memory-cells 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import synthetic_h5ad

from sae_genomics_core.activations.extract import ExtractionSettings, extract_activations, gene_keys
from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix
from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.load import LoadedModel
from sae_genomics_core.model.tokenize import GeneVocab
from sae_genomics_core.model.tx import HOOKS, TXModel


def build_model(genes: list[str], d_model: int, n_layers: int) -> LoadedModel:
    vocab = GeneVocab.from_genes(genes)
    config = TahoeConfig.from_dicts(
        {
            "vocab_size": len(vocab),
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": max(1, d_model // 64),
            "transformer_activation": "relu",
            "gene_encoder": {"use_norm": True},
            "expression_encoder": {"use_norm": True},
            "mvc": {},
        },
        {"pad_token_id": vocab.pad_id, "max_length": 1024},
    )
    torch.manual_seed(0)
    return LoadedModel(
        TXModel(config).eval(), config, vocab, f"bench-random-d{d_model}-L{n_layers}", None, True
    )


def _loaded_for(path: Path, d_model: int, n_layers: int) -> LoadedModel:
    with open_matrix(path) as opened:
        genes = opened.genes["ensembl_id"].to_list()
    return build_model(genes, d_model, n_layers)


def bare_forward_seconds(loaded: LoadedModel, path: Path, settings: ExtractionSettings) -> float:
    """The same batches as the extraction (same chunking, sorting and trimming), nothing captured or stored."""
    tokenizer = loaded.tokenizer(settings.max_length, settings.seed)
    batches = []
    with open_matrix(path) as opened:
        ids = loaded.vocab.ids_for(gene_keys(opened.genes, loaded))
        for first, block in opened.row_chunks(settings.shard_cells):
            batch, _ = tokenizer.batch(block, np.arange(first, first + block.shape[0]), ids)
            lengths = batch.key_padding_mask.sum(dim=1)
            for rows in torch.argsort(lengths, descending=True, stable=True).split(settings.batch_size):
                width = int(lengths[rows].max())
                batches.append(
                    (
                        batch.genes[rows, :width],
                        batch.values[rows, :width],
                        batch.key_padding_mask[rows, :width],
                    )
                )
    started = time.perf_counter()
    with torch.inference_mode():
        for genes, values, real in batches:
            loaded.model(genes, values, real)
    return time.perf_counter() - started


def ratio(args: argparse.Namespace, work: Path, hooks: tuple[str, ...]) -> dict:
    path = synthetic_h5ad(work / f"cells{args.cells}.h5ad", args.cells)
    loaded = _loaded_for(path, args.d_model, args.layers)
    settings = ExtractionSettings(
        layers=tuple(range(args.layers)), hooks=hooks, batch_size=16, shard_cells=512
    )
    torch.set_num_threads(torch.get_num_threads())
    bare = min(bare_forward_seconds(loaded, path, settings) for _ in range(2))
    runs = []
    for attempt in range(2):
        started = time.perf_counter()
        result = extract_activations(
            loaded,
            path,
            DatasetOptions(),
            work / f"ratio-{len(hooks)}-{attempt}",
            settings,
            {"dataset": "bench"},
        )
        runs.append((time.perf_counter() - started, result))
    seconds, result = min(runs, key=lambda run: run[0])
    return {
        "cells": args.cells,
        "d_model": args.d_model,
        "layers": args.layers,
        "hooks": ",".join(hooks),
        "tokens": result.n_tokens,
        "bare_forward_s": round(bare, 2),
        "extraction_s": round(seconds, 2),
        "ratio": round(seconds / bare, 3),
        "stored_gb": round(result.bytes / 1e9, 2),
        "tokens_per_s": round(result.n_tokens / seconds),
    }


def memory_child(path: str, out: str, d_model: int, n_layers: int) -> None:
    loaded = _loaded_for(Path(path), d_model, n_layers)
    settings = ExtractionSettings(
        layers=tuple(range(n_layers)), hooks=("resid_post", "mlp_out"), shard_cells=1024
    )
    result = extract_activations(
        loaded, Path(path), DatasetOptions(), Path(out), settings, {"dataset": "bench"}
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"tokens": result.n_tokens, "peak_rss_mb": round(peak_mb), "seconds": round(result.seconds, 1)}
        )
    )


def memory(args: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    for factor in (1, 10):
        cells = args.memory_cells * factor
        path = synthetic_h5ad(work / f"cells{cells}.h5ad", cells)
        command = [sys.executable, __file__, "--child", str(path), str(work / f"mem{factor}"), "64", "4"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append({"cells": cells, **json.loads(output.strip().splitlines()[-1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--memory-cells", type=int, default=2000)
    parser.add_argument("--child", nargs=4)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.skip_memory:
            for hooks in (("resid_post", "mlp_out"), HOOKS):
                print(json.dumps({"ratio": ratio(args, work, hooks)}), flush=True)
            return
        for hooks in (("resid_post", "mlp_out"), HOOKS):
            print(json.dumps({"ratio": ratio(args, work, hooks)}), flush=True)
        for row in memory(args, work):
            print(json.dumps({"memory": row}))


if __name__ == "__main__":
    main()
