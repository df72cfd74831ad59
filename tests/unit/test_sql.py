from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from sae_genomics_core.warehouse.sql import SqlRefused, format_frame, run_query


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("create table cells as select 'd' as dataset, range as cell_index from range(5)")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return path


@pytest.mark.parametrize(
    "query",
    [
        "select count(*) as n from cells",
        "with c as (select * from cells) select count(*) as n from c",
        "from cells select count(*) as n",
    ],
)
def test_queries_run(warehouse: Path, query: str) -> None:
    assert run_query(warehouse, query)["n"][0] == 5


def test_describe_and_explain_are_allowed(warehouse: Path) -> None:
    assert "cell_index" in run_query(warehouse, "describe cells")["column_name"].to_list()
    assert run_query(warehouse, "explain select * from cells").height >= 1


REFUSED = {
    "insert into cells values ('x', 9)": "INSERT",
    "update cells set cell_index = 0": "UPDATE",
    "delete from cells": "DELETE",
    "create table t as select 1": "CREATE",
    "drop table cells": "DROP",
    "alter table cells add column x int": "ALTER",
    "attach 'other.duckdb' as other": "ATTACH",
    "copy cells to 'out.csv'": "COPY",
    "export database 'dump'": "EXPORT",
    "install httpfs": "INSTALL / LOAD",
    "load httpfs": "INSTALL / LOAD",
    "set threads = 1": "SET",
    "select 1; drop table cells": "DROP",
}


@pytest.mark.parametrize("query", list(REFUSED))
def test_writes_and_side_effects_are_refused(warehouse: Path, query: str) -> None:
    with pytest.raises(SqlRefused, match="read-only") as caught:
        run_query(warehouse, query)
    assert REFUSED[query] in str(caught.value)
    assert run_query(warehouse, "select count(*) as n from cells")["n"][0] == 5


@pytest.mark.parametrize("function", ["read_csv", "read_csv_auto", "read_parquet", "read_text", "glob"])
def test_file_reading_functions_are_refused(warehouse: Path, function: str) -> None:
    secret = warehouse.parent / "secret.csv"
    with pytest.raises(SqlRefused, match="reading files"):
        run_query(warehouse, f"select * from {function}('{secret}')")


def test_missing_warehouse_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make demo"):
        run_query(tmp_path / "none.duckdb", "select 1")


def test_output_formats() -> None:
    frame = pl.DataFrame({"cell_type": ["B", "T cell"], "n": [3, 12]})
    table = format_frame(frame, "table").splitlines()
    assert table[0].split("|")[1].strip() == "cell_type"
    assert len({len(line) for line in table}) == 1  # aligned
    assert format_frame(frame, "csv") == "cell_type,n\nB,3\nT cell,12\n"
    assert json.loads(format_frame(frame, "json")) == [
        {"cell_type": "B", "n": 3},
        {"cell_type": "T cell", "n": 12},
    ]
