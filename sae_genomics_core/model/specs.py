"""Model specs without loading anything heavy (no torch): what Dagster needs to build its partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.external import sources_file

MODEL_FILES = ("vocab.json", "model_config.yml", "collator_config.yml", "model.safetensors")
HUB_SPECS = ("tahoe-x1-70m", "tahoe-x1-1.3b", "tahoe-x1-3b")
TINY_RANDOM = "tiny-random"
TINY_RANDOM_SHAPE = {"d_model": 64, "n_layers": 4, "n_heads": 4, "expansion_ratio": 4}
# random-init:<spec>: the architecture and vocab of a real model (hub or dir:), seeded random weights
RANDOM_INIT = "random-init"
CONFIG_FILES = ("vocab.json", "model_config.yml", "collator_config.yml")  # all random-init reads


class ModelUnavailable(SaeGenomicsError, RuntimeError):
    """The weights cannot be had here; the message lists every way to provide them."""


def model_sources(path: Path | None = None) -> dict[str, Any]:
    with open(path or sources_file()) as handle:
        return yaml.safe_load(handle)["models"]


def n_layers_of(spec: str) -> int:
    """Layer count of a spec without loading weights (Dagster builds the `layer` partitions from it)."""
    if spec == TINY_RANDOM:
        return TINY_RANDOM_SHAPE["n_layers"]
    if (base := random_init_base(spec)) is not None:
        return n_layers_of(base)
    if spec.startswith("dir:"):
        config = Path(spec.removeprefix("dir:")).expanduser() / "model_config.yml"
        if not config.exists():
            raise ModelUnavailable(
                f"model spec {spec}: {config} does not exist; a model folder holds {', '.join(MODEL_FILES)}"
            )
        with open(config) as handle:
            return int(yaml.safe_load(handle)["n_layers"])
    if spec in HUB_SPECS:
        return int(model_sources()["sizes"][spec]["n_layers"])
    raise ValueError(unknown_spec_message(spec))


def random_init_base(spec: str) -> str | None:
    """The real model whose architecture a `random-init:<spec>` copies; None for any other spec."""
    if not spec.startswith(f"{RANDOM_INIT}:"):
        return None
    base = spec.removeprefix(f"{RANDOM_INIT}:")
    if base not in HUB_SPECS and not base.startswith("dir:"):
        raise ValueError(
            f"model spec {spec!r}: {RANDOM_INIT}: takes the spec of a real model, one of "
            f"{', '.join(HUB_SPECS)} or dir:<path> (e.g. {RANDOM_INIT}:tahoe-x1-70m)"
        )
    return base


def unknown_spec_message(spec: str) -> str:
    return (
        f"unknown model spec {spec!r}; use one of {', '.join(HUB_SPECS)}, dir:<path>, {TINY_RANDOM} or "
        f"{RANDOM_INIT}:<one of the others but {TINY_RANDOM}> (the same architecture with random weights)"
    )
