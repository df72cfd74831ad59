"""Interventions at a layer: loss recovered (inputs rebuilt from the store, the score's two anchors) and
feature effects (exact no-ops, a planted gene found)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from sae_genomics_core.activations.extract import ExtractionSettings, extract_activations
from sae_genomics_core.data.h5ad import DatasetOptions, open_matrix
from sae_genomics_core.model.load import load_model
from sae_genomics_core.sae.fidelity import loss_recovered, store_batches
from sae_genomics_core.sae.settings import EffectSettings, FidelitySettings

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


def test_resuming_after_a_layer_gives_the_whole_pass(extracted) -> None:
    """Interventions at resid_post run the layers up to the edit once per cell and resume from there."""
    loaded, store = extracted
    cells = np.unique(np.asarray(store.tokens(store.manifest["shards"][0]["name"])["cell_index"]))[:12]
    batch = next(iter(_batches(loaded, store, cells, batch_cells=12)))
    with torch.no_grad():
        whole = loaded.model(batch.genes, batch.values, batch.key_padding_mask, capture={LAYER: {HOOK}})
        resumed = loaded.model.resume(whole.captured[LAYER][HOOK], batch.key_padding_mask, LAYER)
    assert torch.allclose(resumed.cell_emb, whole.cell_emb, atol=1e-6)


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


@pytest.fixture(scope="module")
def intervener(extracted):
    from sae_genomics_core.sae.checkpoint import LoadedSae
    from sae_genomics_core.sae.effects import Intervener
    from sae_genomics_core.sae.train import Normalizer, SaeTrainingConfig, build_sae

    loaded, store = extracted
    torch.manual_seed(0)
    d_model = loaded.config.d_model
    sae = LoadedSae(
        build_sae(d_model, SaeTrainingConfig(expansion_factor=4, k=8)).eval(),
        Normalizer(torch.zeros(d_model), 2.0),
        {},
    )
    genes = np.unique(
        np.concatenate([np.asarray(store.tokens(s["name"])["gene_id"]) for s in store.manifest["shards"]])
    )
    cells = np.unique(np.asarray(store.tokens(store.manifest["shards"][0]["name"])["cell_index"]))[:48]
    runner = Intervener(loaded, sae, LAYER, HOOK, genes)
    return runner, runner.evaluate(_batches(loaded, store, cells), EffectSettings(batch_rows=16))


def test_strength_zero_and_ablating_a_silent_feature_change_nothing_exactly(intervener) -> None:
    from sae_genomics_core.sae.effects import make_plan, plan_effects

    runner, cells = intervener
    active = (cells.activity > 0).sum(axis=0)
    feature = int(np.argmax(np.where(active < cells.activity.shape[0], active, 0)))  # active and silent cells
    zero = plan_effects(cells, np.array([feature]), EffectSettings(strengths=(0.0,), cells=8))
    steered = np.array([row for row, key in enumerate(zero.key) if key[1] == "steer"])
    delta, _ = runner.run(cells, zero, steered)
    assert steered.size > 8 and torch.count_nonzero(delta) == 0
    silent = np.flatnonzero(cells.activity[:, feature] == 0)[:6]
    ablation = make_plan([(silent, feature, True, 0.0, (feature, "ablate", 0.0, "silent"))])
    delta, _ = runner.run(cells, ablation, np.arange(silent.size))
    assert silent.size > 0 and torch.count_nonzero(delta) == 0
    steer = plan_effects(cells, np.array([feature]), EffectSettings(strengths=(1.0,), cells=8))
    delta, _ = runner.run(cells, steer, np.arange(len(steer.key)))
    assert torch.count_nonzero(delta) > 0  # positive control: a real edit moves predictions


def test_a_gene_planted_on_a_features_direction_ranks_first(intervener) -> None:
    """The MVC head is rewired so that one gene's query points along the cell-embedding shift that steering
    the feature causes (measured with a plain forward); its effects must then rank that gene first."""
    from sae_genomics_core.sae.effects import feature_effects

    runner, cells = intervener
    active = (cells.activity > 0).sum(axis=0)
    feature = int(
        np.argmax(np.where(active > 0, cells.activity.shape[0] - active, 0))
    )  # fires, mostly silent
    model = copy.deepcopy(runner.model)  # rewired below; the fixture's stays as it is
    silent = torch.as_tensor(np.flatnonzero(cells.activity[:, feature] == 0)[:16])
    push = cells.mean_when_firing[feature] * runner.directions[feature]
    tokens = cells.gene_tokens(silent)[..., None]
    width = cells.width(silent)
    genes, values, real = (t[silent, :width] for t in (cells.genes, cells.values, cells.real))
    with torch.no_grad():
        clean = model(genes, values, real).cell_emb
        moved = model(
            genes, values, real, edit={LAYER: {HOOK: lambda x: torch.where(tokens, x + push, x)}}
        ).cell_emb
        shift = (moved - clean).mean(dim=0)
        embedded = model.mvc_decoder.query_activation(
            model.mvc_decoder.gene2query(model.gene_encoder(torch.as_tensor(runner.gene_ids)))
        )
        centred = embedded - embedded.mean(dim=0)
        planted = int(centred.norm(dim=1).argmax())
        model.mvc_decoder.W.weight += (
            1e3 * torch.outer(shift / shift.norm(), centred[planted]) / centred[planted].norm() ** 2
        )
    rewired = type(runner)(
        SimpleNamespace(model=model, drug_id=None), runner.sae, LAYER, HOOK, runner.gene_ids
    )
    settings = EffectSettings(strengths=(-1.0, 1.0), cells=16, batch_rows=40)
    tables = feature_effects(rewired, cells, np.array([feature]), None, settings).genes
    steered = tables.filter(
        (pl.col("intervention") == "steer") & (pl.col("cells") == "silent") & (pl.col("rank") == 1)
    )
    top = {(row["strength"], row["direction"]): row for row in steered.iter_rows(named=True)}
    assert top[1.0, "up"]["gene_id"] == runner.gene_ids[planted] == top[-1.0, "down"]["gene_id"]
    assert top[1.0, "up"]["consistency"] >= 0.8 and top[1.0, "up"]["n_cells"] == 16


def test_contrastive_ranking_finds_a_rare_feature_against_features_of_its_own_frequency() -> None:
    """Frequent features move cells more whatever they mean (a confound the raw ranking follows); a
    planted rare feature moves them far more than features as rare, and only the same-frequency null
    puts it first."""
    from sae_genomics_core.pipeline.effects import _against_same_frequency

    rng = np.random.default_rng(0)
    frequency = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), 500))
    shift = 2.0 * frequency + rng.normal(0.0, 0.002, 500)
    planted = int(np.argmin(frequency))
    shift[planted] += 0.02  # ten noise s.d. above features as rare, far below the frequent ones
    ranked = _against_same_frequency(
        pl.DataFrame({"feature": np.arange(500), "frequency": frequency, "relative_shift": shift}),
        n_source_cells=16,
    )
    row = ranked.filter(pl.col("feature") == planted).row(0, named=True)
    assert row["percentile_same_frequency"] == 1.0 and row["z_same_frequency"] > 4
    assert row["rank"] > 100  # the raw relative shift buries it under frequent features
    null = ranked.filter(pl.col("feature") != planted)
    assert 0.01 <= (null["z_same_frequency"] > 1.645).mean() <= 0.12
    assert set(ranked["same_frequency_features"].to_list()) == {100}
