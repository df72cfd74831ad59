"""TopK sparse autoencoders trained with sae-lens's TopKTrainingSAE, the way the best recipes do it.

- Inputs are mean-centred and scaled so that E‖x − μ‖² = d_in; μ and the scale travel with the
  checkpoint and are applied at encode time.
- b_dec starts at the geometric median of the (normalised) data; the encoder starts as the decoder's
  transpose; decoder rows have unit norm after every step, and the gradient component parallel to
  them is removed before the step.
- AuxK is engaged: latents that have not fired for the dead window form the dead mask passed to
  sae-lens's loss (a `None` mask would silently turn AuxK off). The window and the LR warm-up scale
  with the run's length (`resolve_schedule`), so short runs engage AuxK too; a run too short for any
  window is reported in `TrainingOutcome.warnings` and as a Python warning.
- Adam with linear warm-up and cosine decay, gradient clipping at 1.0, a seed that makes a CPU run
  reproducible; MSE, explained variance and L0 on held-out cells every `log_every_steps`. The log's
  `dead_fraction` is the windowed estimate (latents silent for the last dead window of the training
  stream; 0 until one window has passed); the final `dead_fraction` is measured after training by a
  streaming pass over every token (held-out and training): a latent is dead if it never fires.
  Resumable from periodic state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sae_genomics_core.sae.settings import SaeTrainingConfig

logger = logging.getLogger(__name__)


class TokenSource(Protocol):
    """Where training tokens come from: an activation store (held-out cells apart) or memory."""

    d_in: int

    def train_batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]: ...

    def heldout_batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...

    def eval_tokens(self, limit: int) -> torch.Tensor: ...


@dataclass
class TensorSource:
    """Tokens in memory (tests, benchmarks): rows [0, n_eval) are held out."""

    tokens: torch.Tensor
    n_eval: int

    @property
    def d_in(self) -> int:
        return int(self.tokens.shape[1])

    def train_batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        train = self.tokens[self.n_eval :]
        generator = torch.Generator().manual_seed(seed)
        yield from train[torch.randperm(train.shape[0], generator=generator)].split(batch_size)

    def heldout_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        yield from self.tokens[: self.n_eval].split(batch_size)

    def eval_tokens(self, limit: int) -> torch.Tensor:
        return self.tokens[: min(self.n_eval, limit)]


@dataclass
class StoreSource:
    """One site of an activation store; a seeded `holdout_fraction` of its cells is held out."""

    store: Any
    layer: int
    hook: str
    holdout_fraction: float
    seed: int
    held_out_cells: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        cells = np.concatenate(
            [self.store.tokens(s["name"])["cls_cell_index"] for s in self.store.manifest["shards"]]
        )
        generator = np.random.default_rng(self.seed)
        n_held = max(1, round(self.holdout_fraction * cells.size))
        self.held_out_cells = np.sort(generator.choice(cells, size=n_held, replace=False))

    @property
    def d_in(self) -> int:
        return int(self.store.manifest["widths"][f"L{self.layer}.{self.hook}"])

    def train_batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        return self.store.iter_batches(
            self.layer, self.hook, batch_size, seed=seed, exclude_cells=self.held_out_cells
        )

    def heldout_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return self.store.iter_batches(
            self.layer, self.hook, batch_size, seed=self.seed, cells=self.held_out_cells
        )

    def eval_tokens(self, limit: int) -> torch.Tensor:
        batches, total = [], 0
        for batch in self.heldout_batches(8192):
            batches.append(batch)
            total += len(batch)
            if total >= limit:
                break
        return torch.cat(batches)[:limit]


def geometric_median(points: torch.Tensor, iterations: int = 100, tolerance: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm (float64)."""
    x = points.double()
    median = x.mean(dim=0)
    for _ in range(iterations):
        distances = (x - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / distances
        updated = (weights[:, None] * x).sum(dim=0) / weights.sum()
        if (updated - median).norm() < tolerance * (1 + median.norm()):
            median = updated
            break
        median = updated
    return median.float()


@dataclass
class Normalizer:
    mean: torch.Tensor
    scale: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.scale

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.mean.to(x.device)

    @classmethod
    def fit(cls, sample: torch.Tensor) -> tuple[Normalizer, float]:
        """Mean and scale of a sample, and γ = ‖μ‖/‖σ‖ (activation-outlier severity, a dead-latent risk)."""
        x = sample.double()
        mean = x.mean(dim=0)
        centred = x - mean
        scale = math.sqrt(float(centred.pow(2).sum(dim=1).mean()) / x.shape[1]) or 1.0
        gamma = float(mean.norm() / centred.std(dim=0).norm().clamp_min(1e-12))
        return cls(mean.float(), scale), gamma


@dataclass
class TrainingOutcome:
    sae: Any  # sae_lens TopKTrainingSAE
    normalizer: Normalizer
    log: list[dict[str, float]]
    final: dict[str, float]
    gamma: float
    steps: int
    tokens_seen: int
    resumed_from_step: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. AuxK could not engage


@dataclass(frozen=True)
class Schedule:
    """The run's length and what scales with it: the LR warm-up and the AuxK dead window."""

    total_steps: int
    batch_size: int
    warmup_steps: int
    dead_window_tokens: int
    warnings: tuple[str, ...] = ()

    @property
    def auxk_can_engage(self) -> bool:
        # the mask is read before each step: by the last one a latent can have missed (steps − 1) batches
        return self.dead_window_tokens <= (self.total_steps - 1) * self.batch_size


def resolve_schedule(config: SaeTrainingConfig) -> Schedule:
    """Warm-up and dead window for this run: explicit values when they fit the run, else scaled to it."""
    total_steps = max(1, config.training_tokens // config.batch_size)
    notes: list[str] = []
    warmup = _warmup_steps(config, total_steps, notes)
    window = _dead_window_tokens(config, total_steps, notes)
    schedule = Schedule(total_steps, config.batch_size, warmup, window)
    if not schedule.auxk_can_engage:
        notes.append(
            f"AuxK cannot engage: the run ({total_steps} step(s) of {config.batch_size} tokens) is too short for a "
            f"dead window ({window:,} tokens, at least one batch), so dead latents are never revived; train on more "
            "tokens (training_tokens) or use smaller batches (batch_size)"
        )
    return Schedule(total_steps, config.batch_size, warmup, window, tuple(notes))


def _warmup_steps(config: SaeTrainingConfig, total_steps: int, notes: list[str]) -> int:
    scaled = max(1, round(config.warmup_fraction * total_steps))
    if config.warmup_steps is None or config.warmup_steps < total_steps:
        return scaled if config.warmup_steps is None else config.warmup_steps
    notes.append(
        f"warmup_steps={config.warmup_steps} is not shorter than the run ({total_steps} steps), so the learning "
        f"rate would never reach its peak; using {scaled} ({config.warmup_fraction:g} of the steps)"
    )
    return scaled


def _dead_window_tokens(config: SaeTrainingConfig, total_steps: int, notes: list[str]) -> int:
    scaled = min(config.dead_window_max_tokens, round(config.dead_window_fraction * config.training_tokens))
    scaled = max(config.batch_size, scaled)  # silence is counted per batch
    usable = (total_steps - 1) * config.batch_size  # the longest silence the last step's mask can see
    if config.dead_window_tokens is None or config.dead_window_tokens <= usable:
        return scaled if config.dead_window_tokens is None else config.dead_window_tokens
    notes.append(
        f"dead_window_tokens={config.dead_window_tokens:,} does not fit in the run ({config.training_tokens:,} "
        f"training tokens), so AuxK would never engage; using {scaled:,} ({config.dead_window_fraction:g} of them)"
    )
    return scaled


def build_sae(d_in: int, config: SaeTrainingConfig) -> Any:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    sae_config = TopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_in * config.expansion_factor,
        k=config.k,
        device=config.device,
        dtype="float32",
        aux_loss_coefficient=config.aux_coefficient,
        # we keep decoder rows at unit norm ourselves, so no rescaling by their norm is needed
        rescale_acts_by_decoder_norm=False,
        decoder_init_norm=1.0,
        apply_b_dec_to_input=True,
        normalize_activations="none",
    )
    return TopKTrainingSAE(sae_config)


@torch.no_grad()
def _initialise(sae: Any, sample: torch.Tensor, how: str) -> None:
    sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True)
    sae.W_enc.data = sae.W_dec.data.T.clone().contiguous()
    center = geometric_median(sample) if how == "geometric_median" else sample.mean(dim=0)
    sae.b_dec.data = center.to(sae.b_dec.device)


