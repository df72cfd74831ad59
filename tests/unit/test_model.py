from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.load import ModelUnavailable, load_model, n_layers_of
from sae_genomics_core.model.tx import HOOKS, TXModel, load_tahoe_state_dict
from tests.fakes.hf_hub import FakeHub
from tests.helpers import published_model_folder

GENES = [f"ENSG{i:011d}" for i in range(40)]
REPO = Path(__file__).resolve().parents[2]


def _batch(model_vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pad, cls = model_vocab["<pad>"], model_vocab["<cls>"]
    genes = torch.tensor([[cls, 0, 3, 5, 7], [cls, 2, 4, pad, pad]])
    values = torch.tensor([[-2.0, 1, 20, 35, 50], [-2.0, 10, 50, -2, -2]])
    return genes, values, genes != pad


def test_dir_spec_loads_published_files(tmp_path: Path) -> None:
    folder = published_model_folder(tmp_path / "m", GENES)
    loaded = load_model(f"dir:{folder}")
    assert not loaded.random_weights and loaded.model_id == f"dir:{folder}"
    assert loaded.config.n_layers == 2 and n_layers_of(f"dir:{folder}") == 2
    assert loaded.vocab.pad_id == loaded.config.pad_token_id
    genes, values, real = _batch(loaded.vocab.token_to_id)
    with torch.no_grad():
        out = loaded.model(genes, values, real, capture={1: set(HOOKS)})
    # the same weights loaded by hand give the same activations
    from safetensors.torch import load_file

    twin = TXModel(loaded.config).eval()
    load_tahoe_state_dict(twin, load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        again = twin(genes, values, real, capture={1: set(HOOKS)})
    for hook in HOOKS:
        assert torch.equal(out.captured[1][hook], again.captured[1][hook])
    assert out.captured[1]["mlp_hidden"].shape == (2, 5, 128)


def test_run_to_end_false_stops_early_with_the_same_activations(tmp_path: Path) -> None:
    loaded = load_model(f"dir:{published_model_folder(tmp_path / 'm', GENES)}")
    genes, values, real = _batch(loaded.vocab.token_to_id)
    with torch.no_grad():
        full = loaded.model(genes, values, real, capture={0: {"resid_post"}})
        early = loaded.model(genes, values, real, capture={0: {"resid_post"}}, run_to_end=False)
    assert torch.equal(full.captured[0]["resid_post"], early.captured[0]["resid_post"])
    assert early.cell_emb.numel() == 0 and full.cell_emb.shape == (2, 32)


def test_missing_files_are_named(tmp_path: Path) -> None:
    folder = published_model_folder(tmp_path / "m", GENES)
    (folder / "vocab.json").unlink()
    with pytest.raises(ModelUnavailable, match=r"lacks vocab\.json") as caught:
        load_model(f"dir:{folder}")
    assert "tiny-random" in str(caught.value)


def test_unknown_spec_lists_the_specs() -> None:
    with pytest.raises(ValueError, match="tahoe-x1-70m"):
        load_model("tahoe-x2")


def test_a_checkpoint_of_another_shape_is_refused(tmp_path: Path) -> None:
    folder = published_model_folder(tmp_path / "m", GENES)
    config = yaml.safe_load((folder / "model_config.yml").read_text())
    config["n_layers"] = 3
    (folder / "model_config.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="does not match"):
        load_model(f"dir:{folder}")


def test_chem_token_is_dropped_with_its_bookkeeping(tmp_path: Path) -> None:
    folder = published_model_folder(tmp_path / "m", GENES, chem=True)
    raw = TahoeConfig.from_files(str(folder / "model_config.yml"), str(folder / "collator_config.yml"))
    assert raw.use_chem_token and raw.keep_first_n_tokens == 2
    loaded = load_model(f"dir:{folder}")  # the chemical encoder's weights are ignored, nothing else
    assert not loaded.config.use_chem_token and loaded.config.chem_dropped
    assert loaded.config.keep_first_n_tokens == 1  # only <cls> is kept first: the first gene is binned
    assert not hasattr(loaded.model, "chem_encoder")


def test_tiny_random_is_seeded_and_builds_its_vocab() -> None:
    a = load_model("tiny-random", dataset_genes=[*GENES, None], seed=1)
    b = load_model("tiny-random", dataset_genes=GENES, seed=1)
    c = load_model("tiny-random", dataset_genes=GENES, seed=2)
    assert a.random_weights and "tiny-random" in a.model_id
    assert len(a.vocab) == len(GENES) + 3
    weight = "transformer_encoder.layers.0.up_proj.weight"
    assert torch.equal(a.model.state_dict()[weight], b.model.state_dict()[weight])
    assert not torch.equal(a.model.state_dict()[weight], c.model.state_dict()[weight])


def _load_in_subprocess(env: dict[str, str], spec: str = "tahoe-x1-70m") -> subprocess.CompletedProcess[str]:
    code = (
        "import json; from sae_genomics_core.model.load import load_model\n"
        f"m = load_model({spec!r})\n"
        "print(json.dumps({'id': m.model_id, 'revision': m.revision, 'layers': m.config.n_layers}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.mark.parametrize(
    ("spec", "n_files"), [("tahoe-x1-70m", 4), ("random-init:tahoe-x1-70m", 3)]
)  # random-init reads the config and vocab, never the weights
def test_hub_spec_downloads_once_then_loads_from_the_cache(tmp_path: Path, spec: str, n_files: int) -> None:
    repo = tmp_path / "repo"
    published_model_folder(repo / "70m-model", GENES)
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "hub_repo": "tahoebio/Tahoe-x1",
                    "revision": "main",
                    "sizes": {"tahoe-x1-70m": {"subfolder": "70m-model", "n_layers": 2, "d_model": 32}},
                }
            }
        )
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "SAE_GENOMICS_SOURCES": str(sources),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    with FakeHub("tahoebio/Tahoe-x1", repo) as hub:
        first = _load_in_subprocess({**env, "HF_ENDPOINT": hub.endpoint}, spec)
        assert first.returncode == 0, first.stderr[-2000:]
        loaded = json.loads(first.stdout.strip().splitlines()[-1])
        prefix = "random-init(seed=0):" if spec.startswith("random-init") else ""
        assert loaded == {"id": f"{prefix}tahoebio/Tahoe-x1/70m-model", "revision": hub.commit, "layers": 2}
        downloads = [key for key in hub.requests if key.startswith("GET /tahoebio/Tahoe-x1/resolve/")]
        assert len(downloads) == n_files
    offline = _load_in_subprocess(
        {**env, "HF_HUB_OFFLINE": "1"}, spec
    )  # the server is gone: the cache serves
    assert offline.returncode == 0, offline.stderr[-2000:]


