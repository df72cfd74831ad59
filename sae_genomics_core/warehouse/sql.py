"""Read-only SQL on the warehouse, for people and scripts.

Two guards: statements other than queries are refused before they run, with a message that says
why; and the connection itself is read-only with file-system access disabled, so a query cannot
read or write files, attach databases or load extensions even if it slips past the first guard.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import duckdb
import polars as pl

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_REFUSALS = {
    duckdb.StatementType.INSERT: "writes (INSERT)",
    duckdb.StatementType.UPDATE: "writes (UPDATE)",
    duckdb.StatementType.DELETE: "writes (DELETE)",
    duckdb.StatementType.CREATE: "schema changes (CREATE)",
    duckdb.StatementType.DROP: "schema changes (DROP)",
    duckdb.StatementType.ALTER: "schema changes (ALTER)",
    duckdb.StatementType.ATTACH: "ATTACH of other databases",
    duckdb.StatementType.DETACH: "DETACH",
    duckdb.StatementType.COPY: "COPY … TO / FROM files",
    duckdb.StatementType.EXPORT: "EXPORT DATABASE",
    duckdb.StatementType.LOAD: "INSTALL / LOAD of extensions",
    duckdb.StatementType.SET: "SET / USE of settings",
}
FORMATS = ("table", "csv", "json")
LOCK_RETRIES = 5


class SqlRefused(ValueError):
    """The query is not allowed on the read-only warehouse; the message says why and what to do."""


def table_names(connection: duckdb.DuckDBPyConnection, base_tables_only: bool = False) -> set[str]:
    """Tables (and, unless `base_tables_only`, views) of the warehouse's main schema."""
    sql = "select table_name from information_schema.tables where table_schema = 'main'"
    if base_tables_only:
        sql += " and table_type = 'BASE TABLE'"
    return {row[0] for row in connection.execute(sql).fetchall()}


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise SqlRefused(f"the query does not parse: {error}") from error
    if not statements:
        raise SqlRefused("the query is empty; pass a SELECT statement")
    for statement in statements:
        if statement.type not in _ALLOWED:
            what = _REFUSALS.get(statement.type, f"{statement.type.name} statements")
            raise SqlRefused(
                f"refused: {what} are not allowed; `sae-genomics sql` is read-only and runs SELECT "
                "(and EXPLAIN) on the warehouse tables only. Tables are written by materialising assets "
                "in Dagster; to export, pipe `--format csv` or `--format json` to a file."
            )


def connect_read_only(database: Path) -> duckdb.DuckDBPyConnection:
    """Open the warehouse read-only, without file access; retry briefly while a writer holds the lock."""
    if not database.exists():
        raise FileNotFoundError(
            f"no warehouse at {database}; materialise some assets first (e.g. `make demo`), or set "
            "SAE_GENOMICS_HOME to the home that holds warehouse.duckdb"
        )
    config = {"enable_external_access": False, "lock_configuration": True}
    for attempt in range(LOCK_RETRIES):
        try:
            return duckdb.connect(str(database), read_only=True, config=config)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or attempt == LOCK_RETRIES - 1:
                raise RuntimeError(
                    f"the warehouse {database} is locked by a running materialisation; retry when it "
                    "has finished"
                ) from error
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def run_query(database: Path, sql: str) -> pl.DataFrame:
    check_read_only(sql)
    connection = connect_read_only(database)
    try:
        return connection.sql(sql).pl()
    except duckdb.PermissionException as error:
        raise SqlRefused(
            "refused: reading files (read_csv, read_parquet, glob, …), ATTACH and extensions are not "
            "allowed; `sae-genomics sql` reads only the warehouse tables. Open the file in your own "
            f"duckdb session instead. ({error})"
        ) from error
    finally:
        connection.close()


def format_frame(frame: pl.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return frame.write_csv()
    if fmt == "json":
        buffer = io.StringIO()
        frame.write_json(buffer)
        return buffer.getvalue() + "\n"
    if fmt == "table":
        with pl.Config(
            tbl_rows=-1,
            tbl_cols=-1,
            tbl_width_chars=10_000,
            fmt_str_lengths=200,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
            tbl_formatting="ASCII_MARKDOWN",
        ):
            return f"{frame}\n"
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
