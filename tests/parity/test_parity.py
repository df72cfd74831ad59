"""Parity of the native tahoe-x1 forward pass with the official package (random weights, fp32, CPU).

The official TXModel runs in the reference venv (installed by `make test` through
external/tahoe-x1-reference/install.sh); its state dict is loaded into the native model and every
hook point plus the cell embedding is compared on padded batches.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.tokenize import bin_values
from sae_genomics_core.model.tx import HOOKS, TXModel, load_tahoe_state_dict

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(
    os.environ.get("SAE_GENOMICS_REFERENCE_PYTHON", REPO / ".venv-reference" / "bin" / "python")
)
TOLERANCE = 1e-5
PAD_ID = 0


def _spec(activation: str, kv_n_heads: int, seed: int) -> dict:
    vocab_size, n_layers = 120, 3
    model_config = {
        "d_model": 64, "n_layers": n_layers, "n_heads": 4, "expansion_ratio": 4, "vocab_size": vocab_size,
        "norm_scheme": "pre", "transformer_activation": activation, "cell_emb_style": "cls", "use_glu": False,
        "init_device": "cpu", "return_gene_embeddings": True,
        "attn_config": {"attn_type": "grouped_query_attention", "attn_impl": "torch", "attn_pdrop": 0.0,
                        "kv_n_heads": kv_n_heads, "use_attn_mask": True},
        "norm_config": {"norm_type": "layernorm", "eps": 1e-5},
        "init_config": {"name": "kaiming_normal_", "fan_mode": "fan_in", "init_nonlinearity": "relu",
                        "init_div_is_residual": True, "emb_init_std": None, "emb_init_uniform_lim": None,
                        "init_std": None, "init_gain": 0.0},
        "gene_encoder": {"use_norm": True},
        "expression_encoder": {"input_emb_style": "continuous", "dropout": 0.0, "max_value": 512,
                               "activation": "relu", "use_norm": True},
        "expression_decoder": {"n_outputs": 1, "n_layers": 1, "activation": "leaky_relu"},
        "mvc": {"arch_style": "inner product", "query_activation": "sigmoid", "scaled_dot_product": True},
    }  # fmt: skip
    collator_config = {"pad_token_id": PAD_ID, "pad_value": -2, "num_bins": 51, "keep_first_n_tokens": 1,
                       "use_chem_token": False, "max_length": 32}  # fmt: skip
    rng = np.random.default_rng(seed)
    lengths = [24, 9, 17, 2, 24]  # padded batch: real tokens (CLS included) per row
    width = max(lengths)
    genes = np.full((len(lengths), width), PAD_ID)
    values = np.full((len(lengths), width), -2.0)
    for row, length in enumerate(lengths):
        genes[row, 0] = 1  # <cls>
        genes[row, 1:length] = rng.choice(np.arange(3, vocab_size), size=length - 1, replace=False)
        values[row, 1:length] = rng.integers(1, 51, size=length - 1)
    binning_rows = [
        rng.integers(1, 500, size=300).tolist(),  # raw counts with many ties
        np.log1p(rng.integers(1, 500, size=77)).tolist(),  # log1p values
        rng.gamma(0.5, 3.0, size=1000).tolist(),  # continuous
        [3.0],  # a cell with a single gene
    ]
    return {"seed": seed, "model_config": model_config, "collator_config": collator_config,
            "genes": genes.tolist(), "values": values.tolist(), "binning_rows": binning_rows}  # fmt: skip


def _run_reference(spec: dict, tmp_path: Path) -> dict[str, torch.Tensor]:
    if not REFERENCE_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the reference venv is missing ({REFERENCE_PYTHON}); `make test` installs it")
        pytest.skip(f"no reference venv at {REFERENCE_PYTHON}; run `make test` to install it")
    config_path, output_path = tmp_path / "spec.json", tmp_path / "reference.safetensors"
    config_path.write_text(json.dumps(spec))
    result = subprocess.run(
        [str(REFERENCE_PYTHON), str(Path(__file__).with_name("reference_forward.py")), str(config_path), str(output_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(output_path)


@pytest.mark.parametrize(("activation", "kv_n_heads"), [("relu", 4), ("gelu", 2)])
def test_native_forward_matches_official(tmp_path: Path, activation: str, kv_n_heads: int) -> None:
    spec = _spec(activation, kv_n_heads, seed=7)
    reference = _run_reference(spec, tmp_path)
    config = TahoeConfig.from_dicts(spec["model_config"], spec["collator_config"])
    model = TXModel(config).eval()
    load_tahoe_state_dict(
        model, {k.removeprefix("state."): v for k, v in reference.items() if k.startswith("state.")}
    )

    genes = torch.tensor(spec["genes"])
    values = torch.tensor(spec["values"], dtype=torch.float32)
    real = genes != PAD_ID
    every_hook = {layer: set(HOOKS) for layer in range(config.n_layers)}
    with torch.no_grad():
        output = model(genes, values, real, capture=every_hook)

    worst = 0.0
    for layer in range(config.n_layers):
        for hook in HOOKS:
            ours, theirs = output.captured[layer][hook][real], reference[f"hook.{layer}.{hook}"][real]
            difference = (ours - theirs).abs().max().item()
            worst = max(worst, difference)
            assert difference <= TOLERANCE, f"layer {layer} {hook}: max abs diff {difference:.2e}"
    assert (output.cell_emb - reference["out.cell_emb"]).abs().max().item() <= TOLERANCE
    assert (output.final[real] - reference["out.gene_emb"][real]).abs().max().item() <= TOLERANCE
    for index, row in enumerate(spec["binning_rows"]):
        ours_bins = bin_values(np.asarray(row, dtype=np.float32), 51)
        assert ours_bins.tolist() == reference[f"binning.{index}"].tolist(), f"binning row {index}"
    print(f"max abs difference over all hooks ({activation}, kv_n_heads={kv_n_heads}): {worst:.2e}")


def test_padding_does_not_change_a_cell(tmp_path: Path) -> None:
    """A cell alone and the same cell in a padded batch give the same activations (the upstream CPU bug)."""
    spec = _spec("relu", 4, seed=3)
    config = TahoeConfig.from_dicts(spec["model_config"], spec["collator_config"])
    torch.manual_seed(0)
    model = TXModel(config).eval()
    genes = torch.tensor(spec["genes"])
    values = torch.tensor(spec["values"], dtype=torch.float32)
    with torch.no_grad():
        batch = model(genes, values, genes != PAD_ID, capture={2: {"resid_post"}})
        alone = model(genes[1:2, :9], values[1:2, :9], genes[1:2, :9] != PAD_ID, capture={2: {"resid_post"}})
    difference = (batch.captured[2]["resid_post"][1, :9] - alone.captured[2]["resid_post"][0]).abs().max()
    assert difference.item() < 1e-5
