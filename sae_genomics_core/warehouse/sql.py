"""Read-only SQL on the warehouse, for people and scripts.

Two guards: statements other than queries are refused before they run, with a message that says
why; and the connection itself is read-only with file-system access disabled, so a query cannot
read or write files, attach databases or load extensions even if it slips past the first guard.
The pre-check parses on an in-memory connection with file access disabled too: DuckDB's parser
reads `<dir>/schema.sql` for IMPORT DATABASE, so parsing on an open connection would touch files.

Two limits keep one query from holding the read lock (and so every writer) for long: a timeout
(`connection.interrupt()` from a timer; DuckDB has no per-query timeout setting) and a row cap
(results are streamed and at most `max_rows + 1` rows are fetched).
"""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from sae_genomics_core.config import Environment
from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.warehouse.lake import connect_lake, is_lake

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
_IMPORT = "IMPORT DATABASE (and other statements that read files while parsing)"
_WORD = re.compile(r"\w*")
_SANDBOX = {"enable_external_access": False, "lock_configuration": True}
FORMATS = ("table", "csv", "json")
LOCK_RETRIES = 5
DEFAULT_TIMEOUT_S = 300.0  # `sae-genomics sql --timeout`; 0 = no limit
DEFAULT_MAX_ROWS = 100_000  # `sae-genomics sql --max-rows`; 0 = no limit
_REINTERRUPT_S = 0.01  # how often a fired watchdog repeats its interrupt
_BATCH_ROWS = 10_000  # rows per streamed batch; the row cap is checked between batches


class SqlRefused(SaeGenomicsError, ValueError):
    """The query is not allowed on the read-only warehouse; the message says why and what to do."""


class SqlTimedOut(SaeGenomicsError, RuntimeError):
    """The query ran past its time limit and was stopped; the warehouse is unlocked again."""


class SqlTooManyRows(SaeGenomicsError, RuntimeError):
    """`run_query` got more rows than its cap (callers that can show a cut result use `query_warehouse`)."""


@dataclass(frozen=True)
class QueryResult:
    frame: pl.DataFrame  # at most max_rows rows
    truncated: bool  # the query returned more rows than max_rows; `frame` holds the first max_rows
    max_rows: int


def table_names(connection: duckdb.DuckDBPyConnection, base_tables_only: bool = False) -> set[str]:
    """Tables (and, unless `base_tables_only`, views) of the warehouse's main schema."""
    sql = "select table_name from information_schema.tables where table_schema = 'main'"
    if base_tables_only:
        sql += " and table_type = 'BASE TABLE'"
    return {row[0] for row in connection.execute(sql).fetchall()}


def error_text(error: BaseException) -> str:
    """DuckDB's message without the C++ stack trace some of its errors carry."""
    return str(error).split("\n\nStack Trace")[0].strip()


def _refusal(what: str) -> SqlRefused:
    return SqlRefused(
        f"refused: {what} are not allowed; `sae-genomics sql` is read-only and runs SELECT "
        "(and EXPLAIN) on the warehouse tables only. Tables are written by materialising assets "
        "in Dagster; to export, pipe `--format csv` or `--format json` to a file."
    )


def _imports_a_database(sql: str) -> bool:
    """IMPORT DATABASE found by the tokenizer alone (no parsing: the parser would read the dump)."""
    words = [
        _WORD.match(sql, start).group().upper() if kind == duckdb.token_type.keyword else ""
        for start, kind in duckdb.tokenize(sql)
    ]
    return any(pair == ("IMPORT", "DATABASE") for pair in itertools.pairwise(words))


def check_read_only(sql: str) -> None:
    try:
        imports = _imports_a_database(sql)
    except duckdb.Error as error:
        raise SqlRefused(f"the query does not parse: {error_text(error)}") from None
    if imports:
        raise _refusal(_IMPORT)
    with duckdb.connect(":memory:", config=_SANDBOX) as sandbox:
        try:
            statements = sandbox.extract_statements(sql)
        except duckdb.PermissionException:
            # the parser wanted a file (IMPORT DATABASE): refuse without saying whether it exists
            raise _refusal(_IMPORT) from None
        except duckdb.Error as error:
            raise SqlRefused(f"the query does not parse: {error_text(error)}") from None
    if not statements:
        raise SqlRefused("the query is empty; pass a SELECT statement")
    for statement in statements:
        if statement.type not in _ALLOWED:
            raise _refusal(_REFUSALS.get(statement.type, f"{statement.type.name} statements"))
    if len(statements) > 1:
        # only the last result would be shown: refuse rather than silently drop the others
        raise SqlRefused(
            f"{len(statements)} statements were given; run one at a time (one `sae-genomics sql` call each)"
        )


