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
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.tokenize import GeneVocab, Tokenizer, bin_values
from sae_genomics_core.model.tx import HOOKS, TXModel, load_tahoe_state_dict

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(
    os.environ.get("SAE_GENOMICS_REFERENCE_PYTHON", REPO / ".venv-reference" / "bin" / "python")
)
TOLERANCE = 1e-5
PAD_ID = 0
DRUG_ID = 2  # the <drug> token of the chemical-path spec (genes are 3..vocab_size-1)
DRUG_TO_ID = {"<pad>": 0, "drug-a": 1, "drug-b": 2, "DMSO": 3, "drug-c": 4, "drug-d": 5}


def _spec(activation: str, kv_n_heads: int, seed: int) -> dict:
    vocab_size, n_layers = 120, 3
    model_config = {
        "d_model": 64,
        "n_layers": n_layers,
        "n_heads": 4,
        "expansion_ratio": 4,
        "vocab_size": vocab_size,
        "norm_scheme": "pre",
        "transformer_activation": activation,
        "cell_emb_style": "cls",
        "use_glu": False,
        "init_device": "cpu",
        "return_gene_embeddings": True,
        "attn_config": {
            "attn_type": "grouped_query_attention",
            "attn_impl": "torch",
            "attn_pdrop": 0.0,
            "kv_n_heads": kv_n_heads,
            "use_attn_mask": True,
        },
        "norm_config": {"norm_type": "layernorm", "eps": 1e-5},
        "init_config": {
            "name": "kaiming_normal_",
            "fan_mode": "fan_in",
            "init_nonlinearity": "relu",
            "init_div_is_residual": True,
            "emb_init_std": None,
            "emb_init_uniform_lim": None,
            "init_std": None,
            "init_gain": 0.0,
        },
        "gene_encoder": {"use_norm": True},
        "expression_encoder": {
            "input_emb_style": "continuous",
            "dropout": 0.0,
            "max_value": 512,
            "activation": "relu",
            "use_norm": True,
        },
        "expression_decoder": {"n_outputs": 1, "n_layers": 1, "activation": "leaky_relu"},
        "mvc": {"arch_style": "inner product", "query_activation": "sigmoid", "scaled_dot_product": True},
    }
    collator_config = {
        "pad_token_id": PAD_ID,
        "pad_value": -2,
        "num_bins": 51,
        "keep_first_n_tokens": 1,
        "use_chem_token": False,
        "max_length": 32,
    }
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
    return {
        "seed": seed,
        "model_config": model_config,
        "collator_config": collator_config,
        "genes": genes.tolist(),
        "values": values.tolist(),
        "binning_rows": binning_rows,
    }


