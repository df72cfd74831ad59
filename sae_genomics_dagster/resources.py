"""Resources: thin, config-only handles on core objects."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from sae_genomics_core.activations.settings import STORAGE_DTYPE_NAMES, ExtractionSettings
from sae_genomics_core.config import DEFAULT_MODEL, Home
from sae_genomics_core.data.registry import Registry
from sae_genomics_core.model.hooks import HOOKS


class HomeResource(dg.ConfigurableResource):
    """The sae-genomics home ($SAE_GENOMICS_HOME): registry, artefacts, incoming/, warehouse."""

    root: str

    @property
    def home(self) -> Home:
        return Home(Path(self.root))

    @property
    def registry(self) -> Registry:
        return Registry(self.home)


# the core defaults of extraction (`layers` has none: the resource's None means every layer)
EXTRACTION = {field.name: field.default for field in dataclasses.fields(ExtractionSettings)}


class ModelResource(dg.ConfigurableResource):
    """Which tahoe-x1 to run and how. Weights load lazily, inside the asset that needs them."""

    spec: str = Field(
        default=DEFAULT_MODEL,
        description="tahoe-x1-70m, tahoe-x1-1.3b, tahoe-x1-3b, dir:<path>, random-init:<one of those> (the "
        "architecture with seeded random weights: the baseline for a real-weights run) or tiny-random (random "
        "weights, offline demo)",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:<i>")
    batch_size: int = Field(default=EXTRACTION["batch_size"], description="cells per forward pass")
    max_length: int | None = Field(
        default=EXTRACTION["max_length"], description="tokens per cell incl. <cls>; None: the model's"
    )
    layers: list[int] | None = Field(default=None, description="layers to extract; None: all")
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
        default=None,
        description="run with the drug token at position 1 (3B model): pad, a drug name from the model folder's "
        "drug_to_id.json (e.g. the DMSO control); None leaves it out, as upstream's default",
    )

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise dg.Failure(
                description=f"device {self.device!r} was asked for but CUDA is not available; use device: cpu or auto"
            )
        return self.device

    def load(self, gene_keys_source: Any, device: str) -> Any:
        from sae_genomics_core.model.load import TINY_RANDOM, load_model

        genes = None
        if self.spec == TINY_RANDOM:
            genes = [
                e or s
                for e, s in zip(
                    gene_keys_source["ensembl_id"].to_list(),
                    gene_keys_source["symbol"].to_list(),
                    strict=True,
                )
            ]
        return load_model(self.spec, dataset_genes=genes, device=device, seed=self.seed, drug=self.drug)

    def settings(self, n_layers: int) -> Any:
        return ExtractionSettings(
            layers=tuple(self.layers if self.layers is not None else range(n_layers)),
            hooks=tuple(self.hooks),
            batch_size=self.batch_size,
            max_length=self.max_length,
            storage_dtype=self.storage_dtype,
            shard_cells=self.shard_cells,
            seed=self.seed,
        )