@torch.no_grad()
def _remove_parallel_gradient(sae: Any) -> None:
    if sae.W_dec.grad is not None:
        direction = sae.W_dec.data
        sae.W_dec.grad -= (sae.W_dec.grad * direction).sum(dim=1, keepdim=True) * direction


def lr_lambda(schedule: Schedule, lr_end_fraction: float) -> Callable[[int], float]:
    warmup, total_steps = schedule.warmup_steps, schedule.total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return lr_end_fraction + (1 - lr_end_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def evaluate(sae: Any, tokens: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """MSE, explained variance (float64, streaming), L0 and the firing count per latent on `tokens`."""
    squared_error = total_variance = 0.0
    l0 = 0.0
    mean = tokens.double().mean(dim=0)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for batch in tokens.split(batch_size):
        batch = batch.to(sae.W_dec.device)
        acts = sae.encode(batch)
        recon = sae.decode(acts)
        squared_error += float((recon - batch).double().pow(2).sum())
        total_variance += float((batch.double() - mean.to(batch.device)).pow(2).sum())
        active = acts > 0
        l0 += float(active.sum())
        fired += active.sum(dim=0).cpu()
    n = tokens.shape[0]
    return {
        "mse": squared_error / (n * tokens.shape[1]),
        "explained_variance": 1.0 - squared_error / total_variance if total_variance > 0 else float("nan"),
        "l0": l0 / n,
        "eval_dead_fraction": float((fired == 0).float().mean()),
    }


@torch.no_grad()
def count_fires(
    sae: Any, batches: Iterable[torch.Tensor], normalizer: Normalizer
) -> tuple[torch.Tensor, int]:
    """Tokens each latent fires on over a stream of raw batches, and the tokens seen (one batch in memory)."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    n_tokens = 0
    for raw in batches:
        acts = sae.encode(normalizer(raw.to(sae.W_dec.device)))
        fired += (acts > 0).sum(dim=0).cpu()
        n_tokens += raw.shape[0]
    return fired, n_tokens


def full_pass_dead_fractions(
    sae: Any, source: TokenSource, normalizer: Normalizer, batch_size: int
) -> dict[str, float]:
    """Latents that never fire in one streamed pass over every token: held-out cells' and training cells'.

    `dead_fraction` counts latents silent on all tokens, `dead_fraction_heldout` those silent on the
    held-out tokens (a latent that fires only on training tokens may have memorised them).
    """
    heldout, n_heldout = count_fires(sae, source.heldout_batches(batch_size), normalizer)
    train, n_train = count_fires(sae, source.train_batches(batch_size, seed=0), normalizer)
    return {
        "dead_fraction": float(((heldout + train) == 0).float().mean()),
        "dead_fraction_heldout": float((heldout == 0).float().mean()) if n_heldout else float("nan"),
        "dead_pass_tokens": n_heldout + n_train,
    }


def train_sae(
    source: TokenSource,
    config: SaeTrainingConfig,
    *,
    state_path: Path | None = None,
    stop_after_steps: int | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainingOutcome:
    """Train on `source`; with `state_path`, save resumable state periodically and resume from it.

    `stop_after_steps` ends the run early (as a crash would), for tests of resumption.
    """
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(config.seed)
    d_in = source.d_in
    d_sae = d_in * config.expansion_factor
    schedule = resolve_schedule(config)
    for note in schedule.warnings:
        logger.warning(note)
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    total_steps, dead_window = schedule.total_steps, schedule.dead_window_tokens
    notes = list(schedule.warnings)
    eval_raw = source.eval_tokens(config.eval_tokens)
    stats_sample = _take(
        source.train_batches(config.batch_size, seed=config.seed + 10_000), config.stats_tokens
    )
    normalizer, gamma = Normalizer.fit(stats_sample)
    sae = build_sae(d_in, config)
    _initialise(sae, normalizer(stats_sample[:4096]).to(config.device), config.b_dec_init)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(d_sae), betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, config.lr_end_fraction))
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=config.device)
    fires_in_window = torch.zeros(d_sae, dtype=torch.long, device=config.device)
    window_tokens = 0
    step, tokens_seen, epoch, batches_in_epoch, auxk_steps = 0, 0, 0, 0, 0
    log: list[dict[str, float]] = []
    resumed_from = 0
    if state_path is not None and state_path.exists():
        saved = torch.load(state_path, weights_only=False)
        if saved["config"] != config.to_dict() or saved["d_in"] != d_in:
            raise ValueError(f"{state_path} belongs to a run with other settings; remove it to start afresh")
        sae.load_state_dict(saved["sae"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        normalizer = Normalizer(saved["mean"], saved["scale"])
        tokens_since_fired, log = saved["tokens_since_fired"].to(config.device), saved["log"]
        step, tokens_seen, epoch, batches_in_epoch, auxk_steps = (
            saved["step"],
            saved["tokens_seen"],
            saved["epoch"],
            saved["batches_in_epoch"],
            saved["auxk_steps"],
        )
        torch.set_rng_state(saved["rng"])
        resumed_from = step
    eval_tokens = normalizer(eval_raw).to(config.device)
    last_aux = 0.0

    def save_state() -> None:
        if state_path is None:
            return
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "config": config.to_dict(),
                "d_in": d_in,
                "sae": sae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "mean": normalizer.mean,
                "scale": normalizer.scale,
                "tokens_since_fired": tokens_since_fired.cpu(),
                "log": log,
                "step": step,
                "tokens_seen": tokens_seen,
                "epoch": epoch,
                "batches_in_epoch": batches_in_epoch,
                "auxk_steps": auxk_steps,
                "rng": torch.get_rng_state(),
            },
            tmp,
        )
        os.replace(tmp, state_path)

    while step < total_steps:
        batches = source.train_batches(config.batch_size, seed=config.seed + epoch)
        for _ in range(batches_in_epoch):  # resuming: skip what this epoch already consumed
            next(batches, None)
        for raw in batches:
            if step >= total_steps:
                break
            x = normalizer(raw.to(config.device))
            dead_mask = tokens_since_fired >= dead_window
            auxk_steps += int(bool(dead_mask.any()))
            output = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x,
                    coefficients={},
                    dead_neuron_mask=dead_mask,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            _remove_parallel_gradient(sae)
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True)
                fired = (output.feature_acts > 0).sum(dim=0)
                tokens_since_fired += x.shape[0]
                tokens_since_fired[fired > 0] = 0
                fires_in_window += fired
                window_tokens += x.shape[0]
            last_aux = float(output.losses.get("auxiliary_reconstruction_loss", torch.tensor(0.0)).detach())
            step += 1
            batches_in_epoch += 1
            tokens_seen += x.shape[0]
            if step % config.log_every_steps == 0 or step == total_steps:
                row = {
                    "step": step,
                    "tokens_seen": tokens_seen,
                    **evaluate(sae, eval_tokens),
                    "dead_fraction": float(
                        (tokens_since_fired >= dead_window).float().mean()
                    ),  # windowed estimate
                    "dense_fraction": float(
                        (fires_in_window.float() / max(1, window_tokens) > config.dense_threshold)
                        .float()
                        .mean()
                    ),
                    "aux_loss": last_aux,
                    "lr": float(scheduler.get_last_lr()[0]),
                }
                log.append(row)
                fires_in_window.zero_()
                window_tokens = 0
                if on_log is not None:
                    on_log(row)
            if step % config.state_every_steps == 0:
                save_state()
            if stop_after_steps is not None and step - resumed_from >= stop_after_steps:  # a simulated crash
                partial = log[-1] if log else {}
                return TrainingOutcome(
                    sae, normalizer, log, partial, gamma, step, tokens_seen, resumed_from, notes
                )
        else:
            epoch += 1
            batches_in_epoch = 0
    final = {
        **log[-1],
        "dead_fraction_window": log[-1]["dead_fraction"],
        **full_pass_dead_fractions(sae, source, normalizer, config.batch_size),
        "dead_window_tokens": dead_window,
        "warmup_steps": schedule.warmup_steps,
        "auxk_steps": auxk_steps,
    }
    return TrainingOutcome(sae, normalizer, log, final, gamma, step, tokens_seen, resumed_from, notes)


def _take(batches: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    taken, total = [], 0
    for batch in batches:
        taken.append(batch)
        total += len(batch)
        if total >= n:
            break
    if not taken:
        raise ValueError("the activation source has no training tokens")
    return torch.cat(taken)[:n]


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)
