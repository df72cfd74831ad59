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


def _load_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import json; from sae_genomics_core.model.load import load_model\n"
        "m = load_model('tahoe-x1-70m')\n"
        "print(json.dumps({'id': m.model_id, 'revision': m.revision, 'layers': m.config.n_layers}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_hub_spec_downloads_once_then_loads_from_the_cache(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    published_model_folder(repo / "70m-model", GENES)
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"models": {
        "hub_repo": "tahoebio/Tahoe-x1", "revision": "main",
        "sizes": {"tahoe-x1-70m": {"subfolder": "70m-model", "n_layers": 2, "d_model": 32}},
    }}))  # fmt: skip
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "SAE_GENOMICS_SOURCES": str(sources),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    with FakeHub("tahoebio/Tahoe-x1", repo) as hub:
        first = _load_in_subprocess({**env, "HF_ENDPOINT": hub.endpoint})
        assert first.returncode == 0, first.stderr[-2000:]
        loaded = json.loads(first.stdout.strip().splitlines()[-1])
        assert loaded == {"id": "tahoebio/Tahoe-x1/70m-model", "revision": hub.commit, "layers": 2}
        downloads = [key for key in hub.requests if key.startswith("GET /tahoebio/Tahoe-x1/resolve/")]
        assert len(downloads) == 4
    offline = _load_in_subprocess({**env, "HF_HUB_OFFLINE": "1"})  # the server is gone: the cache serves
    assert offline.returncode == 0, offline.stderr[-2000:]


def test_hub_spec_offline_without_cache_lists_the_ways(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    result = _load_in_subprocess(env)
    assert result.returncode != 0
    assert "ModelUnavailable" in result.stderr
    for way in ("dir:<path>", "Hugging Face cache", "tiny-random"):
        assert way in result.stderr
