from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sae_genomics_core.activations.extract import (
    ExtractionSettings,
    NoGenesInVocab,
    extract_activations,
    gene_keys,
)
from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix
from sae_genomics_core.model.load import load_model
from tests.conftest import write_h5ad
from tests.helpers import published_model_folder

HEADER = {"dataset": "t", "model_id": "m"}


def _tiny(path: Path):
    with open_matrix(path) as opened:
        genes = opened.genes
    return load_model(
        "tiny-random",
        dataset_genes=[e or s for e, s in zip(genes["ensembl_id"], genes["symbol"], strict=True)],
    )


def _extract(loaded, path: Path, out: Path, stop_after_shards: int | None = None, **settings) -> object:
    defaults = {
        "layers": (1, 3),
        "hooks": ("mlp_out", "resid_post", "attn_out", "mlp_hidden"),
        "shard_cells": 300,
        "storage_dtype": "float32",
        "batch_size": 32,
    }
    return extract_activations(
        loaded,
        path,
        DatasetOptions(),
        out,
        ExtractionSettings(**{**defaults, **settings}),
        HEADER,
        stop_after_shards=stop_after_shards,
    )


@pytest.fixture(scope="module")
def tenx_run(tenx_h5ad: Path, tmp_path_factory: pytest.TempPathFactory):
    loaded = _tiny(tenx_h5ad)
    return loaded, _extract(loaded, tenx_h5ad, tmp_path_factory.mktemp("acts") / "run")


def test_tokens_are_the_expressed_vocab_genes_and_cls_is_apart(tenx_run, tenx_h5ad: Path) -> None:
    loaded, result = tenx_run
    x = ad.read_h5ad(tenx_h5ad).X.tocsr()
    x.eliminate_zeros()
    expressed_cells = int((np.diff(x.indptr) > 0).sum())
    assert result.n_tokens == x.nnz  # every expressed gene of this dataset is in the tiny vocab
    assert result.n_cells == expressed_cells
    assert result.n_cells_skipped == 1107 - expressed_cells
    store = result.store
    assert store.manifest["complete"] and len(store.manifest["shards"]) == 4
    pad = loaded.vocab.pad_id
    n_cls = 0
    for shard in store.manifest["shards"]:
        tokens = store.tokens(shard["name"])
        assert not np.isin(
            tokens["gene_id"], [pad, loaded.vocab.cls_id]
        ).any()  # PAD and CLS never in the token rows
        assert store.acts(1, "mlp_hidden", shard["name"]).shape == (shard["n_tokens"], 256)
        n_cls += len(store.cls(3, "resid_post", shard["name"]))
        # the stored raw values are the matrix entries of those cells and genes
        cells, genes = tokens["cell_index"][:50], tokens["gene_id"][:50]
        columns = np.array(
            [loaded.vocab.ids_for(gene_keys(open_genes(tenx_h5ad), loaded)).tolist().index(g) for g in genes]
        )
        assert np.allclose(np.asarray(x[cells, columns]).ravel(), tokens["value"][:50])
    assert n_cls == result.n_cells


def open_genes(path: Path):
    with open_matrix(path) as opened:
        return opened.genes


def test_stored_activations_equal_a_direct_forward_of_one_cell(tenx_run) -> None:
    loaded, result = tenx_run
    store = result.store
    shard = store.manifest["shards"][1]["name"]
    tokens = store.tokens(shard)
    cell = int(tokens["cell_index"][0])
    rows = np.flatnonzero(tokens["cell_index"] == cell)
    genes = torch.tensor([[loaded.vocab.cls_id, *tokens["gene_id"][rows]]])
    values = torch.tensor([[-2.0, *tokens["bin"][rows].astype(np.float32)]])
    with torch.no_grad():
        direct = loaded.model(
            genes, values, genes != loaded.vocab.pad_id, capture={3: {"resid_post"}, 1: {"mlp_out"}}
        )
    assert torch.allclose(
        direct.captured[3]["resid_post"][0, 1:],
        torch.from_numpy(store.acts(3, "resid_post", shard)[rows]),
        atol=1e-5,
    )
    assert torch.allclose(
        direct.captured[1]["mlp_out"][0, 1:],
        torch.from_numpy(store.acts(1, "mlp_out", shard)[rows]),
        atol=1e-5,
    )
    cls_row = int(np.flatnonzero(tokens["cls_cell_index"] == cell)[0])
    assert torch.allclose(
        direct.captured[3]["resid_post"][0, 0],
        torch.from_numpy(store.cls(3, "resid_post", shard)[cls_row]),
        atol=1e-5,
    )


