"""Per-cell feature activations exported into an .h5ad equal a dense recomputation from every token;
cells the model skipped are zero rows; a failed export leaves what was there."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sae_genomics_core.activations.extract import ExtractionSettings, extract_activations
from sae_genomics_core.artefacts import ArtefactMissing, ArtefactStore
from sae_genomics_core.cli import main as core_main
from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetOptions, file_checksum, open_matrix
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.errors import InputError
from sae_genomics_core.features.associate import encode_topk
from sae_genomics_core.model.load import load_model
from sae_genomics_core.pipeline.export import export_activations
from sae_genomics_core.pipeline.features import open_partition
from sae_genomics_core.sae.checkpoint import save_checkpoint
from sae_genomics_core.sae.train import SaeTrainingConfig, StoreSource, train_sae

DATASET, LAYER, HOOK = "t", 2, "resid_post"
EMPTIED = [0, 7, 500]  # cells with every count removed: the model skips them


@pytest.fixture(scope="module")
def published(tenx_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtefactStore, Path]:
    """A dataset's activations and an SAE of layer 2, published in an artefact store as the pipeline does."""
    work = tmp_path_factory.mktemp("export")
    adata = ad.read_h5ad(tenx_h5ad)
    keep = np.ones(adata.n_obs)
    keep[EMPTIED] = 0
    adata.X = sp.csr_matrix(sp.diags(keep) @ adata.X)
    adata.X.eliminate_zeros()
    h5ad = work / "t.h5ad"
    adata.write_h5ad(h5ad)

    with open_matrix(h5ad) as opened:
        genes = opened.genes["ensembl_id"].to_list()
    model = load_model("tiny-random", dataset_genes=genes)
    store = ArtefactStore(work / "artefacts")
    folder = store.new_activations(DATASET, "k")
    header = {"dataset": DATASET, "model_id": model.model_id, "dataset_checksum": file_checksum(h5ad)}
    settings = ExtractionSettings(layers=(LAYER,), hooks=(HOOK,), storage_dtype="float32", shard_cells=400)
    activations = extract_activations(model, h5ad, DatasetOptions(), folder, settings, header).store
    store.publish_activations(DATASET, folder, activations.manifest["checksum"])

    config = SaeTrainingConfig(
        expansion_factor=4,
        k=8,
        training_tokens=20_000,
        batch_size=2048,
        log_every_steps=10,
        eval_tokens=2000,
        stats_tokens=4000,
    )
    outcome = train_sae(StoreSource(activations, LAYER, HOOK, 0.1, 0), config)
    checkpoint = store.new_sae_run(DATASET, LAYER, HOOK, "key") / "checkpoint"
    provenance = {
        "layer": LAYER,
        "hook": HOOK,
        "model_id": model.model_id,
        "activations_checksum": activations.manifest["checksum"],
    }
    save_checkpoint(checkpoint, outcome, provenance)
    store.publish_checkpoint(DATASET, LAYER, checkpoint)
    return store, h5ad


def _dense_per_cell(store: ArtefactStore) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every token's full latent vector (its top-k, as the SAE computes it), then per cell the max and the
    sum over its tokens, and each cell's number of tokens."""
    activations, _, loaded = open_partition(store, DATASET, LAYER, "cpu")
    n_cells, d_sae = int(activations.manifest["n_cells_total"]), int(loaded.sae.cfg.d_sae)
    maxima, sums = np.zeros((n_cells, d_sae), np.float32), np.zeros((n_cells, d_sae))
    tokens = np.zeros(n_cells, dtype=np.int64)
    for shard in activations.manifest["shards"]:
        if shard["n_tokens"] == 0:
            continue
        x = torch.from_numpy(np.array(activations.acts(LAYER, HOOK, shard["name"])))
        values, indices = encode_topk(loaded.sae, loaded.normalizer, x)
        dense = torch.zeros(x.shape[0], d_sae).scatter_(1, indices, values).numpy()
        np.testing.assert_allclose(dense, loaded.encode(x).numpy(), rtol=1e-5, atol=1e-6)  # sae-lens's own
        owners = np.asarray(activations.tokens(shard["name"])["cell_index"])
        np.maximum.at(maxima, owners, dense)
        np.add.at(sums, owners, dense.astype(np.float64))
        tokens += np.bincount(owners, minlength=n_cells)
    return maxima, sums, tokens, d_sae


