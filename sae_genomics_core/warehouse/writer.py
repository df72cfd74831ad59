"""The one way to write the warehouse: a cross-process file lock, a wait while a reader holds DuckDB's
own lock, and one transaction, so parallel writers queue instead of failing and a write that fails
half-way leaves the previous rows.

DuckDB allows a single read-write process per file, and a reader outside the pipeline (`sae-genomics
sql`, a notebook) holds the file too: opening it read-write then raises "Could not set lock on file".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
from filelock import FileLock

from sae_genomics_core.warehouse.lake import connect_lake, is_lake, retry_conflicts

T = TypeVar("T")
LOCK_TIMEOUT_S = 1800.0  # how long a write waits for the warehouse (a long SQL read holds it)


def warehouse_lock(database: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> FileLock:
    """The lock every writer of the warehouse takes (held across the whole transaction)."""
    return FileLock(f"{database}.lock", timeout=timeout_s)


def connect_when_free(
    database: str | Path, config: dict[str, Any] | None = None, timeout_s: float = LOCK_TIMEOUT_S
) -> duckdb.DuckDBPyConnection:
    """Open read-write, waiting (with backoff) while another process holds DuckDB's lock on the file."""
    deadline, delay = time.monotonic() + timeout_s, 0.2
    while True:
        try:
            return duckdb.connect(str(database), read_only=False, config=config or {})
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextmanager
def warehouse_writer(
    database: str | Path, config: dict[str, Any] | None = None, timeout_s: float = LOCK_TIMEOUT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection inside one transaction, committed when the block ends and rolled back
    (keeping the previous rows) when it raises. A DuckLake needs no lock: its writers commit
    concurrently, and one that loses a race raises a conflict (see `write_transaction`)."""
    lake = is_lake(database)
    with contextlib.nullcontext() if lake else warehouse_lock(database, timeout_s):
        connection = connect_lake(database) if lake else connect_when_free(database, config, timeout_s)
        try:
            connection.execute("begin transaction")
            yield connection
            connection.execute("commit")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed commit may have ended it already
                connection.execute("rollback")
            raise
        finally:
            connection.close()


def write_transaction(database: str | Path, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`work` inside one write transaction; on a DuckLake run again (whole) when it loses a commit race."""

    def attempt() -> T:
        with warehouse_writer(database) as connection:
            return work(connection)

    return retry_conflicts(attempt) if is_lake(database) else attempt()


def replace_partition(
    database: str | Path,
    frames: Mapping[str, pl.DataFrame],
    partition: Mapping[str, Any],
    after: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> None:
    """Replace the `partition` rows (column → value; none: every row) of several tables in one transaction, so readers
    never see some tables new and others old; `after` runs inside it (e.g. refreshing a view).

    Tables and columns missing so far are created first, in a transaction of their own: DuckDB will not
    commit an ALTER in the transaction that deleted the rows."""

    def ensure_columns(connection: duckdb.DuckDBPyConnection) -> None:
        for table, frame in frames.items():
            _ensure_columns(connection, table, frame)

    # no partition columns: the tables are replaced whole
    where = " and ".join(f'"{column}" = ?' for column in partition) or "true"

    def replace(connection: duckdb.DuckDBPyConnection) -> None:
        for table, frame in frames.items():
            connection.execute(f'delete from "{table}" where {where}', list(partition.values()))
            connection.register("incoming_frame", frame.to_arrow())
            try:
                connection.execute(f'insert into "{table}" by name select * from incoming_frame')
            finally:
                connection.unregister("incoming_frame")
        if after is not None:
            after(connection)

    write_transaction(database, ensure_columns)
    write_transaction(database, replace)


def _ensure_columns(connection: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    connection.register("incoming_frame", frame.to_arrow())
    try:
        present = {
            row[0]
            for row in connection.execute(
                "select column_name from information_schema.columns where table_name = ?", [table]
            ).fetchall()
        }
        if not present:
            connection.execute(f'create table "{table}" as select * from incoming_frame limit 0')
            return
        for name, sql_type, *_ in connection.execute("describe select * from incoming_frame").fetchall():
            if name not in present:
                connection.execute(f'alter table "{table}" add column "{name}" {sql_type}')
    finally:
        connection.unregister("incoming_frame")
