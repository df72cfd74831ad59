"""Resources: thin, config-only handles on core objects."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from sae_genomics_core.config import Home
from sae_genomics_core.data.registry import Registry


class HomeResource(dg.ConfigurableResource):
    """The sae-genomics home ($SAE_GENOMICS_HOME): registry, artefacts, incoming/, warehouse."""

    root: str

    @property
    def home(self) -> Home:
        return Home(Path(self.root))

    @property
    def registry(self) -> Registry:
        return Registry(self.home)
