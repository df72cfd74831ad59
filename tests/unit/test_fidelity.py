"""Loss recovered in tahoe-x1's own terms: its inputs rebuilt from the store, and the score's two anchors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sae_genomics_core.activations.extract import ExtractionSettings, extract_activations
from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix
from sae_genomics_core.model.load import load_model
from sae_genomics_core.sae.fidelity import loss_recovered, store_batches
from sae_genomics_core.sae.settings import FidelitySettings

LAYER, HOOK = 1, "resid_post"


@pytest.fixture(scope="module")
def extracted(tenx_h5ad: Path, tmp_path_factory: pytest.TempPathFactory):
    with open_matrix(tenx_h5ad) as opened:
        genes = opened.genes
    loaded = load_model(
        "tiny-random",
        dataset_genes=[e or s for e, s in zip(genes["ensembl_id"], genes["symbol"], strict=True)],
    )
    settings = ExtractionSettings(layers=(LAYER,), hooks=(HOOK,), shard_cells=300, storage_dtype="float32")
    out = tmp_path_factory.mktemp("fidelity") / "acts"
    store = extract_activations(loaded, tenx_h5ad, DatasetOptions(), out, settings, {"dataset": "t"}).store
    return loaded, store


def _batches(loaded, store, cells: np.ndarray, batch_cells: int = 8):
    prefix = loaded.tokenizer().prefix
    return store_batches(
        store, cells, prefix, loaded.config.pad_token_id, loaded.config.pad_value, batch_cells
    )


def test_inputs_rebuilt_from_the_store_give_the_stored_activations(extracted) -> None:
    loaded, store = extracted
    first = store.manifest["shards"][1]["name"]
    tokens = store.tokens(first)
    cells = np.unique(np.asarray(tokens["cell_index"]))[:20]
    rebuilt = []
    for batch in _batches(loaded, store, cells):
        with torch.no_grad():
            out = loaded.model(batch.genes, batch.values, batch.key_padding_mask, capture={LAYER: {HOOK}})
        gene_tokens = batch.key_padding_mask.clone()
        gene_tokens[:, : batch.n_prefix] = False
        rebuilt.append(out.captured[LAYER][HOOK][gene_tokens])
    stored = torch.from_numpy(np.array(store.acts(LAYER, HOOK, first)))
    owners = np.asarray(tokens["cell_index"])
    expected = torch.cat([stored[owners == cell] for cell in np.sort(cells)])
    assert torch.allclose(torch.cat(rebuilt), expected.float(), atol=1e-5)


def test_loss_recovered_is_one_for_a_perfect_reconstruction_and_zero_for_the_ablation(extracted) -> None:
    loaded, store = extracted
    cells = np.unique(np.asarray(store.tokens(store.manifest["shards"][0]["name"])["cell_index"]))[:24]
    mean = torch.randn(loaded.config.d_model)
    settings = FidelitySettings(mask_fraction=0.3)

    def run(reconstruct):
        return loss_recovered(
            loaded.model, _batches(loaded, store, cells), LAYER, HOOK, reconstruct, mean, settings
        )

    perfect = run(lambda x: x)
    assert perfect["fidelity_masked_tokens"] > 50
    for decoder in ("expr", "mvc"):
        assert perfect[f"loss_{decoder}_sae"] == perfect[f"loss_{decoder}_clean"]
        assert (
            perfect[f"loss_recovered_{decoder}_zero"] == 1.0
            and perfect[f"loss_recovered_{decoder}_mean"] == 1.0
        )
        assert perfect[f"loss_{decoder}_zero"] != perfect[f"loss_{decoder}_clean"]  # the layer matters
    deleted = run(torch.zeros_like)
    as_mean = run(lambda x: mean.expand_as(x))
    for decoder in ("expr", "mvc"):
        assert deleted[f"loss_recovered_{decoder}_zero"] == 0.0
        assert as_mean[f"loss_recovered_{decoder}_mean"] == 0.0
    half = run(lambda x: 0.5 * x)  # in between: worse than clean, better than deleting the layer here
    assert 0.0 < half["loss_recovered_expr_zero"] < 1.0
