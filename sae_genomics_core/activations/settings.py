"""What the activations stage extracts and how: the settings and their defaults, defined once (the
Dagster model resource derives from them). No torch import, so the Dagster definitions load fast."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sae_genomics_core.errors import SettingsError
from sae_genomics_core.model.hooks import HOOKS

# the residual stream and the MLP output: what SAEs are trained on; attn_out and mlp_hidden on request
DEFAULT_HOOKS = ("resid_post", "mlp_out")
STORAGE_DTYPE_NAMES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True, kw_only=True)
class ExtractionSettings:
    layers: tuple[int, ...] | None = None  # None: every layer of the model
    hooks: tuple[str, ...] = DEFAULT_HOOKS
    batch_size: int = 16
    max_length: int | None = None  # None: the model's collator max_length
    storage_dtype: str = "bfloat16"
    shard_cells: int = 2048
    seed: int = 0
    compute_dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU

    def for_model(self, n_layers: int) -> ExtractionSettings:
        """These settings with the layers spelled out (None: all of the model's)."""
        return self if self.layers is not None else replace(self, layers=tuple(range(n_layers)))

    def validate(self, n_layers: int) -> None:
        if self.layers is None:
            raise ValueError("layers unset: call for_model(n_layers) first")
        bad_layers = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if not self.layers or bad_layers:
            raise SettingsError(
                f"layers {list(self.layers)} are not all within 0..{n_layers - 1} of the model"
            )
        bad_hooks = set(self.hooks) - set(HOOKS)
        if not self.hooks or bad_hooks:
            raise SettingsError(f"hooks {sorted(bad_hooks) or '[]'} unknown; choose from {', '.join(HOOKS)}")
        if self.storage_dtype not in STORAGE_DTYPE_NAMES:
            raise SettingsError(
                f"storage dtype {self.storage_dtype!r}: use one of {', '.join(STORAGE_DTYPE_NAMES)}"
            )
