"""Run the official tahoe-x1 TXModel (random weights) and save its state dict, inputs and hook outputs.

Runs in the reference venv (external/tahoe-x1-reference), never in the product's. The CPU shims the
official package needs live here, with the test:
1. torchvision from PyPI is CUDA-linked, so its op schemas never register and importing it fails;
   the two schemas its meta registrations need are defined before it is imported.
2. llm-foundry references flash_attn.bert_padding even on the torch attention path; a pure-torch
   unpad_input stands in (its result is unused on that path).
3. TXEncoder._make_mask returns (B,S,S), which the encoder broadcasts wrongly for B>1; at inference
   (no generative tokens) the right mask is all-True (S,S), and the encoder then merges key padding.
   With generative tokens the official rule is used one cell at a time (B=1: its (S,S) slice), so the
   masked-expression path runs upstream's own mask, decoders and loss.
4. The chemical encoder and the collator fetch the drug fingerprint table (.npy) and drug_to_id (.json)
   from S3 by `download_file_from_s3_url(remote, local)`; offline, the test writes local fakes in the
   real formats and the download is replaced by a check that the local file is there.

usage: python reference_forward.py CONFIG_JSON OUTPUT_SAFETENSORS
"""

import json
import os
import sys
import types

import torch

_torchvision_ops = torch.library.Library("torchvision", "FRAGMENT")
for _op in ("nms", "qnms"):
    _torchvision_ops.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import llmfoundry.models.mpt.modeling_mpt as modeling_mpt  # noqa: E402


def _unpad_input(hidden_states, attention_mask, unused_mask=None):
    lengths = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(lengths.max()), lengths


if not hasattr(modeling_mpt, "bert_padding"):
    modeling_mpt.bert_padding = types.SimpleNamespace(
        unpad_input=_unpad_input, unpad_input_for_concatenated_sequences=None
    )

from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tahoe_x1.model import blocks  # noqa: E402
from tahoe_x1.model.model import TXModel  # noqa: E402

_official_make_mask = blocks.TXEncoder._make_mask.__wrapped__.__wrapped__  # under no_grad and lru_cache


def _inference_mask(self, gen_mask, device):
    if bool(gen_mask.any()):
        if gen_mask.shape[0] != 1:
            raise ValueError("generative tokens: run one cell at a time (the official mask is right for B=1)")
        return _official_make_mask(self, gen_mask, device)[0]
    length = gen_mask.shape[1]
    return torch.ones(length, length, dtype=torch.bool, device=gen_mask.device)


blocks.TXEncoder._make_mask = _inference_mask


def _local_only(s3_url: str, local_file_path: str) -> str:
    if not os.path.exists(local_file_path):
        raise FileNotFoundError(f"offline test: {local_file_path} (fake of {s3_url}) was not written")
    return local_file_path


blocks.download_file_from_s3_url = _local_only


