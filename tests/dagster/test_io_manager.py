from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from sae_genomics_dagster.io_manager import WarehouseIOManager

parts = dg.StaticPartitionsDefinition(["a", "b"])


def _materialise(database: Path, frame_for: dict[str, pl.DataFrame], key: str) -> dg.ExecuteInProcessResult:
    @dg.asset(name="things", partitions_def=parts, metadata={"partition_expr": "part"})
    def things(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return frame_for[context.partition_key]

    return dg.materialize(
        [things],
        partition_key=key,
        resources={"io_manager": WarehouseIOManager(database=str(database), schema="main")},
        raise_on_error=False,
    )


def _rows(database: Path) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute("select * from things order by all").fetchall()


def test_failed_write_keeps_previous_slice(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    good = {
        "a": pl.DataFrame({"part": ["a", "a"], "value": [1, 2]}),
        "b": pl.DataFrame({"part": ["b"], "value": [3]}),
    }
    assert _materialise(database, good, "a").success
    assert _materialise(database, good, "b").success
    # the delete of slice 'a' succeeds, the insert cannot cast: the whole write must roll back
    broken = {"a": pl.DataFrame({"part": ["a"], "value": ["not a number"]})}
    assert not _materialise(database, broken, "a").success
    assert _rows(database) == [("a", 1), ("a", 2), ("b", 3)]


def test_new_columns_are_added_and_rows_insert_by_name(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    assert _materialise(database, {"a": pl.DataFrame({"part": ["a"], "value": [1]})}, "a").success
    wider = {"b": pl.DataFrame({"extra": ["x"], "value": [5], "part": ["b"]})}  # new column, other order
    assert _materialise(database, wider, "b").success
    assert _rows(database) == [("a", 1, None), ("b", 5, "x")]
    # and an existing slice re-written with yet another column replaces its rows
    wider_again = {"a": pl.DataFrame({"part": ["a"], "value": [7], "extra": ["y"], "more": [1.5]})}
    assert _materialise(database, wider_again, "a").success
    assert _rows(database) == [("a", 7, "y", 1.5), ("b", 5, "x", None)]


def test_writes_wait_while_a_reader_holds_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    database = tmp_path / "w.duckdb"
    assert _materialise(database, {"a": pl.DataFrame({"part": ["a"], "value": [1]})}, "a").success
    # another process reading (e.g. `sae-genomics sql` or a notebook) holds DuckDB's lock for a while
    code = f"import duckdb, time; c = duckdb.connect({str(database)!r}, read_only=True); print('open', flush=True); time.sleep(2)"
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "open"
    assert _materialise(database, {"b": pl.DataFrame({"part": ["b"], "value": [2]})}, "b").success
    reader.wait(timeout=30)
    assert _rows(database) == [("a", 1), ("b", 2)]


def test_writes_wait_for_the_warehouse_lock(tmp_path: Path) -> None:
    from filelock import Timeout

    from sae_genomics_core.warehouse.writer import warehouse_lock

    database = tmp_path / "w.duckdb"

    @dg.asset(name="things", partitions_def=parts, metadata={"partition_expr": "part"})
    def things() -> pl.DataFrame:
        return pl.DataFrame({"part": ["a"], "value": [1]})

    with warehouse_lock(str(database)):
        result = dg.materialize(
            [things],
            partition_key="a",
            resources={
                "io_manager": WarehouseIOManager(database=str(database), schema="main", lock_timeout_s=0.2)
            },
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert Timeout.__name__ in failure.step_failure_data.error.to_string()
    assert not database.exists()
