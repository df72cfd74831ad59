"""Resources: thin, config-only handles on core objects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
from pydantic import Field

from sae_genomics_core.activations.settings import STORAGE_DTYPE_NAMES, ExtractionSettings
from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import Environment, Home
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.model.choice import ModelChoice
from sae_genomics_core.model.hooks import HOOKS


class ArtefactsResource(dg.ConfigurableResource):
    """Where activations, SAE checkpoints, charts and pages are kept (`$SAE_GENOMICS_HOME/artefacts`, or
    $SAE_GENOMICS_ARTEFACTS: any fsspec URL) and which of them is current: the core ArtefactStore."""

    root: str
    cache: str | None = Field(default=None, description="local replica of a remote root (the stages' files)")
    cache_gb: float = Field(default=Environment.artefact_cache_gb, description="the replica's size budget")

    @property
    def store(self) -> ArtefactStore:
        cache = Path(self.cache) if self.cache else None
        return ArtefactStore(self.root, cache=cache, cache_bytes=int(self.cache_gb * 2**30))


class HomeResource(dg.ConfigurableResource):
    """The sae-genomics home ($SAE_GENOMICS_HOME): registry, artefacts, incoming/, warehouse."""

    root: str

    @property
    def home(self) -> Home:
        return Home(Path(self.root))

    @property
    def registry(self) -> Registry:
        return Registry(self.home)


EXTRACTION = {field.name: field.default for field in dataclasses.fields(ExtractionSettings)}
MODEL = {field.name: field.default for field in dataclasses.fields(ModelChoice)}


class ModelResource(dg.ConfigurableResource):
    """Which tahoe-x1 to run and how. Weights load lazily, inside the asset that needs them."""

    spec: str = Field(
        default=MODEL["spec"],
        description="tahoe-x1-70m, tahoe-x1-1.3b, tahoe-x1-3b, dir:PATH, random-init:SPEC (one of those) (the "
        "architecture with seeded random weights: the baseline for a real-weights run) or tiny-random (random "
        "weights, offline demo)",
    )
    device: str = Field(default=MODEL["device"], description="auto, cpu, cuda or cuda:N")
    batch_size: int = Field(default=EXTRACTION["batch_size"], description="cells per forward pass")
    max_length: int | None = Field(
        default=EXTRACTION["max_length"], description="tokens per cell incl. the CLS token; None: the model's"
    )
    layers: list[int] | None = Field(default=EXTRACTION["layers"], description="layers to extract; None: all")
    hooks: list[str] = Field(default=list(EXTRACTION["hooks"]), description=f"of {', '.join(HOOKS)}")
    storage_dtype: str = Field(
        default=EXTRACTION["storage_dtype"], description=f"{', '.join(STORAGE_DTYPE_NAMES)} on disk"
    )
    shard_cells: int = Field(
        default=EXTRACTION["shard_cells"],
        description="cells per shard (memory is bounded by one shard's batch)",
    )
    seed: int = Field(
        default=EXTRACTION["seed"],
        description="seeds tiny-random and random-init weights and per-cell gene sampling",
    )
    drug: str | None = Field(
        default=MODEL["drug"],
        description="run with the drug token at position 1 (3B model): pad, a drug name from the model folder's "
        "drug_to_id.json (e.g. the DMSO control); None leaves it out, as upstream's default",
    )

    def choice(self) -> ModelChoice:
        return ModelChoice(spec=self.spec, device=self.device, drug=self.drug)

    def settings(self) -> ExtractionSettings:
        return ExtractionSettings(
            layers=tuple(self.layers) if self.layers is not None else None,
            hooks=tuple(self.hooks),
            batch_size=self.batch_size,
            max_length=self.max_length,
            storage_dtype=self.storage_dtype,
            shard_cells=self.shard_cells,
            seed=self.seed,
        )
