from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from sae_genomics_core.cli import build_parser, main
from sae_genomics_core.config import HOME_ENV
from sae_genomics_core.warehouse.sql import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    SqlRefused,
    SqlTimedOut,
    SqlTooManyRows,
    format_frame,
    query_warehouse,
    run_query,
)


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


def _dump(folder: Path, schema_sql: str) -> Path:
    folder.mkdir()
    (folder / "schema.sql").write_text(schema_sql)
    (folder / "load.sql").write_text("")
    return folder


def _refusal(warehouse: Path, query: str) -> str:
    with pytest.raises(SqlRefused) as caught:
        run_query(warehouse, query)
    return str(caught.value)


@pytest.mark.parametrize(
    "template",
    [
        "import database '{path}'",
        "IMPORT /* dump */ DATABASE '{path}'",
        "select 1; import database '{path}'",
        "export database '{path}'",
        "copy cells from '{path}/schema.sql'",
        "attach '{path}/schema.sql' as other",
        "select * from read_csv('{path}/schema.sql')",
    ],
)
def test_statements_naming_files_are_refused_without_opening_them(
    warehouse: Path, tmp_path: Path, template: str
) -> None:
    # the parser reads <dir>/schema.sql for IMPORT DATABASE: a marker, or SELECTs (an internal
    # error with a C++ stack trace), in it must never show, and an existing path must read the same
    # as a missing one
    marked = _dump(tmp_path / "marked", "SECRETMARKER42 select 1;")
    selects = _dump(tmp_path / "selects", "select 42; select 43;")
    messages = {
        folder.name: _refusal(warehouse, template.format(path=folder)).replace(str(folder), "<path>")
        for folder in (marked, selects, tmp_path / "missing")
    }
    assert len(set(messages.values())) == 1, messages
    message = messages["marked"]
    assert message.startswith("refused: ")
    assert "SECRETMARKER42" not in message and "Stack Trace" not in message
    assert "INTERNAL" not in message and "No such file" not in message
    assert run_query(warehouse, "select count(*) as n from cells")["n"][0] == 5


def test_select_naming_import_as_a_word_still_runs(warehouse: Path) -> None:
    assert run_query(warehouse, "select 'import database' as import")["import"][0] == "import database"


SLOW = "select sum(a.range * b.range) as s from range(1000000) a, range(1000000) b"  # 10^12 rows


def _writer_can_open(database: Path) -> bool:
    """A writer in another process (DuckDB's file lock is per process) opens the file read-write."""
    code = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('create table w as select 1').close()"
    return subprocess.run([sys.executable, "-c", code, str(database)], timeout=60).returncode == 0


def test_slow_query_is_stopped_at_the_timeout_and_the_lock_released(warehouse: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SqlTimedOut, match=r"longer than 1 s .*--timeout SECONDS"):
        run_query(warehouse, SLOW, timeout_s=1)
    assert time.monotonic() - started < 1 + 5  # slack for a loaded machine; uncapped it runs for hours
    assert _writer_can_open(warehouse)


def test_timeout_zero_is_no_limit_and_defaults_are_generous(warehouse: Path) -> None:
    # 3·10^7 rows: ~0.05 s on a fast machine, so a 1 µs limit (re-sent every 10 ms) must stop it
    query = "select count(*) as n from range(10000) a, range(3000) b where a.range + b.range > 0"
    with pytest.raises(SqlTimedOut):
        run_query(warehouse, query, timeout_s=1e-6)
    assert run_query(warehouse, query, timeout_s=0)["n"][0] == 10000 * 3000 - 1
    assert DEFAULT_TIMEOUT_S >= 60 and DEFAULT_MAX_ROWS >= 10_000


@pytest.mark.parametrize("max_rows", [1, 9_999, 10_000, 10_001, 24_999])
def test_row_cap_cuts_at_n_and_says_so(warehouse: Path, max_rows: int) -> None:
    query = "select range as i from range(25000) order by i"
    result = query_warehouse(warehouse, query, max_rows=max_rows)
    assert result.truncated and result.frame["i"].to_list() == list(range(max_rows))
    with pytest.raises(SqlTooManyRows, match=f"more than {max_rows:,} rows.*max_rows=0"):
        run_query(warehouse, query, max_rows=max_rows)


def test_row_cap_zero_or_large_enough_returns_everything(warehouse: Path) -> None:
    query = "select range as i from range(25000)"
    for max_rows in (0, 25_000):
        result = query_warehouse(warehouse, query, max_rows=max_rows)
        assert not result.truncated and result.frame.height == 25_000
    empty = query_warehouse(warehouse, "select * from cells where false", max_rows=3)
    assert not empty.truncated and empty.frame.columns == ["dataset", "cell_index"]


def test_cli_flags_cap_time_out_and_lift(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(HOME_ENV, str(warehouse.parent))
    args = build_parser().parse_args(["sql", "select 1"])
    assert (args.timeout, args.max_rows) == (DEFAULT_TIMEOUT_S, DEFAULT_MAX_ROWS)
    assert main(["sql", "select * from cells order by cell_index", "--format", "csv", "--max-rows", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "dataset,cell_index\nd,0\nd,1\n" and "more than 2 rows" in err and "--max-rows N" in err
    assert main(["sql", "select * from cells", "--format", "csv", "--max-rows", "0"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and err == ""
    assert main(["sql", SLOW, "--timeout", "0.5"]) == 2
    assert "--timeout SECONDS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sql", "select 1", "--max-rows", "-1"])
    assert "≥ 0" in capsys.readouterr().err


def test_csv_writes_list_and_struct_columns_as_json() -> None:
    import csv
    import io
    import json

    from sae_genomics_core.warehouse.sql import format_frame

    frame = pl.DataFrame(
        {
            "feature": [1, 2],
            "top_genes": [["CD3E", "CD2"], []],
            "top_terms": [[{"database": "hpo", "q": 0.01}], None],
        }
    )
    rows = list(csv.DictReader(io.StringIO(format_frame(frame, "csv"))))
    assert json.loads(rows[0]["top_genes"]) == ["CD3E", "CD2"] and json.loads(rows[1]["top_genes"]) == []
    assert json.loads(rows[0]["top_terms"]) == [{"database": "hpo", "q": 0.01}]


def test_several_statements_are_refused_not_cut_to_the_last() -> None:
    from sae_genomics_core.warehouse.sql import SqlRefused, check_read_only

    with pytest.raises(SqlRefused, match="2 statements"):
        check_read_only("select 1; select 2")
    check_read_only("select 1;")  # a trailing semicolon is one statement
