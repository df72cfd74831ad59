"""How an SAE is trained: the settings and their defaults, defined once (the Dagster config derives from
them). Light on purpose: no torch import, so the Dagster definitions load fast."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sae_genomics_core.errors import SettingsError

REAL_MODEL_K = 64  # active latents per token for the published models
RANDOM_WEIGHTS_K = 16  # the tiny random-weight model: d_model 64 leaves room for fewer
REAL_MODEL_SEEDS, RANDOM_WEIGHTS_SEEDS = 3, 2  # SAEs trained per layer to measure seed stability


def default_k(random_weights: bool) -> int:
    """Active latents per token when the run sets none: by the model the activations came from."""
    return RANDOM_WEIGHTS_K if random_weights else REAL_MODEL_K


@dataclass(frozen=True, kw_only=True)
class SaeTrainingConfig:
    expansion_factor: int = 8
    k: int = REAL_MODEL_K
    training_tokens: int = 1_000_000
    batch_size: int = 4096
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2^14) (Gao et al.)
    warmup_steps: int | None = None  # None: warmup_fraction of the steps
    warmup_fraction: float = 0.05
    lr_end_fraction: float = 0.1
    seed: int = 0
    aux_coefficient: float = 1 / 32
    # a latent silent this many tokens is dead (AuxK trains it); None: dead_window_fraction of the
    # training tokens, at most dead_window_max_tokens and at least one batch
    dead_window_tokens: int | None = None
    dead_window_fraction: float = 0.1
    dead_window_max_tokens: int = 1_000_000
    dense_threshold: float = 0.1  # a latent firing on more tokens than this is "dense"
    holdout_fraction: float = 0.1
    log_every_steps: int = 50
    state_every_steps: int = 200
    eval_tokens: int = 50_000
    stats_tokens: int = 100_000
    b_dec_init: str = "geometric_median"  # or "mean"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("warmup_fraction", "dead_window_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise SettingsError(f"{name} must be in (0, 1]; got {getattr(self, name)}")
        for name in ("training_tokens", "batch_size", "dead_window_max_tokens"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a positive number of tokens; got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise SettingsError(
                f"warmup_steps must be ≥ 0 (or None to scale it to the run); got {self.warmup_steps}"
            )
        if self.dead_window_tokens is not None and self.dead_window_tokens < 1:
            raise SettingsError(
                f"dead_window_tokens must be ≥ 1 (or None to scale it to the run); got {self.dead_window_tokens}"
            )

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FidelitySettings:
    """Loss recovered (sae_genomics_core.sae.fidelity): on how many held-out cells, and how masked."""

    cells: int = 256  # held-out cells evaluated, at most
    mask_fraction: float = 0.15  # of each cell's gene tokens hidden; upstream's mlm_probability default
    batch_cells: int = 16
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EffectSettings:
    """Feature effects (sae_genomics_core.sae.effects): which interventions, on how many cells."""

    # steering adds strength × the feature's mean activation (when it fires) along its decoder direction;
    # negative strengths suppress
    strengths: tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0)
    cells: int = 16  # held-out cells where the feature is active, and as many where it is not
    evaluated_cells: int = 512  # held-out cells encoded to find them (and the cell-type centroids)
    max_features: int | None = None  # None: every feature that fires on an evaluated cell
    max_features_cpu: int = 8  # without a GPU: those whose active and silent cells are most balanced
    top_genes: int = 10  # genes kept per feature × intervention, up and down
    batch_rows: int = 256  # cell copies per forward pass
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class SaeStageSettings:
    """The SAE stage of one dataset × layer: which activations it trains on, how, and what its checks ask."""

    hook: str = "resid_post"  # must have been extracted
    k: int | None = None  # active latents per token; None: by the model (default_k)
    training: SaeTrainingConfig = field(default_factory=SaeTrainingConfig)
    explained_variance_floor: float = 0.7  # check: held-out explained variance at least this
    dead_fraction_ceiling: float = 0.1  # check: at most this fraction of latents never fire
    # check: loss recovered against zero-ablation of the layer, for both heads, at least this
    loss_recovered_floor: float = 0.8
    # training seeds of the stability check (the checkpoint's and the next ones); None: by the model
    stability_seeds: int | None = None
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)

    def seeds_for(self, random_weights: bool) -> int:
        """Seeds of the stability check: 3 for real models, 2 for random-weight ones (the demo)."""
        if self.stability_seeds is not None:
            return self.stability_seeds
        return RANDOM_WEIGHTS_SEEDS if random_weights else REAL_MODEL_SEEDS

    def training_for(self, random_weights: bool) -> SaeTrainingConfig:
        """The training config of a run on activations of a model with (or without) random weights."""
        return replace(self.training, k=self.k if self.k is not None else default_k(random_weights))
