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

`SaeTrainer` holds one run (its steps, logging and saved state); `train_sae` builds one and fits it.
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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from sae_genomics_core.sae.settings import SaeTrainingConfig

if TYPE_CHECKING:
    from sae_lens.saes.sae import TrainStepOutput

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

    @property
    def n_train_tokens(self) -> int:
        """About the tokens of the cells not held out (the training pool): the store's tokens times the
        share of cells trained on (reading every token's cell would cost a pass over the store)."""
        n_cells = sum(int(shard["n_cells"]) for shard in self.store.manifest["shards"])
        kept = 1.0 - self.held_out_cells.size / max(1, n_cells)
        return round(int(self.store.manifest["n_tokens"]) * kept)

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


MANY_PASSES = 10  # more passes than this over the training tokens: the SAE can memorise them


def _passes_note(source: Any, config: SaeTrainingConfig) -> list[str]:
    """A warning when training_tokens asks for many passes over a small training pool."""
    pool = getattr(source, "n_train_tokens", None)
    if not pool or config.training_tokens <= MANY_PASSES * pool:
        return []
    return [
        f"training makes {config.training_tokens / pool:.0f} passes over {pool:,} training tokens "
        f"(training_tokens {config.training_tokens:,}): with d_sae {source.d_in * config.expansion_factor:,} "
        "latents the SAE can memorise them; register more cells, or lower training_tokens "
        f"(at most about {MANY_PASSES * pool:,})"
    ]


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


