"""genes.in_vocab and datasets.n_genes_in_vocab, recorded on a real DuckDB once a model's vocab is known."""

from __future__ import annotations

import duckdb

from sae_genomics_core.warehouse.vocab_coverage import record_vocab_coverage


def _warehouse() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute("create table datasets (dataset varchar, n_genes_in_vocab bigint)")
    db.execute("insert into datasets values ('a', null), ('b', null)")
    db.execute("create table genes (dataset varchar, ensembl_id varchar, symbol varchar, in_vocab boolean)")
    db.execute(
        "insert into genes values ('a', 'ENSG1', 'X', null), ('a', 'ENSG2', 'Y', null), ('a', null, 'Z', null), "
        "('b', 'ENSG1', 'X', null)"
    )
    return db


def test_ensembl_ids_decide_and_other_datasets_are_untouched() -> None:
    db = _warehouse()
    assert record_vocab_coverage(db, "a", {"<cls>", "<pad>", "ENSG1", "Z"}, symbols_too=False) == 1
    flags = db.execute("select symbol, in_vocab from genes where dataset = 'a' order by symbol").fetchall()
    assert flags == [("X", True), ("Y", False), ("Z", False)]  # a symbol never stands in for a real model
    assert db.execute("select * from datasets order by dataset").fetchall() == [("a", 1), ("b", None)]
    assert db.execute("select in_vocab from genes where dataset = 'b'").fetchone() == (None,)


def test_a_tiny_random_vocab_matches_symbols_where_ids_are_missing() -> None:
    db = _warehouse()
    assert record_vocab_coverage(db, "a", {"ENSG1", "Z"}, symbols_too=True) == 2


def test_a_warehouse_without_the_tables_is_left_alone() -> None:
    assert record_vocab_coverage(duckdb.connect(), "a", {"ENSG1"}, symbols_too=False) is None
