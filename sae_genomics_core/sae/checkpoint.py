"""SAE checkpoints: sae-lens's inference format plus the provenance that makes them safe to reuse.

A checkpoint directory holds `cfg.json` + `sae_weights.safetensors` (written by sae-lens, loadable
with `sae_lens.SAE.load_from_disk`), `normalization.safetensors` (the mean and scale applied to
inputs before encoding), `provenance.json` (model id and revision, random-weights flag, layer,
hook, the activation set's and dataset's checksums, seed, code version and the full training
config) and `metrics.json` (final metrics, with the dead fraction of a full pass over every token;
the training log, whose dead fraction is the windowed estimate; training warnings). `load_checkpoint` refuses a checkpoint made for another model, layer, hook or width.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_genomics_core import __version__
from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.sae.train import Normalizer, TrainingOutcome, write_json

PROVENANCE = "provenance.json"
NORMALIZATION = "normalization.safetensors"
METRICS = "metrics.json"


class CheckpointMismatch(SaeGenomicsError, ValueError):
    """A checkpoint (or rows derived from one) made for other activations, model, layer or hook."""

    fix = "materialise the SAE (and the feature tables) of this dataset × layer again"


def checkpoint_id(checkpoint: Path) -> str:
    """The id every row derived from a checkpoint records: its folder's name, the hook and a content key
    of the activations and the training config (`<hook>-<key>`)."""
    return Path(checkpoint).parent.name


def refuse_rows_of_another_checkpoint(rows: Any, expected_id: str, table: str) -> None:
    """Refuse `rows` (a polars frame with `checkpoint_id`) unless every row comes from `expected_id`: a
    partition mixing two SAEs, or one older than the current SAE, must not feed what comes next."""
    found = sorted(set(rows["checkpoint_id"].to_list())) if "checkpoint_id" in rows.columns else [None]
    if found != [expected_id]:
        raise CheckpointMismatch(
            f"{table} rows come from checkpoint(s) {', '.join(map(str, found))}, the current SAE is "
            f"{expected_id}: materialise feature_tables for this dataset × layer again first"
        )


def save_checkpoint(directory: Path, outcome: TrainingOutcome, provenance: dict[str, Any]) -> None:
    """Write into a temporary sibling, then swap it in: a failure never leaves a half-written checkpoint."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    outcome.sae.save_inference_model(str(tmp))
    save_file(
        {"mean": outcome.normalizer.mean.contiguous().cpu(), "scale": torch.tensor(outcome.normalizer.scale)},
        str(tmp / NORMALIZATION),
    )
    write_json(
        tmp / PROVENANCE,
        {
            **provenance,
            "code_version": __version__,
            "d_in": int(outcome.sae.cfg.d_in),
            "d_sae": int(outcome.sae.cfg.d_sae),
            "k": int(outcome.sae.cfg.k),
            "normalization": {
                "mean_norm": float(outcome.normalizer.mean.norm()),
                "scale": outcome.normalizer.scale,
            },
            "gamma": outcome.gamma,
            "steps": outcome.steps,
            "tokens_seen": outcome.tokens_seen,
        },
    )
    # final: held-out metrics and the full-pass dead fractions; log: per-step, with windowed dead fractions
    write_json(tmp / METRICS, {"final": outcome.final, "log": outcome.log, "warnings": outcome.warnings})
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)


@dataclass
class LoadedSae:
    sae: Any  # sae_lens SAE (TopKSAE)
    normalizer: Normalizer
    provenance: dict[str, Any]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations of raw activations `x`: the stored normalisation is applied first."""
        return self.sae.encode(self.normalizer(x.to(self.sae.W_dec.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.invert(self.sae.decode(self.encode(x)))


def load_checkpoint(
    directory: Path, *, expect: dict[str, Any] | None = None, device: str = "cpu"
) -> LoadedSae:
    """Load a checkpoint; `expect` (e.g. model_id, layer, hook, d_in) must match its provenance."""
    from sae_lens import SAE

    path = Path(directory)
    if not (path / PROVENANCE).exists():
        raise CheckpointMismatch(
            f"{path} is not an sae-genomics checkpoint (no {PROVENANCE}); train one with the sae_checkpoint asset"
        )
    provenance = json.loads((path / PROVENANCE).read_text())
    mismatches = {
        key: (provenance.get(key), value)
        for key, value in (expect or {}).items()
        if provenance.get(key) != value
    }
    if mismatches:
        details = "; ".join(
            f"{key}: checkpoint has {have!r}, input is {want!r}" for key, (have, want) in mismatches.items()
        )
        raise CheckpointMismatch(
            f"refused: the SAE at {path} was trained for other activations ({details}). Encoding other "
            "activations would give meaningless features; train an SAE for these (sae_checkpoint for "
            "this dataset and layer) or pick the matching checkpoint."
        )
    stats = load_file(str(path / NORMALIZATION))
    sae = SAE.load_from_disk(str(path), device=device)
    return LoadedSae(sae.eval(), Normalizer(stats["mean"], float(stats["scale"])), provenance)