def connect_read_only(database: Path) -> duckdb.DuckDBPyConnection:
    """Open the warehouse read-only, without file access; retry briefly while a writer holds the lock."""
    if is_lake(database):
        return _connect_lake_read_only(database)
    if not database.exists():
        raise FileNotFoundError(
            f"no warehouse at {database}; materialise some assets first (e.g. `make demo`), or set "
            "SAE_GENOMICS_HOME to the home that holds warehouse.duckdb"
        )
    for attempt in range(LOCK_RETRIES):
        try:
            return duckdb.connect(str(database), read_only=True, config=_SANDBOX)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or attempt == LOCK_RETRIES - 1:
                raise RuntimeError(
                    f"the warehouse {database} is locked by a running materialisation; retry when it "
                    "has finished"
                ) from error
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _connect_lake_read_only(database: Path) -> duckdb.DuckDBPyConnection:
    """The lake attached read-only; then no file or network access but the lake's own data files."""
    connection = connect_lake(database, read_only=True)
    data = Environment.read().lake_data
    connection.execute("set allowed_directories = [?]", [data])
    connection.execute("set enable_external_access = false")
    connection.execute("set lock_configuration = true")
    return connection


class _Watchdog:
    """Interrupts the connection's query after `timeout_s` (0: never); `fired` says it did.

    It keeps interrupting until cancelled: DuckDB forgets an interrupt that lands before the query
    has started.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection, timeout_s: float):
        self.fired = threading.Event()
        self._done = threading.Event()
        self._connection = connection
        self._timeout_s = timeout_s
        self._thread = threading.Thread(target=self._watch, daemon=True) if timeout_s > 0 else None
        if self._thread:
            self._thread.start()

    def _watch(self) -> None:
        if self._done.wait(self._timeout_s):
            return
        self.fired.set()
        while True:
            self._connection.interrupt()
            if self._done.wait(_REINTERRUPT_S):
                return

    def cancel(self) -> None:
        """Stop watching; after this the connection may be closed."""
        self._done.set()
        if self._thread:
            self._thread.join()


def _fetch(connection: duckdb.DuckDBPyConnection, sql: str, max_rows: int) -> tuple[pa.Table, bool]:
    """At most max_rows + 1 rows (0: all), streamed so a huge result is never held whole."""
    reader = connection.execute(sql).to_arrow_reader(_BATCH_ROWS)
    batches: list[pa.RecordBatch] = []
    n_rows = 0
    for batch in reader:
        batches.append(batch)
        n_rows += batch.num_rows
        if max_rows and n_rows > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    truncated = bool(max_rows) and table.num_rows > max_rows
    return (table.slice(0, max_rows) if truncated else table), truncated


def _timed_out(timeout_s: float) -> SqlTimedOut:
    return SqlTimedOut(
        f"the query ran longer than {timeout_s:g} s and was stopped (the warehouse is unlocked again). "
        "Narrow it (a WHERE on dataset or layer, an aggregate, a LIMIT), or allow more time with "
        "`--timeout SECONDS` (0 = no limit)"
    )


def query_warehouse(
    database: Path,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> QueryResult:
    """Run a read-only query, stopped after `timeout_s` and cut after `max_rows` rows (0: no limit)."""
    if timeout_s < 0 or max_rows < 0:
        raise ValueError("timeout_s and max_rows must be ≥ 0 (0 = no limit)")
    check_read_only(sql)
    connection = connect_read_only(database)
    watchdog = _Watchdog(connection, timeout_s)
    try:
        table, truncated = _fetch(connection, sql, max_rows)
    except duckdb.PermissionException:
        raise SqlRefused(
            "refused: reading files (read_csv, read_parquet, glob, …), ATTACH and extensions are not "
            "allowed; `sae-genomics sql` reads only the warehouse tables. Open the file in your own "
            "duckdb session instead."
        ) from None
    except (duckdb.Error, OSError) as error:  # a stopped stream surfaces as pyarrow's OSError
        if watchdog.fired.is_set():
            raise _timed_out(timeout_s) from None
        cleaned = type(error)(error_text(error)) if isinstance(error, duckdb.Error) else None
        raise cleaned or duckdb.Error(error_text(error)) from None
    finally:
        watchdog.cancel()
        connection.close()
    return QueryResult(pl.DataFrame(pl.from_arrow(table)), truncated, max_rows)


def run_query(
    database: Path,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> pl.DataFrame:
    """The whole result as a frame; SqlTooManyRows rather than a silently cut one."""
    result = query_warehouse(database, sql, timeout_s=timeout_s, max_rows=max_rows)
    if result.truncated:
        raise SqlTooManyRows(too_many_rows(max_rows, "max_rows=0"))
    return result.frame


def too_many_rows(max_rows: int, lift: str = "`--max-rows N` (0 = no limit)") -> str:
    return (
        f"the result has more than {max_rows:,} rows and was cut there; aggregate or add a LIMIT, "
        f"or allow more rows with {lift}"
    )


def _json_text(value: object) -> str:
    return json.dumps(value.to_list() if isinstance(value, pl.Series) else value, default=str)


def format_frame(frame: pl.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        # CSV has no nested values: lists and structs are written as JSON text in their cell
        nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
        as_json = [pl.col(name).map_elements(_json_text, return_dtype=pl.String) for name in nested]
        return frame.with_columns(as_json).write_csv()
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
