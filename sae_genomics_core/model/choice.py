"""Which tahoe-x1 to run and where: the choice a user makes, and loading it. Light at import (torch and
the weights load in `load`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from sae_genomics_core.config import AUTO, DEFAULT_MODEL
from sae_genomics_core.errors import SettingsError
from sae_genomics_core.model.specs import TINY_RANDOM


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    # tahoe-x1-70m, tahoe-x1-1.3b, tahoe-x1-3b, dir:<path>, random-init:<spec> or tiny-random
    spec: str = DEFAULT_MODEL
    device: str = AUTO  # auto, cpu, cuda or cuda:<i>
    drug: str | None = None  # the drug token at position 1 (3B model); None leaves it out, as upstream

    def resolved_device(self) -> str:
        import torch

        if self.device == AUTO:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingsError(
                f"device {self.device!r} was asked for but CUDA is not available",
                fix="set the model device to cpu or auto",
            )
        return self.device

    def load(self, genes: pl.DataFrame, device: str, seed: int) -> Any:
        """The model with its weights; tiny-random builds its vocab from the dataset's genes."""
        from sae_genomics_core.model.load import load_model

        dataset_genes = None
        if self.spec == TINY_RANDOM:
            ensembl, symbols = genes["ensembl_id"].to_list(), genes["symbol"].to_list()
            dataset_genes = [e or s for e, s in zip(ensembl, symbols, strict=True)]
        return load_model(self.spec, dataset_genes=dataset_genes, device=device, seed=seed, drug=self.drug)
