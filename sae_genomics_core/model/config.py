"""tahoe-x1 configuration, read from the published model_config.yml and collator_config.yml.

Defaults follow the official TXModel / DataCollator where a key is absent from the YAML.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

# tahoe_x1.model.blocks.init_config_defaults: llm-foundry's parameter init when model_config has no init_config
INIT_CONFIG_DEFAULTS: dict[str, Any] = {
    "name": "kaiming_normal_",
    "fan_mode": "fan_in",
    "init_nonlinearity": "relu",
    "init_div_is_residual": True,
    "emb_init_std": None,
    "emb_init_uniform_lim": None,
    "init_std": None,
    "init_gain": 0.0,
}


@dataclass(frozen=True)
class TahoeConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    kv_n_heads: int
    expansion_ratio: int = 4
    activation: str = "gelu"
    norm_scheme: str = "pre"
    norm_eps: float = 1e-5
    use_glu: bool = False
    gene_encoder_norm: bool = False
    expression_activation: str = "relu"
    expression_norm: bool = False
    expression_max_value: float = 512.0
    expression_decoder_layers: int = 2
    expression_decoder_outputs: int = 1
    expression_decoder_activation: str = "leaky_relu"
    mvc_query_activation: str | None = "sigmoid"  # None: no MVC decoder
    mvc_scaled_dot_product: bool = False
    cell_emb_style: str = "cls"
    # collator
    pad_token_id: int = 0
    pad_value: float = -2.0
    num_bins: int = 51
    max_length: int = 1024
    keep_first_n_tokens: int = 1
    use_chem_token: bool = False
    chem_dropped: bool = False  # the checkpoint had a chemical token that inference leaves out
    # chemical encoder (model_config `chemical_encoder`; the 3B model): drug embedding table and activation
    chem_num_drugs: int = 0  # 0: unknown until the checkpoint's chem_encoder.embedding.weight is read
    chem_fp_dim: int = 0
    chem_padding_idx: int = 0
    chem_activation: str = "leaky_relu"
    init_config: dict[str, Any] = field(default_factory=lambda: dict(INIT_CONFIG_DEFAULTS))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def d_ffn(self) -> int:
        return self.d_model * self.expansion_ratio

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dicts(cls, model: dict[str, Any], collator: dict[str, Any]) -> TahoeConfig:
        attn = model.get("attn_config") or {}
        norm = model.get("norm_config") or {}
        gene_encoder = model.get("gene_encoder") or {}
        expression = model.get("expression_encoder") or {}
        decoder = model.get("expression_decoder") or {}
        mvc = model.get("mvc")
        chem = model.get("chemical_encoder") or {}
        n_heads = int(model["n_heads"])
        if attn.get("attn_type", "grouped_query_attention") not in {
            "grouped_query_attention",
            "multihead_attention",
        }:
            raise ValueError(f"unsupported attention type {attn.get('attn_type')!r} in model_config.yml")
        if attn.get("qk_ln") or attn.get("qk_gn") or attn.get("clip_qkv"):
            raise ValueError(
                "qk_ln / qk_gn / clip_qkv are not used by any released tahoe-x1 model and are not supported"
            )
        if expression.get("input_emb_style", "continuous") != "continuous":
            raise ValueError("only the 'continuous' expression encoder of tahoe-x1 is supported")
        return cls(
            vocab_size=int(model["vocab_size"]),
            d_model=int(model["d_model"]),
            n_layers=int(model["n_layers"]),
            n_heads=n_heads,
            kv_n_heads=int(attn.get("kv_n_heads", n_heads)),
            expansion_ratio=int(model.get("expansion_ratio", 4)),
            activation=str(model.get("transformer_activation", "gelu")),
            norm_scheme=str(model.get("norm_scheme", "pre")),
            norm_eps=float(norm.get("eps", 1e-5)),
            use_glu=bool(model.get("use_glu", False)),
            gene_encoder_norm=bool(gene_encoder.get("use_norm", False)),
            expression_activation=str(expression.get("activation", "relu")),
            expression_norm=bool(expression.get("use_norm", False)),
            expression_max_value=float(expression.get("max_value", 512)),
            expression_decoder_layers=int(decoder.get("n_layers", 2)),
            expression_decoder_outputs=int(decoder.get("n_outputs", 1)),
            expression_decoder_activation=str(decoder.get("activation", "leaky_relu")),
            mvc_query_activation=None if mvc is None else str(mvc.get("query_activation", "sigmoid")),
            mvc_scaled_dot_product=bool((mvc or {}).get("scaled_dot_product", False)),
            cell_emb_style=str(model.get("cell_emb_style", "cls")),
            pad_token_id=int(collator["pad_token_id"]),
            pad_value=float(collator.get("pad_value", -2)),
            num_bins=int(collator.get("num_bins", 51)),
            max_length=int(collator.get("max_length", 1024)),
            keep_first_n_tokens=int(collator.get("keep_first_n_tokens", 1)),
            use_chem_token=bool(collator.get("use_chem_token", False)),
            init_config={**INIT_CONFIG_DEFAULTS, **(model.get("init_config") or {})},
            chem_num_drugs=int(chem.get("num_drugs") or 0),
            chem_fp_dim=int(chem.get("fp_dim") or 0),
            chem_padding_idx=int(chem.get("padding_idx", 0)),
            chem_activation=str(chem.get("activation", "leaky_relu")),
        )

    @classmethod
    def from_files(cls, model_config_path: str, collator_config_path: str) -> TahoeConfig:
        with open(model_config_path) as handle:
            model = yaml.safe_load(handle)
        with open(collator_config_path) as handle:
            collator = yaml.safe_load(handle)
        return cls.from_dicts(model, collator)

    def without_chem_token(self) -> TahoeConfig:
        """Inference without the drug token of the 3B model.

        The drug token sat at position 1 and was one of the `keep_first_n_tokens` (2) that are never
        binned nor sampled away. Without it only <cls> is kept first; leaving the count at 2 (as the
        official loader does) would leave the first real gene of every cell unbinned.
        """
        if not self.use_chem_token:
            return self
        return replace(
            self,
            use_chem_token=False,
            chem_dropped=True,
            keep_first_n_tokens=max(1, self.keep_first_n_tokens - 1),
        )
