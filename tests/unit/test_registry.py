from __future__ import annotations

from pathlib import Path

import pytest

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetError, DatasetOptions
from sae_genomics_core.data.registry import DatasetNotRegistered, Registry, sanitize_dataset_name
from tests.conftest import counts, write_h5ad


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("PBMC 68k", "pbmc_68k"), ("a|b,c[d]", "a_b_c_d"), ("  _x.y-z_ ", "x.y-z"), ("Sample#1", "sample_1")],
)
def test_names_are_sanitised_to_partition_keys(raw: str, expected: str) -> None:
    assert sanitize_dataset_name(raw) == expected


def test_unusable_name_is_refused() -> None:
    with pytest.raises(ValueError, match="--name"):
        sanitize_dataset_name("|||")


def test_register_records_path_and_options(home: Home, tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "My Data.h5ad", counts())
    entry, tables = Registry(home).register(path, options=DatasetOptions(cell_type_key="cell_type"))
    assert entry.name == "my_data"
    again = Registry(home).get("my_data")
    assert again.path == path.resolve()
    assert again.options.cell_type_key == "cell_type"
    assert tables.report.n_cells == 40
    assert Registry(home).names() == ["my_data"]


def test_bad_file_registers_nothing(home: Home, tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "bad.h5ad", counts())
    with pytest.raises(DatasetError):
        Registry(home).register(path, options=DatasetOptions(cell_type_key="missing"))
    assert list(home.registry.iterdir()) == []


def test_name_clash_with_another_file_is_refused(home: Home, tmp_path: Path) -> None:
    first = write_h5ad(tmp_path / "one.h5ad", counts())
    second = write_h5ad(tmp_path / "two.h5ad", counts(seed=3))
    registry = Registry(home)
    registry.register(first, name="shared")
    with pytest.raises(DatasetError, match="already registered"):
        registry.register(second, name="shared")
    assert registry.get("shared").path == first.resolve()
    registry.register(first, name="shared")  # the same file again is fine


def test_unknown_dataset_says_how_to_register(home: Home) -> None:
    with pytest.raises(DatasetNotRegistered, match="sae-genomics register"):
        Registry(home).get("nope")