def _run_reference(spec: dict, tmp_path: Path) -> dict[str, torch.Tensor]:
    if not REFERENCE_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the reference venv is missing ({REFERENCE_PYTHON}); `make test` installs it")
        pytest.skip(f"no reference venv at {REFERENCE_PYTHON}; run `make test` to install it")
    config_path, output_path = tmp_path / "spec.json", tmp_path / "reference.safetensors"
    config_path.write_text(json.dumps(spec))
    result = subprocess.run(
        [
            str(REFERENCE_PYTHON),
            str(Path(__file__).with_name("reference_forward.py")),
            str(config_path),
            str(output_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
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


def test_decoders_and_masked_expression_loss_match_official(tmp_path: Path) -> None:
    """The generative path (flag embedding, dropped expression input, upstream's attention rule for
    generative tokens) and both heads, on a padded batch; upstream runs it one cell at a time."""
    spec = _spec("gelu", 2, seed=13)
    genes = torch.tensor(spec["genes"])
    real = genes != PAD_ID
    gene_tokens = real & (torch.arange(genes.shape[1]) > 0)
    hidden = gene_tokens & (torch.from_numpy(np.random.default_rng(13).random(genes.shape)) < 0.3)
    hidden[:, 1] = True  # every cell has a hidden gene (the two-token cell's only one)
    spec["gen_mask"] = hidden.tolist()
    reference = _run_reference(spec, tmp_path)
    config = TahoeConfig.from_dicts(spec["model_config"], spec["collator_config"])
    model = TXModel(config).eval()
    load_tahoe_state_dict(
        model, {k.removeprefix("state."): v for k, v in reference.items() if k.startswith("state.")}
    )
    values = torch.tensor(spec["values"], dtype=torch.float32)
    with torch.no_grad():
        out = model(genes, values.masked_fill(hidden, -1.0), real, gen_mask=hidden, decode=True)
    for name, ours in (("expr", out.expr_preds), ("mvc", out.mvc_preds)):
        difference = (ours[real] - reference[f"gen.{name}_preds"][real]).abs().max().item()
        assert difference <= TOLERANCE, f"{name} predictions: max abs diff {difference:.2e}"
        loss = ((ours - values)[hidden] ** 2).mean()
        assert loss.item() == pytest.approx(reference[f"gen.loss_{name}"].item(), rel=TOLERANCE)
    # the generative pass differs from the inference one only where genes are hidden or see hidden ones
    with torch.no_grad():
        plain = model(genes, values, real, decode=True)
    assert (plain.expr_preds[real] - out.expr_preds[real]).abs().max().item() > 1e-3


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


@pytest.mark.parametrize("with_drug", [False, True])
def test_tokenisation_with_explicit_zeros_matches_official(tmp_path: Path, with_drug: bool) -> None:
    """Stored zeros become tokens with bin 1 and leave the other bins alone, as upstream's CountDataset +
    DataCollator make them (dense zeros are not stored, so they never become tokens). With the drug
    token, <drug> follows <cls> and neither is binned (keep_first_n_tokens 2)."""
    rng = np.random.default_rng(11)
    dense = rng.integers(0, 40, size=(4, 90)).astype(np.float32) * (rng.random((4, 90)) < 0.4)
    matrix = sp.csr_matrix(dense)
    # explicit zeros: store a zero at some empty positions of rows 0 and 2 (canonical CSR: indices sorted)
    coo = matrix.tocoo()
    rows, cols, data = list(coo.row), list(coo.col), list(coo.data)
    for row in (0, 2):
        for col in np.flatnonzero(dense[row] == 0)[:7]:
            rows.append(row)
            cols.append(int(col))
            data.append(0.0)
    stored = sp.csr_matrix((data, (rows, cols)), shape=dense.shape)
    stored.sort_indices()
    assert (stored.data == 0).sum() == 14  # the zeros survive construction
    vocab = GeneVocab.from_genes([f"G{i}" for i in range(90)])
    gene_ids = vocab.ids_for([f"G{i}" for i in range(90)])
    drug_token = None
    if with_drug:
        vocab = GeneVocab({**vocab.token_to_id, "<drug>": len(vocab)})
        drug_token = vocab.token_to_id["<drug>"]
    tokenize = {"data": stored.data.tolist(), "indices": stored.indices.tolist(), "shape": list(stored.shape)}
    tokenize |= {"indptr": stored.indptr.tolist(), "vocab": vocab.token_to_id, "gene_ids": gene_ids.tolist()}
    tokenize |= {"pad_value": -2.0, "max_length": 200}
    if with_drug:
        (tmp_path / "drug_to_id.json").write_text(json.dumps(DRUG_TO_ID))
        tokenize |= {"drugs": ["DMSO", "drug-b", "DMSO", "drug-b"]}
        tokenize |= {
            "drug_to_id_path": {
                "remote": "s3://fake/drug_to_id.json",
                "local": str(tmp_path / "drug_to_id.json"),
            }
        }
    spec = {"tokenize": tokenize}
    reference = _run_reference(spec, tmp_path)
    if with_drug:
        assert reference["tok.drug_ids"].tolist() == [DRUG_TO_ID[d] for d in tokenize["drugs"]]
    tokenizer = Tokenizer(cls_id=vocab.cls_id, pad_id=vocab.pad_id, max_length=200, drug_token_id=drug_token)
    ours, skipped = tokenizer.batch(stored, np.arange(4), gene_ids)
    assert skipped == []
    # Upstream takes the batch's length before it inserts <drug>, so the batch's longest cell loses its
    # last gene (truncated without sampling, a random one with it): a batch-dependent quirk not copied.
    width = reference["tok.gene"].shape[1]
    assert ours.genes.shape[1] == width + with_drug  # stored zeros count in the sequence length
    assert ours.genes[:, :width].tolist() == reference["tok.gene"].tolist()
    assert ours.values[:, :width].tolist() == reference["tok.expr"].tolist()
    assert ours.raw[:, :width].tolist() == reference["tok.expr_raw"].tolist()


def _official_init_matches(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    """Same init distribution: exact where upstream is constant (zero biases, unit norms), else the std."""
    if torch.all(theirs == theirs.flatten()[0]):
        assert torch.equal(ours, theirs), f"{name}: upstream initialises it to {theirs.flatten()[0]}"
        return
    tolerance = 0.1 if theirs.numel() >= 1000 else 0.35
    ratio = ours.std().item() / theirs.std().item()
    assert abs(ratio - 1) < tolerance, f"{name}: std {ours.std():.4f} vs official {theirs.std():.4f}"


def test_random_init_draws_weights_as_the_official_model_does(tmp_path: Path) -> None:
    from sae_genomics_core.model.tx import official_init_

    spec = _spec("gelu", 2, seed=5)  # grouped-query attention: a fused Wqkv of unequal parts
    reference = _run_reference(spec, tmp_path)
    config = TahoeConfig.from_dicts(spec["model_config"], spec["collator_config"])
    torch.manual_seed(0)
    model = TXModel(config)
    official_init_(model)
    for name, parameter in model.named_parameters():
        _official_init_matches(parameter.detach(), reference[f"init.{name}"], name)
    assert not model.gene_encoder.embedding.weight[PAD_ID].any()


def _chem_spec(tmp_path: Path, seed: int) -> dict:
    """The parity spec with the 3B model's drug token: a fake drug fingerprint table (.npy, the format the
    official ChemEncoder np.loads) and <drug> at position 1 of every row."""
    spec = _spec("gelu", 2, seed=seed)
    num_drugs, fp_dim = len(DRUG_TO_ID), 16
    fps = tmp_path / "drug_fps.npy"
    np.save(fps, np.random.default_rng(seed).normal(size=(num_drugs, fp_dim)).astype(np.float32))
    spec["model_config"]["chemical_encoder"] = {
        "padding_idx": 0,
        "activation": "leaky_relu",
        "drug_fps_path": {"remote": "s3://fake/drug_fps.npy", "local": str(fps)},
    }
    spec["collator_config"] |= {"use_chem_token": True, "keep_first_n_tokens": 2}
    for genes, values in zip(spec["genes"], spec["values"], strict=True):
        genes[1], values[1] = DRUG_ID, -2.0
    spec["drug_ids"] = [3, 0, 5, 1, 3]
    return spec


def test_drug_token_path_matches_official(tmp_path: Path) -> None:
    """use_chem_inf=True upstream: the chemical encoder's embedding replaces token 1. Loaded through the
    product's loader (drug by name from drug_to_id.json), every hook point matches the official model."""
    import yaml

    from sae_genomics_core.model.load import load_model

    spec = _chem_spec(tmp_path, seed=9)
    reference = _run_reference(spec, tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    vocab = {"<pad>": PAD_ID, "<cls>": 1, "<drug>": DRUG_ID} | {f"G{i}": i for i in range(3, 120)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "drug_to_id.json").write_text(json.dumps(DRUG_TO_ID))
    (folder / "model_config.yml").write_text(yaml.safe_dump(spec["model_config"]))
    (folder / "collator_config.yml").write_text(yaml.safe_dump(spec["collator_config"]))
    state = {k.removeprefix("state."): v for k, v in reference.items() if k.startswith("state.")}
    save_file(state, str(folder / "model.safetensors"))

    loaded = load_model(f"dir:{folder}", drug="DMSO")
    assert loaded.drug_id == 3 and loaded.model_id == f"dir:{folder}+drug=DMSO:3"
    assert loaded.tokenizer().prefix == [1, DRUG_ID]
    genes = torch.tensor(spec["genes"])
    values = torch.tensor(spec["values"], dtype=torch.float32)
    real = genes != PAD_ID
    drug_ids = torch.tensor(spec["drug_ids"])
    every_hook = {layer: set(HOOKS) for layer in range(loaded.config.n_layers)}
    with torch.no_grad():
        output = loaded.model(genes, values, real, capture=every_hook, drug_ids=drug_ids)
        other_drug = loaded.model(genes, values, real, capture={0: {"resid_post"}}, drug_ids=drug_ids.flip(0))
    worst = 0.0
    for layer in range(loaded.config.n_layers):
        for hook in HOOKS:
            ours, theirs = output.captured[layer][hook][real], reference[f"hook.{layer}.{hook}"][real]
            difference = (ours - theirs).abs().max().item()
            worst = max(worst, difference)
            assert difference <= TOLERANCE, f"layer {layer} {hook}: max abs diff {difference:.2e}"
    assert (output.cell_emb - reference["out.cell_emb"]).abs().max().item() <= TOLERANCE
    print(f"max abs difference over all hooks with the drug token: {worst:.2e}")
    # the drug reaches the cell: with the drugs reversed, row 1 gets drug 1 instead of 0 and its <cls> moves
    moved = (other_drug.captured[0]["resid_post"][1, 0] - output.captured[0]["resid_post"][1, 0]).abs().max()
    assert moved.item() > 1e-3

    dropped = load_model(f"dir:{folder}")  # the default: no drug token, chemical encoder left out
    assert dropped.drug_id is None and dropped.model_id == f"dir:{folder}"
    assert not hasattr(dropped.model, "chem_encoder") and dropped.tokenizer().prefix == [1]