class SaeTrainer:
    """One training run on `source`: the SAE, its optimiser and LR schedule, and the AuxK firing bookkeeping.

    Construction seeds torch, fits the normalizer and initialises the SAE; with `state_path`, state is saved
    every `state_every_steps` and an existing state file is resumed from. `on_log` receives each log row.
    """

    def __init__(
        self,
        source: TokenSource,
        config: SaeTrainingConfig,
        *,
        state_path: Path | None = None,
        on_log: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        torch.manual_seed(config.seed)
        self.source, self.config, self.state_path, self.on_log = source, config, state_path, on_log
        self.d_in = source.d_in
        d_sae = self.d_in * config.expansion_factor
        self.schedule = resolve_schedule(config)
        self.notes = [*self.schedule.warnings, *_passes_note(source, config)]
        for note in self.notes:
            logger.warning(note)
            warnings.warn(note, RuntimeWarning, stacklevel=3)  # at the caller of train_sae
        self._eval_raw = source.eval_tokens(config.eval_tokens)
        stats_sample = _take(
            source.train_batches(config.batch_size, seed=config.seed + 10_000), config.stats_tokens
        )
        normalizer, self.gamma = Normalizer.fit(stats_sample)
        self.sae = build_sae(self.d_in, config)
        _initialise(self.sae, normalizer(stats_sample[:4096]).to(config.device), config.b_dec_init)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=config.learning_rate(d_sae), betas=(0.9, 0.999)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.schedule, config.lr_end_fraction)
        )
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=config.device)
        # firing counts since the last log row, for its dense fraction
        self.fires_in_window = torch.zeros(d_sae, dtype=torch.long, device=config.device)
        self.window_tokens = 0
        self.n_training_steps, self.tokens_seen, self.auxk_steps = 0, 0, 0
        self.epoch, self.batches_in_epoch = 0, 0
        self.log: list[dict[str, float]] = []
        self.resumed_from_step = 0
        self.last_aux = 0.0
        self._use_normalizer(normalizer)
        if state_path is not None and state_path.exists():
            self.load_state(state_path)

    def fit(self, stop_after_steps: int | None = None) -> TrainingOutcome:
        """Train to the end of the schedule; `stop_after_steps` ends early (as a crash would)."""
        total_steps = self.schedule.total_steps
        while self.n_training_steps < total_steps:
            for raw in self._epoch_batches():
                if self.n_training_steps >= total_steps:
                    break
                self.step(raw)
                self.batches_in_epoch += 1
                done = self.n_training_steps
                if done % self.config.log_every_steps == 0 or done == total_steps:
                    self._log_metrics()
                if self.state_path is not None and done % self.config.state_every_steps == 0:
                    self.save_state(self.state_path)
                if stop_after_steps is not None and done - self.resumed_from_step >= stop_after_steps:
                    return self._outcome(self.log[-1] if self.log else {})  # a simulated crash
            else:
                self.epoch += 1
                self.batches_in_epoch = 0
        return self._outcome(self._final_metrics())

    def step(self, raw: torch.Tensor) -> TrainStepOutput:
        """One optimisation step on a batch of raw tokens; AuxK sees the latents silent for the dead window."""
        from sae_lens.saes.sae import TrainStepInput

        x = self.normalizer(raw.to(self.config.device))
        dead_mask = self.tokens_since_fired >= self.schedule.dead_window_tokens
        self.auxk_steps += int(bool(dead_mask.any()))
        output = self.sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=dead_mask,
                n_training_steps=self.n_training_steps,
                is_logging_step=False,
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        _remove_parallel_gradient(self.sae)
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self._after_step(output.feature_acts)
        self.last_aux = float(output.losses.get("auxiliary_reconstruction_loss", torch.tensor(0.0)).detach())
        self.n_training_steps += 1
        self.tokens_seen += x.shape[0]
        return output

    def save_state(self, path: Path) -> None:
        """Everything a resumed run needs, written atomically (a crash mid-write keeps the previous state)."""
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "config": self.config.to_dict(),
                "d_in": self.d_in,
                "sae": self.sae.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "mean": self.normalizer.mean,
                "scale": self.normalizer.scale,
                "tokens_since_fired": self.tokens_since_fired.cpu(),
                "log": self.log,
                "step": self.n_training_steps,
                "tokens_seen": self.tokens_seen,
                "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "auxk_steps": self.auxk_steps,
                "rng": torch.get_rng_state(),
            },
            tmp,
        )
        os.replace(tmp, path)

    def load_state(self, path: Path) -> None:
        """Resume from a state `save_state` wrote for a run with the same settings."""
        saved = torch.load(path, weights_only=False)
        if saved["config"] != self.config.to_dict() or saved["d_in"] != self.d_in:
            raise ValueError(f"{path} belongs to a run with other settings; remove it to start afresh")
        self.sae.load_state_dict(saved["sae"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self._use_normalizer(Normalizer(saved["mean"], saved["scale"]))
        self.tokens_since_fired = saved["tokens_since_fired"].to(self.config.device)
        self.log = saved["log"]
        self.n_training_steps, self.tokens_seen = saved["step"], saved["tokens_seen"]
        self.epoch, self.batches_in_epoch = saved["epoch"], saved["batches_in_epoch"]
        self.auxk_steps = saved["auxk_steps"]
        torch.set_rng_state(saved["rng"])
        self.resumed_from_step = self.n_training_steps

    def _use_normalizer(self, normalizer: Normalizer) -> None:
        self.normalizer = normalizer
        self.eval_tokens = normalizer(self._eval_raw).to(self.config.device)

    def _epoch_batches(self) -> Iterator[torch.Tensor]:
        """This epoch's batches, less those a resumed run already consumed."""
        batches = self.source.train_batches(self.config.batch_size, seed=self.config.seed + self.epoch)
        for _ in range(self.batches_in_epoch):
            next(batches, None)
        return batches

    @torch.no_grad()
    def _after_step(self, feature_acts: torch.Tensor) -> None:
        """Decoder rows back to unit norm; the AuxK dead window and the dense window advance by one batch."""
        self.sae.W_dec.data /= self.sae.W_dec.data.norm(dim=1, keepdim=True)
        fired = (feature_acts > 0).sum(dim=0)
        self.tokens_since_fired += feature_acts.shape[0]
        self.tokens_since_fired[fired > 0] = 0
        self.fires_in_window += fired
        self.window_tokens += feature_acts.shape[0]

    def _log_metrics(self) -> None:
        """Held-out metrics and the windowed dead and dense fractions, then a fresh dense window."""
        silent_for_window = self.tokens_since_fired >= self.schedule.dead_window_tokens
        firing_rate = self.fires_in_window.float() / max(1, self.window_tokens)
        row = {
            "step": self.n_training_steps,
            "tokens_seen": self.tokens_seen,
            **evaluate(self.sae, self.eval_tokens),
            "dead_fraction": float(silent_for_window.float().mean()),  # the final one is from a full pass
            "dense_fraction": float((firing_rate > self.config.dense_threshold).float().mean()),
            "aux_loss": self.last_aux,
            "lr": float(self.scheduler.get_last_lr()[0]),
        }
        self.log.append(row)
        self.fires_in_window.zero_()
        self.window_tokens = 0
        if self.on_log is not None:
            self.on_log(row)

    def _final_metrics(self) -> dict[str, float]:
        """The last log row, with the dead fraction measured by a full pass over every token."""
        last = self.log[-1]
        return {
            **last,
            "dead_fraction_window": last["dead_fraction"],
            **full_pass_dead_fractions(self.sae, self.source, self.normalizer, self.config.batch_size),
            "dead_window_tokens": self.schedule.dead_window_tokens,
            "warmup_steps": self.schedule.warmup_steps,
            "auxk_steps": self.auxk_steps,
        }

    def _outcome(self, final: dict[str, float]) -> TrainingOutcome:
        return TrainingOutcome(
            self.sae,
            self.normalizer,
            self.log,
            final,
            self.gamma,
            self.n_training_steps,
            self.tokens_seen,
            self.resumed_from_step,
            self.notes,
        )


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
    trainer = SaeTrainer(source, config, state_path=state_path, on_log=on_log)
    return trainer.fit(stop_after_steps=stop_after_steps)


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