def test_each_cells_max_equals_the_dense_computation_and_round_trips(
    published: tuple[ArtefactStore, Path], tmp_path: Path
) -> None:
    store, h5ad = published
    out = tmp_path / "out" / "with_features.h5ad"
    done = export_activations(DATASET, None, store, h5ad, out)
    assert done.path == out and [layer.layer for layer in done.layers] == [LAYER]

    exported, source = ad.read_h5ad(out), ad.read_h5ad(h5ad)
    matrix = exported.obsm[f"X_sae_L{LAYER}"]
    assert isinstance(matrix, sp.csr_matrix) and matrix.dtype == np.float32
    maxima, _, tokens, d_sae = _dense_per_cell(store)
    assert matrix.shape == (source.n_obs, d_sae)
    np.testing.assert_array_equal(matrix.toarray(), maxima)
    assert matrix.nnz > 0 and (matrix.data > 0).all()
    skipped = np.flatnonzero(tokens == 0)
    assert set(EMPTIED) <= set(skipped)
    assert matrix[skipped].nnz == 0  # cells the model skipped: all-zero rows

    # the rest of the file is the source's
    assert (exported.X != source.X).nnz == 0
    assert exported.obs.equals(source.obs) and exported.var.equals(source.var)
    described = exported.uns["sae_genomics"][f"L{LAYER}"]
    np.testing.assert_array_equal(described["feature_ids"], np.arange(d_sae))
    assert described["statistic"] == "max" and described["hook"] == HOOK
    assert described["model_id"] == store.current_activations(DATASET).manifest["model_id"]
    assert described["checkpoint_id"] == store.require_checkpoint(DATASET, LAYER).parent.name
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left


def test_each_cells_mean_is_over_all_its_tokens(
    published: tuple[ArtefactStore, Path], tmp_path: Path
) -> None:
    store, h5ad = published
    done = export_activations(DATASET, [LAYER], store, h5ad, tmp_path / "mean.h5ad", how="mean")
    _, sums, tokens, _ = _dense_per_cell(store)
    expected = np.divide(sums, tokens[:, None], out=np.zeros_like(sums), where=tokens[:, None] > 0)
    matrix = ad.read_h5ad(done.path).obsm[f"X_sae_L{LAYER}"]
    np.testing.assert_allclose(matrix.toarray(), expected, rtol=1e-5, atol=1e-7)
    assert ad.read_h5ad(done.path).uns["sae_genomics"][f"L{LAYER}"]["statistic"] == "mean"


def test_a_refused_export_leaves_the_previous_file(
    published: tuple[ArtefactStore, Path], tenx_h5ad: Path, tmp_path: Path
) -> None:
    store, h5ad = published
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous export")
    with pytest.raises(ArtefactMissing, match="no activations of layer"):
        export_activations(DATASET, [5], store, h5ad, out)
    # same cells, other counts: not the file the activations came from
    with pytest.raises(InputError, match="not the file t's activations were extracted from"):
        export_activations(DATASET, None, store, tenx_h5ad, out)
    with pytest.raises(InputError, match="registered file"):
        export_activations(DATASET, None, store, h5ad, h5ad)
    with pytest.raises(ArtefactMissing, match="no activations for other"):
        export_activations("other", None, store, h5ad, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_the_export_command_reads_the_registered_file(
    published: tuple[ArtefactStore, Path],
    home: Home,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    store, h5ad = published
    monkeypatch.setenv("SAE_GENOMICS_ARTEFACTS", str(store.root))
    monkeypatch.setenv("SAE_GENOMICS_SAE_DEVICE", "cpu")
    Registry(home).register(h5ad, DATASET)
    out = tmp_path / "cli.h5ad"
    assert core_main(["export", DATASET, "--out", str(out), "--statistic", "max"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"obsm['X_sae_L{LAYER}']" in printed
    maxima, _, _, _ = _dense_per_cell(store)
    np.testing.assert_array_equal(ad.read_h5ad(out).obsm[f"X_sae_L{LAYER}"].toarray(), maxima)
    assert core_main(["export", "missing", "--out", str(tmp_path / "x.h5ad")]) == 2
    assert "dataset 'missing' is not registered" in capsys.readouterr().err
