"""The one warehouse writer: it waits for a reader instead of failing, and a failure keeps the old rows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sae_genomics_core.warehouse.vocab_coverage import record_vocab_coverage
from sae_genomics_core.warehouse.writer import warehouse_writer

ASSETS = Path(__file__).resolve().parents[2] / "sae_genomics_dagster" / "assets"


def _warehouse(path: Path) -> Path:
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "create table genes as select 'a' as dataset, * from (values ('ENSG1', 'A'), ('ENSG2', 'B')) "
            "v(ensembl_id, symbol)"
        )
        connection.execute("alter table genes add column in_vocab boolean")
        connection.execute("create table datasets as select 'a' as dataset, null::bigint as n_genes_in_vocab")
    return path


def _hold_read_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process reading (`sae-genomics sql`, a notebook) holds DuckDB's lock on the file."""
    code = (
        f"import duckdb, time; c = duckdb.connect({str(path)!r}, read_only=True); "
        f"print('open', flush=True); time.sleep({seconds})"
    )
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    return reader


def _coverage(path: Path) -> tuple:
    with duckdb.connect(str(path), read_only=True) as connection:
        in_vocab = connection.execute("select list(in_vocab order by ensembl_id) from genes").fetchone()
        count = connection.execute("select n_genes_in_vocab from datasets").fetchone()
    return in_vocab[0], count[0]


def test_a_write_waits_while_a_reader_holds_the_file(tmp_path: Path) -> None:
    database = _warehouse(tmp_path / "w.duckdb")
    # without the wait the same write fails on DuckDB's lock
    reader = _hold_read_lock(database, 2)
    with pytest.raises(duckdb.IOException, match="lock"):
        duckdb.connect(str(database))
    with warehouse_writer(database) as connection:
        assert record_vocab_coverage(connection, "a", {"ENSG1"}, symbols_too=False) == 1
    reader.wait(timeout=30)
    assert _coverage(database) == ([True, False], 1)


def test_a_write_that_fails_half_way_keeps_the_previous_values(tmp_path: Path) -> None:
    database = _warehouse(tmp_path / "w.duckdb")
    with warehouse_writer(database) as connection:
        record_vocab_coverage(connection, "a", {"ENSG1", "ENSG2"}, symbols_too=False)
    with pytest.raises(RuntimeError, match="half-way"), warehouse_writer(database) as connection:
        record_vocab_coverage(connection, "a", set(), symbols_too=False)
        raise RuntimeError("crashed half-way")
    assert _coverage(database) == ([True, True], 2)


def test_assets_write_only_through_the_one_writer() -> None:
    """A direct duckdb.connect in an asset module would fail on a reader's lock instead of waiting."""
    direct = {
        path.name: re.findall(r"duckdb\.connect\(", path.read_text())
        for path in ASSETS.glob("*.py")
        if re.findall(r"duckdb\.connect\(", path.read_text())
    }
    assert direct == {}


def test_tables_replaced_together_or_not_at_all(tmp_path: Path) -> None:
    import polars as pl

    from sae_genomics_core.warehouse.writer import replace_partition

    database = tmp_path / "w.duckdb"
    partition = {"dataset": "a", "layer": 1}

    def frames(checkpoint: str, value: object) -> dict[str, pl.DataFrame]:
        row = {"dataset": "a", "layer": 1, "checkpoint_id": checkpoint}
        return {"first": pl.DataFrame([{**row, "x": 1}]), "second": pl.DataFrame([{**row, "x": value}])}

    replace_partition(database, frames("old", 2), partition)
    replace_partition(
        database, {"first": pl.DataFrame([{"dataset": "b", "layer": 1, "x": 9}])}, {"dataset": "b"}
    )
    # the second table's insert fails (a value that cannot be cast): the first table must stay old too
    with pytest.raises(duckdb.Error):
        replace_partition(database, frames("new", "not a number"), partition)
    with duckdb.connect(str(database), read_only=True) as connection:
        checkpoints = connection.execute(
            "select checkpoint_id from first where dataset = 'a' union all select checkpoint_id from second"
        ).fetchall()
        other = connection.execute("select x from first where dataset = 'b'").fetchall()
    assert checkpoints == [("old",), ("old",)] and other == [(9,)]
    replace_partition(
        database, frames("new", 3), partition, after=lambda c: c.execute("create view v as select 1")
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("select distinct checkpoint_id from second").fetchall() == [("new",)]
        assert connection.execute("select * from v").fetchall() == [(1,)]