def test_a_crashed_run_resumes_without_duplicates(tenx_run, tenx_h5ad: Path, tmp_path: Path) -> None:
    loaded, complete = tenx_run
    out = tmp_path / "run"
    partial = _extract(loaded, tenx_h5ad, out, stop_after_shards=2)
    assert not partial.store.manifest["complete"] and partial.store.next_cell == 600
    (out / ".tmp-shard-00002" / "tokens").mkdir(parents=True)  # what a crash mid-shard leaves
    (out / ".tmp-shard-00002" / "tokens" / "gene_id.npy").write_bytes(b"partial")
    resumed = _extract(loaded, tenx_h5ad, out)
    assert resumed.resumed_from_cell == 600
    assert not (out / ".tmp-shard-00002").exists()
    assert resumed.n_tokens == complete.n_tokens
    assert resumed.store.manifest["checksum"] == complete.store.manifest["checksum"]
    resumed.store.verify()
    again = _extract(loaded, tenx_h5ad, out)  # a finished run has nothing left to do
    assert again.resumed_from_cell == 1107 and again.n_tokens == complete.n_tokens


def test_other_settings_do_not_reuse_a_store(tenx_run, tenx_h5ad: Path) -> None:
    loaded, complete = tenx_run
    with pytest.raises(ValueError, match="other settings"):
        _extract(loaded, tenx_h5ad, complete.store.root, layers=(0,))


def test_corruption_is_detected(tenx_run, tenx_h5ad: Path, tmp_path: Path) -> None:
    loaded, _ = tenx_run
    result = _extract(loaded, tenx_h5ad, tmp_path / "run", layers=(0,), hooks=("mlp_out",))
    target = result.store.root / "L0.mlp_out" / "shard-00000" / "acts.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its checksum"):
        result.store.verify()


def test_stream_covers_every_token_once_and_holds_out_cells(tenx_run) -> None:
    _, result = tenx_run
    store = result.store
    everything = torch.cat(list(store.iter_batches(3, "resid_post", 256, seed=1, shuffle_buffer_tokens=2000)))
    assert everything.shape == (result.n_tokens, 64)
    direct = torch.cat(
        [
            torch.from_numpy(np.asarray(store.acts(3, "resid_post", s["name"])))
            for s in store.manifest["shards"]
        ]
    )
    assert torch.allclose(everything.sum(0), direct.sum(0), atol=1e-2)
    first = next(store.iter_batches(3, "resid_post", 256, seed=1, shuffle_buffer_tokens=2000))
    assert torch.equal(first, everything[:256])  # seeded: reproducible
    held_out = np.arange(0, 1107, 10)
    n_held = sum(
        int(np.isin(store.tokens(s["name"])["cell_index"], held_out).sum()) for s in store.manifest["shards"]
    )
    train = sum(len(b) for b in store.iter_batches(3, "resid_post", 256, exclude_cells=held_out))
    test = sum(len(b) for b in store.iter_batches(3, "resid_post", 256, cells=held_out))
    assert (train, test) == (result.n_tokens - n_held, n_held)
    with pytest.raises(KeyError, match="no activations for layer 0"):
        next(store.iter_batches(0, "mlp_out", 8))


def test_bfloat16_storage_round_trips(tenx_h5ad: Path, tmp_path: Path) -> None:
    loaded = _tiny(tenx_h5ad)
    f32 = _extract(loaded, tenx_h5ad, tmp_path / "f32", layers=(2,), hooks=("resid_post",))
    bf16 = _extract(
        loaded, tenx_h5ad, tmp_path / "bf16", layers=(2,), hooks=("resid_post",), storage_dtype="bfloat16"
    )
    a = next(f32.store.iter_batches(2, "resid_post", 10_000, seed=0))
    b = next(bf16.store.iter_batches(2, "resid_post", 10_000, seed=0))
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-2)
    assert bf16.bytes < f32.bytes * 0.6


def test_no_gene_in_vocab_says_how_to_map(tmp_path: Path, demo_h5ad: Path) -> None:
    folder = published_model_folder(tmp_path / "m", [f"ENSG{i:011d}" for i in range(30)])
    loaded = load_model(f"dir:{folder}")
    with pytest.raises(NoGenesInVocab) as caught:
        _extract(loaded, demo_h5ad, tmp_path / "run", layers=(0,))
    message = str(caught.value)
    assert "--ensembl-column" in message and "HGNC" in message and "symbols" in message
    assert not (tmp_path / "run").exists()


