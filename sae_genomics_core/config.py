"""Where sae-genomics keeps its state: one home directory, set by ``$SAE_GENOMICS_HOME``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "SAE_GENOMICS_HOME"
DEFAULT_HOME_DIRNAME = ".sae-genomics"


@dataclass(frozen=True)
class Home:
    """The home directory and the fixed layout inside it.

    ``warehouse.duckdb`` holds the tables, ``artefacts/`` the big binary files (activations,
    checkpoints), ``incoming/`` is watched for new .h5ad files, ``registry/`` records registered
    datasets and ``dagster/`` is ``$DAGSTER_HOME`` so run history survives restarts.
    """

    root: Path

    @classmethod
    def from_env(cls) -> Home:
        configured = os.environ.get(HOME_ENV)
        root = Path(configured) if configured else Path.cwd() / DEFAULT_HOME_DIRNAME
        return cls(root.expanduser().resolve())

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def artefacts(self) -> Path:
        return self.root / "artefacts"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> Home:
        for path in (self.root, self.artefacts, self.incoming, self.registry, self.dagster_home, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        return self