def _tokenize(spec: dict) -> dict[str, torch.Tensor]:
    """Upstream CountDataset + DataCollator (inference settings, no sampling) on a CSR matrix."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from tahoe_x1.data import collator as collator_module
    from tahoe_x1.data.collator import DataCollator
    from tahoe_x1.data.dataloader import CountDataset

    collator_module.download_file_from_s3_url = _local_only
    from tahoe_x1.tokenizer import GeneVocab

    matrix = csr_matrix(
        (np.asarray(spec["data"], dtype=np.float32), spec["indices"], spec["indptr"]), shape=spec["shape"]
    )  # the stored entries as given, explicit zeros included
    vocab = GeneVocab.from_dict(spec["vocab"])
    dataset = CountDataset(
        matrix, np.asarray(spec["gene_ids"]), cls_token_id=vocab["<cls>"], pad_value=spec["pad_value"]
    )
    chem = spec.get("drug_to_id_path")  # with it: the drug token after <cls>, both kept first
    collator = DataCollator(
        vocab=vocab,
        use_chem_token=chem is not None,
        drug_to_id_path=chem,
        pad_token_id=vocab["<pad>"],
        pad_value=spec["pad_value"],
        do_mlm=False,
        do_binning=True,
        max_length=spec["max_length"],
        sampling=False,
        keep_first_n_tokens=1 if chem is None else 2,
        num_bins=51,
    )
    examples = [dataset[i] for i in range(len(dataset))]
    for example, drug in zip(examples, spec.get("drugs", []), strict=False):
        example["drug"] = drug
    batch = collator(examples)
    out = {"tok.gene": batch["gene"], "tok.expr": batch["expr"], "tok.expr_raw": batch["expr_raw"]}
    if chem is not None:
        out["tok.drug_ids"] = batch["drug_ids"]
    return out


def main(config_path: str, output_path: str) -> None:
    with open(config_path) as handle:
        spec = json.load(handle)
    if "tokenize" in spec:
        save_file({k: v.contiguous() for k, v in _tokenize(spec["tokenize"]).items()}, output_path)
        return
    torch.manual_seed(spec["seed"])
    model_config = OmegaConf.create(spec["model_config"])
    collator_config = OmegaConf.create(spec["collator_config"])
    model = TXModel(model_config=model_config, collator_config=collator_config, device="cpu").eval()
    # the official initialisation, before the perturbation below (random-init reproduces its scheme)
    initial = {f"init.{k}": v.detach().clone().contiguous() for k, v in model.named_parameters()}
    # random init leaves biases and norms at 0/1; perturb them so parity also covers those parameters
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))

    genes = torch.tensor(spec["genes"], dtype=torch.long)
    values = torch.tensor(spec["values"], dtype=torch.float32)
    key_padding_mask = genes != collator_config.pad_token_id
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(model.transformer_encoder.layers):
        handles.append(
            layer.down_proj.register_forward_hook(
                lambda m, a, o, i=i: captured.__setitem__(f"{i}.mlp_out", o)
            )
        )
        handles.append(
            layer.down_proj.register_forward_pre_hook(
                lambda m, a, i=i: captured.__setitem__(f"{i}.mlp_hidden", a[0])
            )
        )
        handles.append(
            layer.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(f"{i}.resid_post", o))
        )
        handles.append(
            layer.self_attn.register_forward_hook(
                lambda m, a, o, i=i: captured.__setitem__(f"{i}.attn_out", o[0])
            )
        )
    drug_ids = torch.tensor(spec["drug_ids"], dtype=torch.long) if "drug_ids" in spec else None
    with torch.no_grad():
        output = model(
            genes=genes,
            values=values,
            gen_masks=torch.zeros_like(genes, dtype=torch.bool),
            key_padding_mask=key_padding_mask,
            drug_ids=drug_ids,
            skip_decoders=True,
        )
    tensors = {f"state.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"hook.{k}": v.contiguous() for k, v in captured.items()})
    tensors.update(initial)
    from tahoe_x1.data.collator import binning

    for index, row in enumerate(spec.get("binning_rows", [])):
        tensors[f"binning.{index}"] = binning(torch.tensor(row, dtype=torch.float32), n_bins=51).contiguous()
    tensors["out.cell_emb"] = output["cell_emb"].contiguous()
    tensors["out.gene_emb"] = output["gene_emb"].contiguous()
    if "gen_mask" in spec:
        tensors.update(_generative(model, genes, values, torch.tensor(spec["gen_mask"]), key_padding_mask))
    save_file(tensors, output_path)


def _generative(model, genes, values, gen_mask, key_padding_mask) -> dict[str, torch.Tensor]:
    """The masked-expression pass with both decoders, one cell at a time, and upstream's masked MSE."""
    from tahoe_x1.loss import masked_mse_loss

    masked = values.masked_fill(gen_mask, -1.0)  # the collator's mask_value at generative positions
    expr, mvc = [], []
    with torch.no_grad():
        for row in range(genes.shape[0]):
            one = slice(row, row + 1)
            out = model(genes[one], masked[one], gen_mask[one], key_padding_mask[one], skip_decoders=False)
            expr.append(out["expr_preds"])
            mvc.append(out["mvc_output"])
    expr, mvc = torch.cat(expr), torch.cat(mvc)
    scored = key_padding_mask & gen_mask
    return {
        "gen.expr_preds": expr.contiguous(),
        "gen.mvc_preds": mvc.contiguous(),
        "gen.loss_expr": masked_mse_loss(expr, values, scored).reshape(1),
        "gen.loss_mvc": masked_mse_loss(mvc, values, scored).reshape(1),
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
