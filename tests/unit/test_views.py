"""The feature_summary view on a real DuckDB: which cell type and which term a reader is shown."""

from __future__ import annotations

import duckdb
import pytest

from sae_genomics_core.warehouse.views import create_feature_summary

KEY = "'d' as dataset, 0 as layer"


@pytest.fixture
def connection() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(
        f"create table feature_stats as select {KEY}, feature, 0.1 as frequency, 10 as fire_count, "
        "5 as n_cells_active, 1.0 as mean_activation, 2.0 as max_activation from range(3) t(feature)"
    )
    db.execute(
        f"create table feature_genes as select {KEY}, 0 as feature, 'G' as symbol, 'E' as ensembl_id, 1 as rank"
    )
    # feature 0: the large type has the smallest q but a small fold change, a tiny type the largest fold
    # change from a lucky mean (its lower bound below 0); feature 1: nothing significant
    db.execute(
        f"""create table feature_cell_types as select {KEY}, * from (values
            (0, 'T cell', 1e-30, 0.4, 0.3), (0, 'NK cell', 1e-4, 3.0, 2.0), (0, 'B cell', 0.2, 5.0, 1.0),
            (0, 'pDC', 0.01, 6.0, -0.5), (1, 'T cell', 0.3, 1.0, -1.0), (1, 'B cell', 0.1, 0.5, -0.2))
            v(feature, cell_type, q_value, log2_fold_change, log2_fold_change_lower)"""
    )
    return db


def test_top_cell_type_is_the_significant_type_with_the_largest_fold_change_lower_bound(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    create_feature_summary(connection)
    rows = connection.execute(
        "select feature, top_cell_type, top_cell_type_q_value, top_cell_type_log2_fold_change "
        "from feature_summary order by feature"
    ).fetchall()
    assert rows[0] == (0, "NK cell", 1e-4, 3.0)  # not T's tiny q, not B's q = 0.2, not pDC's lucky mean
    assert rows[1] == (1, "B cell", 0.1, 0.5)  # none significant: the smallest q
    assert rows[2][1] is None  # no cell type rows


def test_only_replicated_terms_count_and_top_term_falls_back_to_the_term_id(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    connection.execute(
        f"""create table enrichment as select {KEY}, * from (values
            (0, 'monarch', 'ORPHA:803', null, -5.0, 0.01, true, null, true),
            (0, 'hpo', 'HP:0001250', 'Seizure', -3.0, 0.04, true, true, true),
            (0, 'hpo', 'HP:0000002', 'Stronger, not replicated', -9.0, 0.001, true, true, false),
            (1, 'hpo', 'HP:0000001', 'All', -1.0, 0.5, false, null, false),
            (2, 'string', 'STRING:x', 'network', -4.0, 0.01, true, null, false))
            v(feature, database, term_id, term_name, log10_p_value, q_value, significant, most_specific,
              replicated)"""
    )
    create_feature_summary(connection)
    rows = connection.execute(
        "select feature, top_term, n_databases_replicated, n_significant_terms, n_replicated_terms "
        "from feature_summary order by feature"
    ).fetchall()
    assert rows[0] == (0, "ORPHA:803", 2, 3, 2)  # HP:0000002 is significant but did not replicate
    assert rows[1] == (1, None, 0, 0, 0)
    assert rows[2] == (2, None, 0, 1, 0)


def test_a_replicated_cell_type_wins_and_tables_without_the_column_count_none(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    create_feature_summary(connection)  # written before replication existed: nothing is replicated
    assert connection.execute(
        "select count(*) from feature_summary where top_cell_type_replicated"
    ).fetchone() == (0,)
    connection.execute("alter table feature_cell_types add column replicated boolean")
    connection.execute("update feature_cell_types set replicated = (cell_type = 'T cell' and feature = 0)")
    create_feature_summary(connection)
    row = connection.execute(
        "select top_cell_type, top_cell_type_replicated from feature_summary where feature = 0"
    ).fetchone()
    assert row == ("T cell", True)  # replicated beats NK's larger bound, which did not replicate


def test_the_view_keeps_its_columns_before_any_enrichment(connection: duckdb.DuckDBPyConnection) -> None:
    create_feature_summary(connection)
    before = connection.execute("describe feature_summary").fetchall()
    connection.execute(
        f"""create table enrichment as select {KEY}, * from (values
            (0, 'hpo', 'HP:0001250', 'Seizure', -3.0::double, 0.04::double, true, true, 'hpo'))
            v(feature, database, term_id, term_name, log10_p_value, q_value, significant, most_specific,
              evidence_source)"""
    )
    create_feature_summary(connection)
    after = connection.execute("describe feature_summary").fetchall()
    assert [row[:2] for row in before] == [row[:2] for row in after]  # names and types
