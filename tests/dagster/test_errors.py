"""One error root: every error core raises for a user to fix derives from SaeGenomicsError, and the one
Dagster adapter turns it (and nothing else) into a failed step that says what to do."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import dagster as dg
import pytest

import sae_genomics_core
from sae_genomics_core.errors import SaeGenomicsError, SettingsError
from sae_genomics_dagster.common import user_errors


def _core_exceptions() -> dict[str, type]:
    found = {}
    for module_info in pkgutil.walk_packages(sae_genomics_core.__path__, "sae_genomics_core."):
        module = importlib.import_module(module_info.name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(value, BaseException):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_core_error_derives_from_the_one_root() -> None:
    found = _core_exceptions()
    assert len(found) >= 15, sorted(found)  # the walk found the package's errors
    assert {name for name, cls in found.items() if not issubclass(cls, SaeGenomicsError)} == set()


def test_a_user_error_fails_the_step_with_its_fix_and_a_bug_stays_a_bug() -> None:
    with pytest.raises(dg.Failure) as failure, user_errors("enrichment settings"):
        raise SettingsError("fdr must be between 0 and 1")
    assert failure.value.description.startswith("enrichment settings: fdr must be between 0 and 1")
    assert SettingsError.fix in failure.value.description
    with pytest.raises(ValueError, match="a bug"), user_errors():
        raise ValueError("a bug")  # not a user error: it must not be dressed up as one


def test_bad_settings_raise_the_settings_error() -> None:
    from sae_genomics_core.enrichment.settings import EnrichmentSettings
    from sae_genomics_core.sae.settings import SaeTrainingConfig

    with pytest.raises(SettingsError, match="fdr"):
        EnrichmentSettings(fdr=2)
    with pytest.raises(SettingsError, match="warmup_fraction"):
        SaeTrainingConfig(warmup_fraction=0)
