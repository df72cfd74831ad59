"""Builders shared by tests: a tahoe-x1 model folder in the published format, with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.tx import TXModel


def published_model_folder(folder: Path, genes: list[str], *, seed: int = 0, chem: bool = False) -> Path:
    """Write vocab.json, model_config.yml, collator_config.yml and model.safetensors as the hub has them.

    Keys carry ComposerTX's `model.` prefix; with `chem` the checkpoint has a chemical encoder and a
    drug token (as the 3B model does).
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [*genes, "<pad>", "<cls>", "<eoc>"] + (["<drug>"] if chem else [])
    vocab = {token: index for index, token in enumerate(tokens)}
    model_config = {
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 4,
        "expansion_ratio": 4,
        "vocab_size": len(vocab),
        "norm_scheme": "pre",
        "transformer_activation": "gelu",
        "cell_emb_style": "cls",
        "use_glu": False,
        "attn_config": {
            "attn_type": "grouped_query_attention",
            "attn_impl": "flash",
            "kv_n_heads": 4,
            "use_attn_mask": False,
            "attn_pdrop": 0.0,
        },
        "norm_config": {"norm_type": "low_precision_layernorm", "eps": 1e-5},
        "gene_encoder": {"use_norm": True},
        "expression_encoder": {
            "input_emb_style": "continuous",
            "dropout": 0.1,
            "max_value": 512,
            "activation": "relu",
            "use_norm": True,
        },
        "expression_decoder": {"n_outputs": 1, "n_layers": 1, "activation": "leaky_relu"},
        "mvc": {"arch_style": "inner product", "query_activation": "sigmoid", "scaled_dot_product": True},
        "precision": "amp_bf16",
    }
    collator_config = {
        "pad_token_id": vocab["<pad>"],
        "pad_value": -2,
        "mask_value": -1,
        "num_bins": 51,
        "max_length": 64,
        "sampling": True,
        "keep_first_n_tokens": 2 if chem else 1,
        "use_chem_token": chem,
        "do_binning": True,
    }
    if chem:
        model_config["chemical_encoder"] = {
            "padding_idx": 0,
            "activation": "leaky_relu",
            "num_drugs": 5,
            "fp_dim": 8,
        }
    config = TahoeConfig.from_dicts(model_config, collator_config).without_chem_token()
    torch.manual_seed(seed)
    model = TXModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    state = {f"model.{key}": value.contiguous() for key, value in model.state_dict().items()}
    if chem:
        state["model.chem_encoder.fc.weight"] = torch.randn(32, 8)
        state["model.chem_encoder.embedding.weight"] = torch.randn(5, 8)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "model_config.yml").write_text(yaml.safe_dump(model_config))
    (folder / "collator_config.yml").write_text(yaml.safe_dump(collator_config))
    return folder
