"""The warehouse in DuckLake (catalog in a real PostgreSQL, Parquet on a real S3 server): the same writer,
one transaction per write that keeps the previous rows on failure, concurrent writers that all land, and
the read-only SQL with its refusals."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pytest

from sae_genomics_core.annotations.store import read_table
from sae_genomics_core.config import Environment
from sae_genomics_core.warehouse.sql import SqlRefused, query_warehouse
from sae_genomics_core.warehouse.writer import replace_partition, write_transaction
from tests.servers import S3Server, new_database

WRITER = """
import sys, polars as pl
from sae_genomics_core.warehouse.writer import replace_partition
lake, dataset = sys.argv[1], sys.argv[2]
for round in range(8):
    frame = pl.DataFrame({"dataset": [dataset] * 3, "value": [round] * 3})
    replace_partition(lake, {"shared": frame}, {"dataset": dataset})
"""


@pytest.fixture
def lake(s3_server: S3Server, postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"lake_{uuid.uuid4().hex[:8]}"
    s3_server.bucket(name.replace("_", "-"))
    for variable, value in s3_server.environment.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SAE_GENOMICS_LAKE_DATA", f"s3://{name.replace('_', '-')}/data/")
    return f"ducklake:postgres:{new_database(postgres_server, name)}"


def test_partitions_are_replaced_in_one_transaction_and_a_failure_keeps_the_old_rows(lake: str) -> None:
    first = pl.DataFrame({"dataset": ["a", "a"], "layer": [1, 1], "value": [1.0, 2.0]})
    replace_partition(lake, {"t": first}, {"dataset": "a", "layer": 1})
    replace_partition(
        lake, {"t": first.with_columns(pl.lit("b").alias("dataset"))}, {"dataset": "b", "layer": 1}
    )
    newer = pl.DataFrame({"dataset": ["a"], "layer": [1], "value": [9.0], "extra": ["new column"]})
    replace_partition(lake, {"t": newer}, {"dataset": "a", "layer": 1})
    table = read_table(Path(lake), "t")
    assert table is not None and table.sort("dataset")["value"].to_list() == [9.0, 1.0, 2.0]
    assert table.filter(pl.col("dataset") == "a")["extra"].to_list() == ["new column"]

    def fail_half_way(connection: duckdb.DuckDBPyConnection) -> None:
        connection.execute("delete from t where dataset = 'b'")
        raise RuntimeError("the worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        write_transaction(lake, fail_half_way)
    assert read_table(Path(lake), "t").filter(pl.col("dataset") == "b").height == 2  # type: ignore[union-attr]


def test_concurrent_writers_of_one_table_all_land(lake: str) -> None:
    replace_partition(lake, {"shared": pl.DataFrame({"dataset": ["x"], "value": [0]})}, {"dataset": "x"})
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, lake, dataset], stderr=subprocess.PIPE, text=True)
        for dataset in ("x", "y", "z")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr[-2000:]
    shared = read_table(Path(lake), "shared")
    assert shared is not None
    counts = shared.group_by("dataset").agg(pl.len(), pl.col("value").max()).sort("dataset")
    assert counts.rows() == [("x", 3, 7), ("y", 3, 7), ("z", 3, 7)]


def test_sql_reads_the_lake_read_only(lake: str, tmp_path: Path) -> None:
    replace_partition(lake, {"cells": pl.DataFrame({"dataset": ["d"], "cell_id": ["c1"]})}, {"dataset": "d"})
    result = query_warehouse(Path(lake), "select count(*) as n from cells")
    assert result.frame.to_dicts() == [{"n": 1}]
    with pytest.raises(SqlRefused):
        query_warehouse(Path(lake), "delete from cells")
    secret_file = tmp_path / "secret.csv"
    secret_file.write_text("a\n1\n")
    with pytest.raises(Exception, match=r"(?i)permission|not allowed|disabled"):
        query_warehouse(Path(lake), f"select * from read_csv('{secret_file}')")


def test_maintenance_expires_old_snapshots_and_deletes_their_files(lake: str, s3_server: S3Server) -> None:
    import s3fs

    from sae_genomics_core.warehouse.lake import MaintenanceSettings, maintain_lake

    for value in range(5):  # enough rows to be Parquet files (DuckLake keeps a few rows in the catalog)
        frame = pl.DataFrame({"dataset": ["a"] * 5000, "value": [value] * 5000})
        replace_partition(lake, {"t": frame}, {"dataset": "a"})
    s3 = s3fs.S3FileSystem(**s3_server.storage_options)
    data = Environment.read().lake_data.removeprefix("s3://")  # type: ignore[union-attr]
    before = len(s3.find(data))
    done = maintain_lake(lake, MaintenanceSettings(keep_days=0))
    s3.invalidate_cache()
    after = len(s3.find(data))
    assert done["snapshots_expired"] > 0 and done["files_deleted"] > 0
    assert after < before
    assert read_table(Path(lake), "t")["value"].unique().to_list() == [4]  # type: ignore[index]


def test_a_new_lake_reads_as_empty(lake: str) -> None:
    assert read_table(Path(lake), "cells") is None  # a reader first: the empty lake is created
    replace_partition(lake, {"cells": pl.DataFrame({"dataset": ["d"]})}, {"dataset": "d"})
    assert read_table(Path(lake), "cells").height == 1  # type: ignore[union-attr]
