"""A native PyTorch tahoe-x1 forward pass with the official module tree and state-dict keys.

Module names mirror tahoe_x1.model.TXModel (and llm-foundry's GroupedQueryAttention inside each
block), so the published safetensors load as they are and forward hooks on
`transformer_encoder.layers.{i}.down_proj` etc. mean what they mean upstream. Attention is
`scaled_dot_product_attention` with a boolean key-padding mask, which runs on CPU and GPU
(upstream supports only flash-attn on CUDA, and its CPU path attends to padding: notes §7).

`forward(..., capture=...)` returns the activations of chosen layers and hook points from the same
pass, without Python hooks; `edit=...` replaces them on the way (an SAE's reconstruction spliced in, a
layer ablated, a feature steered), and the rest of the model runs on the edited values:

- `attn_out`:  self-attention output (before the residual add)
- `mlp_hidden`: input of down_proj (the FFN hidden layer after its activation)
- `mlp_out`:   output of down_proj (the FFN output, before the residual add)
- `resid_post`: output of the block (the residual stream after block i)

With `decode=True` it also runs the two expression heads, as upstream does in training: the expression
decoder (an MLP on each token's output) and the MVC decoder (each gene's query, from its gene embedding,
dotted with the cell embedding), and `gen_mask` marks generative positions: their expression input is
dropped, the flag embedding added, and they attend to every perceptual token and to themselves only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.hooks import HOOKS


def _activation(name: str):
    if not hasattr(F, name):
        raise ValueError(f"unknown activation {name!r} in the model config")
    return getattr(F, name)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.kv_n_heads = config.kv_n_heads
        self.head_dim = config.head_dim
        self.Wqkv = nn.Linear(config.d_model, config.d_model + 2 * config.kv_n_heads * config.head_dim)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor, attend: Tensor | None) -> Tensor:
        batch, length, _ = x.shape
        kv_width = self.kv_n_heads * self.head_dim
        query, key, value = self.Wqkv(x).split([self.n_heads * self.head_dim, kv_width, kv_width], dim=2)
        query = query.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        key = key.view(batch, length, self.kv_n_heads, self.head_dim).transpose(1, 2)
        value = value.view(batch, length, self.kv_n_heads, self.head_dim).transpose(1, 2)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attend, enable_gqa=self.kv_n_heads != self.n_heads
        )
        return self.out_proj(context.transpose(1, 2).reshape(batch, length, -1))


Edits = Mapping[str, Callable[[Tensor], Tensor]]  # hook name -> new value from the computed one


def _editor(edits: Edits) -> Callable[[str, Tensor], Tensor]:
    unknown = set(edits) - set(HOOKS)
    if unknown:
        raise ValueError(f"unknown hook point(s) {sorted(unknown)}; choose from {', '.join(HOOKS)}")
    return lambda name, value: edits[name](value) if name in edits else value


class TXBlock(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.self_attn = GroupedQueryAttention(config)
        self.up_proj = nn.Linear(config.d_model, config.d_ffn)
        self.down_proj = nn.Linear(config.d_ffn, config.d_model)
        if config.use_glu:
            self.gate_proj = nn.Linear(config.d_model, config.d_ffn)
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.activation = _activation(config.activation)
        self.use_glu = config.use_glu
        self.pre_norm = config.norm_scheme == "pre"

    def forward(
        self, x: Tensor, attend: Tensor | None, keep: set[str] | None = None, edits: Edits | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        captured: dict[str, Tensor] = {}
        edit = _editor(edits or {})
        attn_out = edit("attn_out", self.self_attn(self.norm1(x) if self.pre_norm else x, attend))
        x = x + attn_out if self.pre_norm else self.norm1(x + attn_out)
        ffn_in = self.norm2(x) if self.pre_norm else x
        if self.use_glu:
            hidden = self.activation(self.gate_proj(ffn_in)) * self.up_proj(ffn_in)
        else:
            hidden = self.activation(self.up_proj(ffn_in))
        hidden = edit("mlp_hidden", hidden)
        mlp_out = edit("mlp_out", self.down_proj(hidden))
        x = edit("resid_post", x + mlp_out if self.pre_norm else self.norm2(x + mlp_out))
        if keep:
            for name, value in (
                ("attn_out", attn_out),
                ("mlp_hidden", hidden),
                ("mlp_out", mlp_out),
                ("resid_post", x),
            ):
                if name in keep:
                    captured[name] = value
        return x, captured


class TXEncoder(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.layers = nn.ModuleList(TXBlock(config) for _ in range(config.n_layers))
        self.use_norm = config.norm_scheme == "pre"
        if self.use_norm:
            self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)


class GeneEncoder(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.project = nn.Identity()  # upstream: extra pretrained embeddings, unused by released models
        self.use_norm = config.gene_encoder_norm
        if self.use_norm:
            self.enc_norm = nn.LayerNorm(config.d_model)

    def forward(self, genes: Tensor) -> Tensor:
        x = self.project(self.embedding(genes))
        return self.enc_norm(x) if self.use_norm else x


class ContinuousValueEncoder(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.linear1 = nn.Linear(1, config.d_model)
        self.linear2 = nn.Linear(config.d_model, config.d_model)
        self.activation = _activation(config.expression_activation)
        self.max_value = config.expression_max_value
        self.use_norm = config.expression_norm
        if self.use_norm:
            self.norm = nn.LayerNorm(config.d_model)

    def forward(self, values: Tensor) -> Tensor:
        x = torch.clamp(values.unsqueeze(-1), max=self.max_value)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.norm(x) if self.use_norm else x


class ChemEncoder(nn.Module):
    """The 3B model's drug encoder (upstream `ChemEncoder`): a drug id → its fingerprint row (a frozen
    table in the checkpoint) → fc → activation → proj → LayerNorm; the result replaces token 1."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        if config.chem_num_drugs <= 0 or config.chem_fp_dim <= 0:
            raise ValueError(
                "the chemical encoder's table size is unknown: set chem_num_drugs and chem_fp_dim from the "
                "checkpoint's chem_encoder.embedding.weight"
            )
        self.embedding = nn.Embedding(
            config.chem_num_drugs, config.chem_fp_dim, padding_idx=config.chem_padding_idx
        )
        self.fc = nn.Linear(config.chem_fp_dim, config.d_model)
        self.activation = _activation(config.chem_activation)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)  # upstream builds it with use_norm=True always

    def forward(self, drug_ids: Tensor) -> Tensor:
        return self.norm(self.proj(self.activation(self.fc(self.embedding(drug_ids)))))


