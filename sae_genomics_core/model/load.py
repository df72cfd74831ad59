"""Model specs → a loaded tahoe-x1: `tahoe-x1-70m|-1.3b|-3b` (Hugging Face hub), `dir:<path>`, `tiny-random`.

The hub files are fetched with huggingface_hub (cached in its cache, honouring HF_HOME,
HF_HUB_OFFLINE and HF_ENDPOINT); repo, revision and folders come from external/sources.yaml.
`tiny-random` is the real architecture with small dimensions and seeded random weights over a vocab
built from the dataset's own genes: for tests and the offline demo, and labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.specs import (
    HUB_SPECS,
    MODEL_FILES,
    TINY_RANDOM,
    TINY_RANDOM_SHAPE,
    ModelUnavailable,
    model_sources,
    n_layers_of,
    unknown_spec_message,
)
from sae_genomics_core.model.tokenize import GeneVocab, Tokenizer
from sae_genomics_core.model.tx import TXModel, load_tahoe_state_dict

__all__ = [
    "HUB_SPECS",
    "MODEL_FILES",
    "TINY_RANDOM",
    "TINY_RANDOM_SHAPE",
    "LoadedModel",
    "ModelUnavailable",
    "load_model",
    "model_sources",
    "n_layers_of",
]


@dataclass
class LoadedModel:
    model: TXModel
    config: TahoeConfig
    vocab: GeneVocab
    model_id: str
    revision: str | None
    random_weights: bool

    def tokenizer(self, max_length: int | None = None, seed: int = 0) -> Tokenizer:
        return Tokenizer(
            cls_id=self.vocab.cls_id,
            pad_id=self.config.pad_token_id,
            pad_value=self.config.pad_value,
            num_bins=self.config.num_bins,
            max_length=max_length or self.config.max_length,
            seed=seed,
        )


def _hub_folder(spec: str, sources: dict[str, Any]) -> tuple[Path, str, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    size = sources["sizes"][spec]
    repo, revision, folder = sources["hub_repo"], str(sources.get("revision", "main")), size["subfolder"]
    try:
        root = snapshot_download(
            repo_id=repo, revision=revision, allow_patterns=[f"{folder}/{name}" for name in MODEL_FILES]
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelUnavailable(
            f"the weights of {spec} ({repo}@{revision}, {folder}/) cannot be downloaded or found in the "
            f"Hugging Face cache ({type(error).__name__}: {error}). Provide them in one of these ways:\n"
            f"  1. a local folder with {', '.join(MODEL_FILES)}: use the model spec dir:<path>\n"
            f"  2. the Hugging Face cache (HF_HOME) filled on a machine with network: "
            f"`hf download {repo} --include '{folder}/*' --revision {revision}`, then copy the cache here\n"
            f"  3. for a smoke run without weights: the model spec {TINY_RANDOM} (random weights)"
        ) from error
    directory = Path(root) / folder
    commit = Path(root).name  # snapshots/<commit>
    return directory, f"{repo}/{folder}", commit


def load_model(
    spec: str,
    *,
    dataset_genes: list[str | None] | None = None,
    device: str = "cpu",
    seed: int = 0,
    sources: dict[str, Any] | None = None,
) -> LoadedModel:
    if spec == TINY_RANDOM:
        if not dataset_genes:
            raise ValueError(f"{TINY_RANDOM} builds its vocab from the dataset's genes; pass dataset_genes")
        return _tiny_random(dataset_genes, device, seed)
    if spec.startswith("dir:"):
        directory, model_id, revision = Path(spec.removeprefix("dir:")).expanduser(), spec, None
    elif spec in HUB_SPECS:
        directory, model_id, revision = _hub_folder(spec, sources or model_sources())
    else:
        raise ValueError(unknown_spec_message(spec))
    missing = [name for name in MODEL_FILES if not (directory / name).exists()]
    if missing:
        raise ModelUnavailable(
            f"{directory} lacks {', '.join(missing)}; a tahoe-x1 model folder holds {', '.join(MODEL_FILES)} "
            f"(as in the Hugging Face repo's <size>-model/ folders). For a smoke run use {TINY_RANDOM}."
        )
    config = TahoeConfig.from_files(
        str(directory / "model_config.yml"), str(directory / "collator_config.yml")
    )
    config = config.without_chem_token()
    vocab = GeneVocab.from_file(directory / "vocab.json")
    if vocab.pad_id != config.pad_token_id:
        raise ValueError(
            f"vocab.json's <pad> is {vocab.pad_id} but collator_config.yml says {config.pad_token_id}"
        )
    model = TXModel(config)
    load_tahoe_state_dict(model, load_file(str(directory / "model.safetensors")))
    return LoadedModel(model.to(device).eval(), config, vocab, model_id, revision, random_weights=False)


def _tiny_random(dataset_genes: list[str | None], device: str, seed: int) -> LoadedModel:
    vocab = GeneVocab.from_genes([g for g in dataset_genes if g])
    model_config = {
        **TINY_RANDOM_SHAPE,
        "vocab_size": len(vocab),
        "transformer_activation": "relu",
        "attn_config": {"kv_n_heads": TINY_RANDOM_SHAPE["n_heads"]},
        "gene_encoder": {"use_norm": True},
        "expression_encoder": {"use_norm": True, "activation": "relu", "max_value": 512},
        "expression_decoder": {"n_layers": 1},
        "mvc": {"query_activation": "sigmoid", "scaled_dot_product": True},
    }
    config = TahoeConfig.from_dicts(model_config, {"pad_token_id": vocab.pad_id, "max_length": 1024})
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = TXModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model_id = f"{TINY_RANDOM}(seed={seed}, d_model={config.d_model}, n_layers={config.n_layers}, vocab={len(vocab)})"
    return LoadedModel(model.to(device).eval(), config, vocab, model_id, revision=None, random_weights=True)