def test_hub_spec_offline_without_cache_lists_the_ways(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    result = _load_in_subprocess(env)
    assert result.returncode != 0
    assert "ModelUnavailable" in result.stderr
    for way in ("dir:<path>", "Hugging Face cache", "tiny-random"):
        assert way in result.stderr


def test_explicit_zeros_of_a_csr_row_become_tokens_with_bin_1() -> None:
    """Upstream's CountDataset takes every stored entry of the row; its binning gives zeros bin 1 and
    bins the non-zero values among themselves (so the stored zeros do not move the other bins)."""
    import numpy as np
    import scipy.sparse as sp

    from sae_genomics_core.model.tokenize import GeneVocab, Tokenizer, bin_values

    vocab = GeneVocab.from_genes(GENES[:6])
    ids = vocab.ids_for(GENES[:6])
    stored = sp.csr_matrix(
        (np.array([5.0, 0.0, 3.0, 0.0, 7.0, 0.0, 0.0]), [0, 1, 2, 4, 5, 0, 3], [0, 5, 7]), shape=(2, 6)
    )
    assert stored.nnz == 7  # explicit zeros are stored
    tokenizer = Tokenizer(cls_id=vocab.cls_id, pad_id=vocab.pad_id)
    batch, skipped = tokenizer.batch(stored, np.array([0, 1]), ids)
    assert skipped == [1]  # a row of stored zeros only has no expressed gene (upstream's binning fails on it)
    assert batch.genes[0].tolist() == [vocab.cls_id, *ids[[0, 1, 2, 4, 5]]]
    assert batch.raw[0, 1:].tolist() == [5.0, 0.0, 3.0, 0.0, 7.0]
    positive_bins = bin_values(np.array([5.0, 3.0, 7.0]), 51).tolist()  # as if the zeros were not stored
    assert batch.values[0, 1:].tolist() == [positive_bins[0], 1.0, positive_bins[1], 1.0, positive_bins[2]]


# -- random-init:<spec>: the real architecture and vocab with random weights, as a baseline ---------


def test_random_init_has_the_real_architecture_and_other_weights(tmp_path: Path) -> None:
    folder = published_model_folder(tmp_path / "m", GENES)
    real = load_model(f"dir:{folder}")
    state = torch.random.get_rng_state()
    baseline = load_model(f"random-init:dir:{folder}", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert baseline.random_weights and not baseline.vocab_from_dataset and not real.random_weights
    assert baseline.model_id == f"random-init(seed=3):dir:{folder}" != real.model_id
    assert baseline.config == real.config and baseline.vocab == real.vocab
    assert n_layers_of(f"random-init:dir:{folder}") == real.config.n_layers == 2
    real_state, random_state = real.model.state_dict(), baseline.model.state_dict()
    assert real_state.keys() == random_state.keys()
    for key, value in real_state.items():
        assert value.shape == random_state[key].shape, key
        assert not torch.equal(value, random_state[key]), f"{key} kept the real weights"
    again = load_model(f"random-init:dir:{folder}", seed=3).model.state_dict()
    other = load_model(f"random-init:dir:{folder}", seed=4).model.state_dict()
    weight = "transformer_encoder.layers.0.up_proj.weight"
    assert torch.equal(random_state[weight], again[weight])
    assert not torch.equal(random_state[weight], other[weight])


def test_random_init_needs_no_weights_file_and_follows_the_official_init(tmp_path: Path) -> None:
    """kaiming_normal_ (fan_in, relu): std sqrt(2 / fan_in); attention out_proj divided by sqrt(2 n_layers);
    zero biases and padding row; LayerNorms at 1 and 0 (llm-foundry's generic_param_init_fn_)."""
    folder = published_model_folder(tmp_path / "m", GENES)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"model\.safetensors"):
        load_model(f"dir:{folder}")
    loaded = load_model(f"random-init:dir:{folder}")
    params = dict(loaded.model.named_parameters())
    d, layers = loaded.config.d_model, loaded.config.n_layers
    expected = {
        "transformer_encoder.layers.0.up_proj.weight": (2 / d) ** 0.5,
        "transformer_encoder.layers.1.down_proj.weight": (2 / loaded.config.d_ffn) ** 0.5,
        "transformer_encoder.layers.0.self_attn.Wqkv.weight": (2 / d) ** 0.5,
        "transformer_encoder.layers.1.self_attn.out_proj.weight": (2 / d) ** 0.5 / (2 * layers) ** 0.5,
        "gene_encoder.embedding.weight": (2 / d) ** 0.5,
    }
    for name, std in expected.items():
        measured = params[name].std().item()
        assert abs(measured / std - 1) < 0.1, f"{name}: std {measured:.4f}, official {std:.4f}"
    assert not params["gene_encoder.embedding.weight"][loaded.config.pad_token_id].any()
    assert not params["transformer_encoder.layers.0.up_proj.bias"].any()
    assert torch.equal(params["transformer_encoder.layers.0.norm1.weight"], torch.ones(d))


@pytest.mark.parametrize(
    "spec", ["random-init:tiny-random", "random-init:random-init:tahoe-x1-70m", "random-init:"]
)
def test_random_init_of_a_non_real_model_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="takes the spec of a real model"):
        load_model(spec)
    with pytest.raises(ValueError, match="takes the spec of a real model"):
        n_layers_of(spec)