def test_cells_left_without_genes_are_skipped_and_counted(tmp_path: Path) -> None:
    dense = np.zeros((6, 8), dtype=np.float32)
    dense[:, 0] = 3  # gene 0 is outside the model's vocab
    dense[[0, 2, 5], 4] = 2
    path = write_h5ad(tmp_path / "d.h5ad", sp.csr_matrix(dense))
    folder = published_model_folder(tmp_path / "m", [f"ENSG{i:011d}" for i in range(1, 8)])
    result = _extract(load_model(f"dir:{folder}"), path, tmp_path / "run", layers=(0,), hooks=("mlp_out",))
    assert (result.n_cells, result.n_cells_skipped, result.n_tokens) == (3, 3, 3)
    assert result.n_genes_in_vocab == 7


def test_a_second_writer_of_the_same_store_waits(tenx_h5ad: Path, tmp_path: Path) -> None:
    from filelock import FileLock

    loaded = _tiny(tenx_h5ad)
    out = tmp_path / "run"
    settings = ExtractionSettings(layers=(0,), hooks=("mlp_out",))
    with FileLock(f"{out}.lock"), pytest.raises(RuntimeError, match="another run is writing"):
        extract_activations(loaded, tenx_h5ad, DatasetOptions(), out, settings, HEADER, lock_timeout_s=0.2)
    assert not out.exists()
    extract_activations(loaded, tenx_h5ad, DatasetOptions(), out, settings, HEADER)
    with FileLock(f"{out}.lock", timeout=0):  # released once the run is over
        pass


def test_stored_zeros_of_the_file_reach_the_model_as_tokens(tmp_path: Path) -> None:
    dense = np.zeros((4, 8), dtype=np.float32)
    dense[:, 1:4] = [[2, 5, 1], [3, 3, 9], [1, 1, 1], [4, 2, 6]]
    matrix = sp.csr_matrix(dense)
    matrix.data[matrix.indices == 2] = 0.0  # gene 2 stored as an explicit zero in every cell
    assert matrix.nnz == 12
    path = write_h5ad(tmp_path / "zeros.h5ad", matrix)
    folder = published_model_folder(tmp_path / "m", [f"ENSG{i:011d}" for i in range(8)])
    result = _extract(load_model(f"dir:{folder}"), path, tmp_path / "run", layers=(0,), hooks=("mlp_out",))
    assert result.n_tokens == 12  # 3 stored entries per cell, the zero included
    tokens = result.store.tokens(result.store.manifest["shards"][0]["name"])
    zero = tokens["value"] == 0
    assert zero.sum() == 4 and set(tokens["bin"][zero].tolist()) == {1}


def test_the_drug_token_is_never_stored_as_a_gene_and_is_recorded(tenx_h5ad: Path, tmp_path: Path) -> None:
    from tests.unit.test_model import chem_model_folder

    folder = chem_model_folder(tmp_path / "m")
    with open_matrix(tenx_h5ad) as opened:
        keys = opened.genes["ensembl_id"].to_list()
    # map the first 40 genes of the file onto the fixture's vocab
    vocab = json.loads((folder / "vocab.json").read_text())
    specials = {k: v for k, v in vocab.items() if k.startswith("<")}
    (folder / "vocab.json").write_text(json.dumps({**{k: i for i, k in enumerate(keys[:40])}, **specials}))
    settings = {"layers": (0,), "hooks": ("mlp_out",), "shard_cells": 2000}
    without = _extract(load_model(f"dir:{folder}"), tenx_h5ad, tmp_path / "a", **settings)
    with_drug = _extract(load_model(f"dir:{folder}", drug="DMSO_TF"), tenx_h5ad, tmp_path / "b", **settings)
    assert with_drug.n_tokens == without.n_tokens > 0  # the same gene tokens: <drug> is not one of them
    assert (
        with_drug.store.manifest["drug_token"] == "DMSO_TF:3" and without.store.manifest["drug_token"] is None
    )
    shard = with_drug.store.manifest["shards"][0]["name"]
    assert not np.isin(with_drug.store.tokens(shard)["gene_id"], list(specials.values())).any()
    assert not np.allclose(with_drug.store.acts(0, "mlp_out", shard), without.store.acts(0, "mlp_out", shard))
