"""The Dagster entry point (`dagster dev -m sae_genomics_dagster.definitions`, workspace.yaml, `dg`): every
stage's definitions found in the defs folder, with the resources of one home."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from sae_genomics_core.config import Environment, Home
from sae_genomics_dagster.io_manager import WarehouseIOManager
from sae_genomics_dagster.profiles import executor
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource, ModelResource
from sae_genomics_dagster.run_health import die_with_parent

die_with_parent()  # a step process (or run worker) imports this first: it must not outlive its parent


def build_definitions(home: Home | None = None) -> dg.Definitions:
    """All definitions for one home (tests pass a temporary one; the default comes from the environment)."""
    home = (home or Home.from_env()).ensure()
    environment = Environment.read()
    stages = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    resources = {
        "home": HomeResource(root=str(home.root)),
        "artefacts": ArtefactsResource(
            root=environment.artefacts_root or str(home.artefacts),
            cache=str(home.cache / "artefacts"),
            cache_gb=environment.artefact_cache_gb,
        ),
        "warehouse": WarehouseIOManager(database=str(home.warehouse), schema="main"),
        "model": ModelResource(spec=environment.model, device=environment.device),
    }
    return dg.Definitions(
        assets=_with_code_references(stages.assets or []),
        asset_checks=stages.asset_checks,
        jobs=stages.jobs,
        schedules=stages.schedules,
        sensors=stages.sensors,
        resources=resources,
        executor=executor(environment),
    )


def _with_code_references(assets: Iterable[Any]) -> Sequence[Any]:
    """Each asset linked to its source file in the UI (and from there to its one runner in core); the API is
    beta in the pinned Dagster, its warnings are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.with_source_code_references(list(assets))


defs = build_definitions()
