"""The warehouse in DuckLake: the catalog in Postgres, the data as Parquet on object storage, so workers
on different machines commit tables concurrently ($SAE_GENOMICS_WAREHOUSE=ducklake:postgres:…,
$SAE_GENOMICS_LAKE_DATA=s3://bucket/prefix/). DuckDB reads and writes it through its ducklake, httpfs
and postgres_scanner extensions, loaded offline from their wheels (`duckdb-extension-*`, pinned with
duckdb in requirements.lock).

DuckLake commits optimistically: two transactions replacing rows of one table conflict, and the later
one must run again (`retry_conflicts`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import duckdb

from sae_genomics_core.config import Environment, secret
from sae_genomics_core.errors import SettingsError

PREFIX = "ducklake:"
ALIAS = "lake"
EXTENSIONS = ("ducklake", "httpfs", "postgres_scanner")
CONFLICT_RETRIES = 12
T = TypeVar("T")


def is_lake(database: str | Path) -> bool:
    return str(database).startswith(PREFIX)


def warehouse_exists(database: str | Path) -> bool:
    """A DuckDB file that exists, or a lake (which exists once attached)."""
    return is_lake(database) or Path(database).exists()


def _extension_file(name: str) -> str:
    """The extension shipped in the `duckdb-extension-<name>` wheel (no download at run time)."""
    import importlib

    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as error:
        raise SettingsError(
            f"the DuckDB extension {name} is not installed",
            fix='install the cluster extras: pip install -c requirements.lock ".[cluster]"',
        ) from error
    (found,) = Path(package.__file__).parent.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension")
    return str(found)


def _s3_secret(connection: duckdb.DuckDBPyConnection, environment: Environment) -> None:
    options = {"TYPE": "s3", "REGION": environment.s3_region}
    key, key_secret = secret("AWS_ACCESS_KEY_ID"), secret("AWS_SECRET_ACCESS_KEY")
    if key and key_secret:
        options |= {"KEY_ID": key, "SECRET": key_secret}
    if environment.s3_endpoint:  # an S3 server other than AWS: host:port, path-style URLs
        endpoint = urlparse(environment.s3_endpoint)
        options |= {"ENDPOINT": endpoint.netloc, "URL_STYLE": "path", "USE_SSL": endpoint.scheme == "https"}
    rendered = ", ".join(
        f"{name} {value!r}" if isinstance(value, str) else f"{name} {value}"
        for name, value in options.items()
    )
    connection.execute(f"create or replace secret lake_s3 ({rendered})")


def connect_lake(database: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached (read-only or not) and in use."""
    environment = Environment.read()
    if not environment.lake_data:
        raise SettingsError(
            f"{str(database)[:40]}… is a DuckLake, but $SAE_GENOMICS_LAKE_DATA (where its Parquet files go) is unset",
            fix="set SAE_GENOMICS_LAKE_DATA=s3://bucket/prefix/",
        )
    connection = duckdb.connect(":memory:", config={"custom_user_agent": "sae-genomics"})
    try:
        for name in EXTENSIONS:
            connection.execute(f"load '{_extension_file(name)}'")
        _s3_secret(connection, environment)
        options = f"DATA_PATH '{environment.lake_data}'"
        if read_only and not _initialised(connection, database, options):
            connection.execute(f"attach '{database}' as {ALIAS} ({options})")  # creates the empty lake
            connection.execute(f"detach {ALIAS}")
        connection.execute(f"attach '{database}' as {ALIAS} ({options}{', READ_ONLY' if read_only else ''})")
        connection.execute(f"use {ALIAS}")
    except BaseException:
        connection.close()
        raise
    return connection


def _initialised(connection: duckdb.DuckDBPyConnection, database: str | Path, options: str) -> bool:
    """Whether the lake's catalog exists (a read-only attach cannot create it)."""
    try:
        connection.execute(f"attach '{database}' as {ALIAS} ({options}, READ_ONLY)")
    except duckdb.InvalidInputException as error:
        if "does not exist" not in str(error):
            raise
        return False
    connection.execute(f"detach {ALIAS}")
    return True


def is_conflict(error: BaseException) -> bool:
    return isinstance(error, duckdb.Error) and "conflict" in str(error).lower()


def retry_conflicts(work: Callable[[], T], retries: int = CONFLICT_RETRIES) -> T:
    """Run `work` (one whole transaction) again while it loses a commit race, with jittered backoff."""
    for attempt in range(retries):
        try:
            return work()
        except duckdb.Error as error:
            if not is_conflict(error) or attempt == retries - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@dataclass(frozen=True, kw_only=True)
class MaintenanceSettings:
    keep_days: float = 7.0  # snapshots (time travel) kept this long; their replaced files until then


def maintain_lake(database: str | Path, settings: MaintenanceSettings | None = None) -> dict[str, int]:
    """Expire the lake's snapshots older than `keep_days` and delete the data files no snapshot needs any
    more (DuckLake keeps every replaced file until then); counts of what went."""
    keep_days = (settings or MaintenanceSettings()).keep_days
    connection = connect_lake(database)
    try:
        older_than = f"now() - interval '{float(keep_days) * 86400:.0f} seconds'"
        expired = connection.execute(
            f"call ducklake_expire_snapshots('{ALIAS}', older_than => {older_than})"
        ).fetchall()
        deleted = connection.execute(
            f"call ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)"
        ).fetchall()
    finally:
        connection.close()
    return {"snapshots_expired": len(expired), "files_deleted": len(deleted)}