class ExprDecoder(nn.Module):
    """Each token's predicted expression (bin) from its final output: linear layers with the activation,
    then a projection to one value."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.linear_layers = nn.ModuleList(
            nn.Linear(config.d_model, config.d_model) for _ in range(config.expression_decoder_layers)
        )
        self.out_proj = nn.Linear(config.d_model, config.expression_decoder_outputs)
        self.activation = _activation(config.expression_decoder_activation)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.linear_layers:
            x = self.activation(layer(x))
        predicted = self.out_proj(x)
        return predicted.squeeze(-1) if predicted.shape[-1] == 1 else predicted


class MVCDecoder(nn.Module):
    """Masked value prediction from the cell embedding: each gene's query (from its gene embedding alone,
    so any vocabulary gene can be asked) dotted with the cell embedding through W."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.gene2query = nn.Linear(config.d_model, config.d_model)
        self.W = nn.Linear(config.d_model, config.d_model, bias=False)
        self.query_activation = _activation(config.mvc_query_activation or "sigmoid")
        self.scaled = config.mvc_scaled_dot_product

    def forward(self, cell_emb: Tensor, gene_embs: Tensor) -> Tensor:
        """cell_emb (B, d), gene_embs (B, G, d) -> (B, G)."""
        return torch.bmm(self.gene_queries(gene_embs), cell_emb.unsqueeze(2)).squeeze(2)

    def gene_queries(self, gene_embs: Tensor) -> Tensor:
        """(…, d) gene embeddings -> their queries: a gene's prediction is its query · the cell embedding."""
        queries = self.W(self.query_activation(self.gene2query(gene_embs)))
        return queries / math.sqrt(queries.shape[-1]) if self.scaled else queries


@dataclass
class ForwardOutput:
    cell_emb: Tensor  # (B, d): CLS row of the final normalised output
    final: Tensor  # (B, S, d): final normalised output (upstream "gene_emb")
    captured: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # layer -> hook -> (B, S, width)
    expr_preds: Tensor | None = None  # (B, S): the expression decoder's prediction, with decode=True
    mvc_preds: Tensor | None = None  # (B, S): the MVC decoder's prediction of each token's gene
    gene_embs: Tensor | None = None  # (B, S, d): the gene encoder's output (the MVC queries' input)


