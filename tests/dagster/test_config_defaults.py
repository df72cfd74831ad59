"""Every default is defined once, in core: each Dagster config field that names a core setting has the
core's default (or None, "the core decides")."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any

import dagster as dg
import pytest

import sae_genomics_dagster
from sae_genomics_core.activations.settings import ExtractionSettings
from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.features.settings import AssociationSettings
from sae_genomics_core.model.choice import ModelChoice
from sae_genomics_core.pipeline.annotations import RefreshSettings
from sae_genomics_core.sae.settings import EffectSettings, SaeStageSettings, SaeTrainingConfig
from sae_genomics_core.warehouse.lake import MaintenanceSettings
from sae_genomics_dagster.defs.annotations.assets import AnnotationRefreshConfig
from sae_genomics_dagster.defs.effects.assets import EffectConfig
from sae_genomics_dagster.defs.enrichment.assets import (
    BaselineConfig,
    CalibratedEnrichmentConfig,
    EnrichmentConfig,
)
from sae_genomics_dagster.defs.features.assets import FeatureConfig
from sae_genomics_dagster.defs.maintenance.jobs import MaintenanceConfig
from sae_genomics_dagster.defs.sae.assets import SaeConfig
from sae_genomics_dagster.defs.sae.stability import StabilityConfig
from sae_genomics_dagster.resources import ModelResource

# Dagster config → the core settings whose defaults it must repeat, and the fields compared at least
CORE_OF: dict[type, list[type]] = {
    FeatureConfig: [AssociationSettings],
    EffectConfig: [EffectSettings],
    SaeConfig: [SaeStageSettings, SaeTrainingConfig],  # a field is compared with the first that has it
    StabilityConfig: [SaeStageSettings],
    EnrichmentConfig: [EnrichmentSettings],
    CalibratedEnrichmentConfig: [EnrichmentSettings],
    BaselineConfig: [EnrichmentSettings, AssociationSettings],
    ModelResource: [ExtractionSettings, ModelChoice],
    AnnotationRefreshConfig: [RefreshSettings],
    MaintenanceConfig: [MaintenanceSettings],
}
DAGSTER_ONLY: set[type] = set()
RENAMED = {"hpo_branch": lambda settings: dict(settings.term_roots).get("hpo", "")}


def _core_defaults(cls: type) -> dict[str, Any]:
    return {
        field.name: field.default
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING
    }


def _config_classes() -> set[type]:
    found = set()
    for module_info in pkgutil.walk_packages(sae_genomics_dagster.__path__, "sae_genomics_dagster."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(
                value, (dg.Config, dg.ConfigurableResource)
            ):
                found.add(value)
    return found


def test_every_config_class_is_checked_against_core() -> None:
    unchecked = {cls.__name__ for cls in _config_classes() - set(CORE_OF) - DAGSTER_ONLY}
    unchecked -= {"HomeResource", "ArtefactsResource", "WarehouseIOManager"}  # paths: no core settings
    assert unchecked == set(), f"add these to CORE_OF or DAGSTER_ONLY: {sorted(unchecked)}"


@pytest.mark.parametrize("config", list(CORE_OF), ids=lambda cls: cls.__name__)
def test_dagster_defaults_equal_the_core_defaults(config: type) -> None:
    compared, differing = [], {}
    for core in CORE_OF[config]:
        defaults = _core_defaults(core)
        instance = core()
        for name, field in config.model_fields.items():
            if name in compared:
                continue
            if name in RENAMED and isinstance(instance, EnrichmentSettings):
                expected = RENAMED[name](instance)
            elif name in defaults:
                expected = defaults[name]
            else:
                continue
            compared.append(name)
            ours = tuple(field.default) if isinstance(field.default, list) else field.default
            if ours is not None and ours != expected:
                differing[name] = (ours, expected)
    assert len(compared) >= min(3, len(config.model_fields)), (
        f"{config.__name__}: too few fields match core settings ({compared})"
    )
    assert differing == {}, f"{config.__name__} (Dagster default, core default): {differing}"


def test_the_environment_is_read_in_one_place() -> None:
    """Settings come from `sae_genomics_core.config.Environment` (and API keys from `secret`), nowhere else."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readers = {
        str(path.relative_to(root))
        for package in ("sae_genomics_core", "sae_genomics_dagster")
        for path in (root / package).rglob("*.py")
        if any(call in path.read_text() for call in ("os.environ.get(", "os.getenv(", "os.environ["))
    }
    # instance.py sets DAGSTER_HOME for Dagster itself; it reads nothing
    assert readers <= {"sae_genomics_core/config.py", "sae_genomics_dagster/instance.py"}, readers