# -- the drug token of the 3B model: left out by default, or fed through the chemical encoder ---------


def chem_model_folder(folder: Path) -> Path:
    """A published-format folder of a drug-token model with a complete chemical encoder checkpoint."""
    from safetensors.torch import load_file, save_file

    published_model_folder(folder, GENES, chem=True)
    state = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    d_model = state["model.chem_encoder.fc.weight"].shape[0]
    shapes = {"fc.bias": (d_model,), "proj.weight": (d_model, d_model), "proj.bias": (d_model,)}
    shapes |= {"norm.weight": (d_model,), "norm.bias": (d_model,)}
    for name, shape in shapes.items():
        state[f"model.chem_encoder.{name}"] = torch.randn(shape, generator=generator)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "drug_to_id.json").write_text(json.dumps({"<pad>": 0, "DMSO_TF": 3}))
    return folder


@pytest.mark.parametrize(
    ("drug", "row", "label"), [("pad", 0, "<pad>:0"), ("DMSO_TF", 3, "DMSO_TF:3"), (4, 4, "row:4")]
)
def test_the_drug_token_is_an_option_labelled_in_the_model_id(
    tmp_path: Path, drug: str | int, row: int, label: str
) -> None:
    folder = chem_model_folder(tmp_path / "m")
    loaded = load_model(f"dir:{folder}", drug=drug)
    assert (loaded.drug_id, loaded.drug_label) == (row, label)
    assert loaded.model_id == f"dir:{folder}+drug={label}" != load_model(f"dir:{folder}").model_id
    assert loaded.config.use_chem_token and loaded.config.keep_first_n_tokens == 2
    assert (loaded.config.chem_num_drugs, loaded.config.chem_fp_dim) == (5, 8)  # read from the checkpoint
    vocab = loaded.vocab.token_to_id
    assert loaded.tokenizer().prefix == [vocab["<cls>"], vocab["<drug>"]]
    genes, values, real = _batch(vocab)
    genes[:, 1], values[:, 1] = vocab["<drug>"], -2.0
    with torch.no_grad():
        one = loaded.model(
            genes, values, real, capture={1: {"resid_post"}}, drug_ids=torch.tensor([row, row])
        )
        other = loaded.model(genes, values, real, capture={1: {"resid_post"}}, drug_ids=torch.tensor([1, 1]))
    assert not torch.allclose(one.captured[1]["resid_post"], other.captured[1]["resid_post"])
    with pytest.raises(ValueError, match="pass drug_ids"):
        loaded.model(genes, values, real)


@pytest.mark.parametrize(
    ("chem", "drug", "message"),
    [
        (False, "pad", "was not trained with a drug token"),
        (True, "aspirin", "has no 'aspirin'"),
        (True, 5, "outside the drug table"),
    ],
)
def test_a_drug_that_cannot_be_used_is_refused(
    tmp_path: Path, chem: bool, drug: str | int, message: str
) -> None:
    folder = chem_model_folder(tmp_path / "m") if chem else published_model_folder(tmp_path / "m", GENES)
    with pytest.raises(ValueError, match=message):
        load_model(f"dir:{folder}", drug=drug)