class TXModel(nn.Module):
    """tahoe-x1 for inference. Load weights with `load_tahoe_state_dict`."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        if config.cell_emb_style != "cls":
            raise ValueError(
                f"cell_emb_style {config.cell_emb_style!r} is not used by released tahoe-x1 models"
            )
        self.config = config
        self.gene_encoder = GeneEncoder(config)
        self.flag_encoder = nn.Embedding(2, config.d_model)
        self.expression_encoder = ContinuousValueEncoder(config)
        if config.use_chem_token:
            self.chem_encoder = ChemEncoder(config)
        self.transformer_encoder = TXEncoder(config)
        self.expression_decoder = ExprDecoder(config)
        if config.mvc_query_activation is not None:
            self.mvc_decoder = MVCDecoder(config)

    def forward(
        self,
        genes: Tensor,
        values: Tensor,
        key_padding_mask: Tensor,
        capture: Mapping[int, set[str]] | None = None,
        run_to_end: bool = True,
        drug_ids: Tensor | None = None,
        gen_mask: Tensor | None = None,
        edit: Mapping[int, Edits] | None = None,
        decode: bool = False,
    ) -> ForwardOutput:
        """`key_padding_mask` is True for real tokens (as upstream). `capture`: layer -> hook names;
        `edit`: layer -> hook name -> function giving the value the rest of the pass sees.

        With `run_to_end=False` the pass stops after the last captured layer (cell_emb and final
        are then empty), which is all extraction needs. A model with the drug token (`use_chem_token`)
        takes `drug_ids` (B,) and puts the chemical encoder's embedding at position 1, as upstream.
        `gen_mask` (B, S), True at generative positions, and `decode` are described in the module docstring.
        """
        capture, edit = capture or {}, edit or {}
        unknown = {hook for hooks in capture.values() for hook in hooks} - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook point(s) {sorted(unknown)}; choose from {', '.join(HOOKS)}")
        x, gene_embs = self._embed(genes, values, gen_mask, drug_ids)
        attend = _attention_mask(key_padding_mask, gen_mask)
        last = max(capture) if (capture and not run_to_end) else len(self.transformer_encoder.layers) - 1
        captured: dict[int, dict[str, Tensor]] = {}
        for index, block in enumerate(self.transformer_encoder.layers):
            x, kept = block(x, attend, capture.get(index), edit.get(index))
            if kept:
                captured[index] = kept
            if index == last:
                break
        if last < len(self.transformer_encoder.layers) - 1:
            empty = x.new_empty(0)
            return ForwardOutput(cell_emb=empty, final=empty, captured=captured)
        output = self._finish(x, captured, gene_embs)
        if decode:
            output.expr_preds = self.expression_decoder(output.final)
            output.mvc_preds = self.predict_genes(output.cell_emb, gene_embs)
        return output

    def resume(self, hidden: Tensor, key_padding_mask: Tensor, after_layer: int) -> ForwardOutput:
        """The rest of an inference pass from the residual stream after block `after_layer` (its
        `resid_post`, as captured, or edited): the later blocks, the final norm, the cell embedding."""
        attend = _attention_mask(key_padding_mask, None)
        x = hidden
        for block in self.transformer_encoder.layers[after_layer + 1 :]:
            x, _ = block(x, attend)
        return self._finish(x, {}, None)

    def _finish(
        self, x: Tensor, captured: dict[int, dict[str, Tensor]], gene_embs: Tensor | None
    ) -> ForwardOutput:
        if self.transformer_encoder.use_norm:
            x = self.transformer_encoder.norm(x)
        return ForwardOutput(cell_emb=x[:, 0, :], final=x, captured=captured, gene_embs=gene_embs)

    def predict_genes(self, cell_emb: Tensor, gene_embs: Tensor) -> Tensor:
        """The MVC decoder's predicted expression of any genes (B, G, d embeddings) for each cell (B, d)."""
        if self.config.mvc_query_activation is None:
            raise ValueError("this model has no MVC decoder (its config has no `mvc` section)")
        return self.mvc_decoder(cell_emb, gene_embs)

    def _embed(
        self, genes: Tensor, values: Tensor, gen_mask: Tensor | None, drug_ids: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Token inputs (B, S, d) and the gene embeddings alone. Generative positions lose their
        expression input and get the flag embedding; at inference there are none."""
        gene_embs = self.gene_encoder(genes)
        value_embs = self.expression_encoder(values.to(self.flag_encoder.weight.dtype))
        x = gene_embs + value_embs
        if gen_mask is not None:
            flag = self.flag_encoder.weight[1]
            x = gene_embs + value_embs.masked_fill(gen_mask[..., None], 0.0) + gen_mask[..., None] * flag
        if self.config.use_chem_token:
            if drug_ids is None:
                raise ValueError("this model runs with the drug token at position 1: pass drug_ids")
            drug = self.chem_encoder(drug_ids).to(x.dtype)
            x = torch.cat([x[:, :1], drug[:, None, :], x[:, 2:]], dim=1)
        return x, gene_embs


def _attention_mask(key_padding_mask: Tensor, gen_mask: Tensor | None) -> Tensor:
    """True where a query may attend to a key: real keys only; with generative positions, every query
    sees the perceptual keys, and a generative query also itself (upstream's `_make_mask`)."""
    attend = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if gen_mask is None or not bool(gen_mask.any()):
        return attend
    itself = torch.eye(gen_mask.shape[1], dtype=torch.bool, device=gen_mask.device)
    allowed = (~gen_mask)[:, None, :] | (gen_mask[:, :, None] & itself)  # (B, S, S)
    return attend & allowed[:, None, :, :]


def load_tahoe_state_dict(model: TXModel, state_dict: Mapping[str, Tensor]) -> None:
    """Load official weights (keys with or without ComposerTX's `model.` prefix), strictly.

    Chemical-encoder weights are dropped when the model runs without the drug token; any other
    missing or unexpected key is an error naming the keys, so a wrong checkpoint never loads silently.
    """
    cleaned = {key.removeprefix("model."): value for key, value in state_dict.items()}
    if model.config.chem_dropped:
        cleaned = {key: value for key, value in cleaned.items() if not key.startswith("chem_encoder.")}
    result = model.load_state_dict(cleaned, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            "the checkpoint does not match the tahoe-x1 architecture of its config: "
            f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )


def official_init_(model: TXModel) -> None:
    """Re-initialise every parameter as upstream's TXModel does at construction (llm-foundry's
    `generic_param_init_fn_` with the model's init_config): Linear weights by the configured init
    (kaiming_normal_ fan_in/relu by default) and zero biases; attention `out_proj` (llm-foundry's
    `_is_residual`) divided by sqrt(2 * n_layers); embeddings by the same init (or emb_init_std /
    emb_init_uniform_lim) with the padding row zeroed; LayerNorms at 1 and 0. The fused Wqkv is
    initialised per head slice upstream; with a fan-in init every slice has the same fan-in, so the
    distribution is the same. Seed the global torch generator first for reproducible weights.
    """
    cfg = model.config.init_config
    if cfg["name"] == "kaiming_normal_":
        init_fn = partial(
            nn.init.kaiming_normal_,
            a=cfg["init_gain"],
            mode=cfg["fan_mode"],
            nonlinearity=cfg["init_nonlinearity"],
        )
    elif cfg["name"] == "xavier_uniform_":
        init_fn = partial(nn.init.xavier_uniform_, gain=cfg["init_gain"])
    else:
        raise ValueError(
            f"init_config name {cfg['name']!r} is not reproduced here; random-init supports kaiming_normal_ "
            "and xavier_uniform_ (the ones released tahoe-x1 configs use)"
        )
    divide = cfg["init_div_is_residual"]
    residual_div = math.sqrt(2 * model.config.n_layers) if divide is True else float(divide or 1.0)
    residual = {id(block.self_attn.out_proj) for block in model.transformer_encoder.layers}
    # upstream marks the drug fingerprint table skip_init: it keeps the pretrained table
    chem = getattr(model, "chem_encoder", None)
    skip = {id(chem.embedding)} if chem is not None else set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                init_fn(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if id(module) in residual:
                    module.weight.div_(residual_div)
            elif isinstance(module, nn.Embedding) and id(module) not in skip:
                _init_embedding(module, cfg, init_fn)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def _init_embedding(module: nn.Embedding, cfg: Mapping, init_fn: Callable[[Tensor], Tensor]) -> None:
    if cfg.get("emb_init_std") is not None:
        nn.init.normal_(module.weight, mean=0.0, std=float(cfg["emb_init_std"]))
    elif cfg.get("emb_init_uniform_lim") is not None:
        limit = cfg["emb_init_uniform_lim"]
        low, high = (-limit, limit) if isinstance(limit, int | float) else limit
        nn.init.uniform_(module.weight, a=low, b=high)
    else:
        init_fn(module.weight)
    if module.padding_idx is not None:
        module.weight[module.padding_idx].fill_(0)
