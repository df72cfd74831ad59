from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetError, DatasetOptions
from sae_genomics_core.data.registry import (
    QUICK_SCAN_CELLS,
    DatasetNotRegistered,
    Registry,
    delete_dataset_rows,
    sanitize_dataset_name,
)
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


def late_nan_h5ad(path: Path) -> Path:
    """A file whose only problem (a NaN) lies past the quick scan's end (QUICK_SCAN_CELLS), in its last cell."""
    n_cells = QUICK_SCAN_CELLS + 5
    matrix = sp.random(n_cells, 6, density=0.5, format="lil", random_state=0, dtype=np.float32)
    matrix[:, 0] = 1.0  # every cell expresses a gene
    matrix[n_cells - 1, 1] = np.nan
    return write_h5ad(path, matrix.tocsr(), obs={"cell_type": ["T"] * n_cells})


def one_gene_vocab_model(folder: Path) -> str:
    """A dir: model spec whose vocab holds one gene no test file has (no weights: the vocab check reads
    vocab.json only; model_config.yml gives Dagster its layer count)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.yml").write_text("n_layers: 2\n")
    (folder / "vocab.json").write_text(json.dumps({"ENSG00000999999": 0, "<cls>": 1, "<pad>": 2}))
    return f"dir:{folder}"


def test_a_nan_past_the_quick_scan_registers_nothing(home: Home, tmp_path: Path) -> None:
    path = late_nan_h5ad(tmp_path / "late_nan.h5ad")
    with pytest.raises(DatasetError, match="non-finite") as caught:
        Registry(home).register(path)
    assert "1 non-finite" in str(caught.value)
    assert Registry(home).names() == []
    # --quick scans only the first cells: the same file then registers, as that option says
    _, tables = Registry(home).register(path, quick_scan_cells=QUICK_SCAN_CELLS)
    assert tables.report.cells_scanned == QUICK_SCAN_CELLS < tables.report.n_cells


def test_no_gene_in_the_model_vocab_registers_nothing(home: Home, tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "genes.h5ad", counts())
    spec = one_gene_vocab_model(tmp_path / "model")
    with pytest.raises(DatasetError, match=r"none of its 30 genes is in the vocab of dir:") as caught:
        Registry(home).register(path, model_spec=spec)
    assert "--ensembl-column" in str(caught.value)
    assert Registry(home).names() == []
    # one gene in the vocab is enough, and the report says how many
    (tmp_path / "model" / "vocab.json").write_text(json.dumps({"ENSG00000000003": 0, "<cls>": 1, "<pad>": 2}))
    _, tables = Registry(home).register(path, model_spec=spec)
    assert tables.report.n_genes_in_vocab == 1
    assert tables.report.vocab_check == f"1 of 30 genes are in the vocab of {spec}"


def test_an_unreadable_vocab_defers_the_check_and_says_so(home: Home, tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "genes.h5ad", counts())
    _, tables = Registry(home).register(path, model_spec=f"dir:{tmp_path / 'nowhere'}")
    assert tables.report.n_genes_in_vocab is None
    assert tables.report.vocab_check.startswith("not checked at registration")


def test_dataset_rows_are_deleted_in_one_transaction(home: Home) -> None:
    import duckdb

    with duckdb.connect(str(home.warehouse)) as connection:
        for table in ("cells", "genes"):
            connection.execute(
                f"create table {table} as select * from (values ('a', 1), ('a', 2), ('b', 3)) t(dataset, i)"
            )
    assert delete_dataset_rows(home.warehouse, "a") == {"cells": 2, "genes": 2}
    with duckdb.connect(str(home.warehouse), read_only=True) as connection:
        assert connection.execute(
            "select dataset from cells union all select dataset from genes"
        ).fetchall() == [("b",), ("b",)]
