"""The public table contract (warehouse.schema.TABLES) covers what the code writes, without running the
pipeline: every column a table's code-level constant names is described, with the DuckDB type the
warehouse gives it (a polars frame of that schema written through DuckDB), and every description is
one non-empty line."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import polars as pl
import pytest

from sae_genomics_core.annotations.base import ANNOTATION_SCHEMA
from sae_genomics_core.annotations.identifiers import OPTIONAL_HGNC_COLUMNS, REQUIRED_HGNC_COLUMNS
from sae_genomics_core.annotations.refresh import CLIENTS
from sae_genomics_core.enrichment.baselines import BASELINE_SCHEMA
from sae_genomics_core.enrichment.enrich import ENRICHMENT_SCHEMA, HELD_OUT_SCHEMA
from sae_genomics_core.enrichment.inputs import ontology_table
from sae_genomics_core.enrichment.ontology import ANCESTORS_SCHEMA, TERMS_SCHEMA, OntologyTables
from sae_genomics_core.features.associate import TOP_CELLS_SCHEMA
from sae_genomics_core.features.cell_types import SCHEMA as CELL_TYPE_SCHEMA
from sae_genomics_core.pipeline import effects, features, stability
from sae_genomics_core.pipeline.result import keyed
from sae_genomics_core.pipeline.sae import FIDELITY_COLUMNS, OPTIONAL_METRICS
from sae_genomics_core.warehouse.schema import ANNOTATION_COLUMNS, ANNOTATION_DATABASES, TABLES

DERIVED_FROM = {"checkpoint_id": "c", "activations_checksum": "sha256:0"}
CHECKPOINT_ONLY = {"checkpoint_id": "c"}

# table → the polars schema of (some of) its columns, as the code that builds it declares them
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "feature_cell_types": dict(CELL_TYPE_SCHEMA),
    "feature_cells": dict(TOP_CELLS_SCHEMA),
    "enrichment": ENRICHMENT_SCHEMA | HELD_OUT_SCHEMA,
    "enrichment_baselines": dict(BASELINE_SCHEMA),
    "sae_checkpoints": {**dict.fromkeys(FIDELITY_COLUMNS, pl.Float64()), **OPTIONAL_METRICS},
    "feature_stability": dict(stability.FEATURE_SCHEMA),
    "hpo_ontology": dict(TERMS_SCHEMA),
    **{f"annotations_{database}": dict(ANNOTATION_SCHEMA) for database in CLIENTS},
}
# table → column names the code writes (where it names them without types)
NAMES: dict[str, list[str]] = {
    "feature_genes": list(features.GENE_COLUMNS),
    "feature_cell_genes": list(features.CELL_GENE_COLUMNS),
    "feature_effects": list(effects.GENE_COLUMNS),
    "sae_checkpoints": list(FIDELITY_COLUMNS),
    "sae_stability": [f"{name}_{stat}" for name in stability.SEED_METRICS for stat in ("mean", "sd")],
    "gene_identifiers": [*REQUIRED_HGNC_COLUMNS.values(), *OPTIONAL_HGNC_COLUMNS.values()],
    **{name: list(schema) for name, schema in SCHEMAS.items()},
}
# dataset × layer tables written through pipeline.result.keyed, and what they record last
KEYED: dict[str, dict[str, str]] = {
    **dict.fromkeys(features.FEATURE_TABLES, DERIVED_FROM),
    "enrichment": DERIVED_FROM,
    "enrichment_baselines": DERIVED_FROM,
    **dict.fromkeys(stability.STABILITY_TABLES, CHECKPOINT_ONLY),
    **dict.fromkeys(effects.EFFECT_TABLES, CHECKPOINT_ONLY),
}
DUCKDB_TYPES = {"BIGINT", "INTEGER", "DOUBLE", "VARCHAR", "BOOLEAN", "TIMESTAMP WITH TIME ZONE"}


def undescribed(table: str, names: Iterable[str]) -> list[str]:
    return [name for name in names if name not in TABLES.get(table, {})]


def duckdb_types(frame: pl.DataFrame) -> dict[str, str]:
    """The column types DuckDB gives `frame` when the warehouse writes it (create table … as select)."""
    with duckdb.connect() as connection:
        connection.register("incoming_frame", frame)
        connection.execute("create table written as select * from incoming_frame")
        rows = connection.execute(
            "select column_name, data_type from information_schema.columns where table_name = 'written' "
            "order by ordinal_position"
        ).fetchall()
    return dict(rows)


def test_every_description_is_one_nonempty_line_with_a_duckdb_type() -> None:
    problems = []
    for table, columns in TABLES.items():
        for name, (sql_type, description) in columns.items():
            if sql_type.removesuffix("[]") not in DUCKDB_TYPES:
                problems.append(f"{table}.{name}: type {sql_type!r}")
            if not isinstance(description, str) or not description.strip() or "\n" in description:
                problems.append(f"{table}.{name}: description {description!r}")
    assert not problems, problems


@pytest.mark.parametrize("table", sorted(NAMES))
def test_every_column_the_code_names_is_described(table: str) -> None:
    assert undescribed(table, NAMES[table]) == [], f"describe these columns of {table} in warehouse/schema.py"


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_described_types_are_those_duckdb_gives(table: str) -> None:
    written = duckdb_types(pl.DataFrame(schema=SCHEMAS[table]))
    described = {name: TABLES[table][name][0] for name in written if name in TABLES[table]}
    assert described == {name: written[name] for name in described}


@pytest.mark.parametrize("table", sorted(KEYED))
def test_keyed_tables_describe_partition_keys_first_and_provenance_last(table: str) -> None:
    body = SCHEMAS.get(table, {"feature": pl.Int64()} if "feature" in TABLES[table] else {})
    frame = keyed(pl.DataFrame(schema=body), "d", 0, KEYED[table])
    names = list(TABLES[table])
    assert names[:2] == frame.columns[:2] == ["dataset", "layer"]
    assert names[-len(KEYED[table]) :] == list(KEYED[table])
    written = duckdb_types(frame)
    assert {name: TABLES[table][name][0] for name in written} == written


@pytest.mark.parametrize(
    ("table", "body"),
    [
        ("feature_cell_types", CELL_TYPE_SCHEMA),
        ("enrichment_baselines", BASELINE_SCHEMA),
        ("feature_genes", dict.fromkeys(features.GENE_COLUMNS, pl.Null())),
    ],
)
def test_tables_built_wholly_from_constants_are_described_column_for_column(
    table: str, body: dict[str, pl.DataType]
) -> None:
    frame = keyed(pl.DataFrame(schema=body), "d", 0, KEYED[table])
    assert list(TABLES[table]) == frame.columns


def test_enrichment_columns_in_order() -> None:
    """keyed, then the tested pairs, their held-out evaluation, the source columns and the provenance."""
    expected = [
        *("dataset", "layer", *ENRICHMENT_SCHEMA, *HELD_OUT_SCHEMA),
        *("evidence_source", "source_version", *DERIVED_FROM),
    ]
    assert list(TABLES["enrichment"]) == expected


def test_hpo_ontology_is_described_as_ontology_table_writes_it() -> None:
    empty = OntologyTables(
        "hpo", "2023-01-27", pl.DataFrame(schema=TERMS_SCHEMA), pl.DataFrame(schema=ANCESTORS_SCHEMA)
    )
    written = duckdb_types(ontology_table(empty))
    assert {name: sql_type for name, (sql_type, _) in TABLES["hpo_ontology"].items()} == written
    assert list(TABLES["hpo_ontology"]) == list(written)


def test_every_annotation_table_has_the_shared_layout() -> None:
    assert sorted(ANNOTATION_DATABASES) == sorted(CLIENTS), "list every database of refresh.CLIENTS"
    assert list(ANNOTATION_COLUMNS) == list(ANNOTATION_SCHEMA)
    for database in CLIENTS:
        assert TABLES[f"annotations_{database}"] == ANNOTATION_COLUMNS


def test_an_undescribed_column_is_caught() -> None:
    """The checks above can fail: a column added to a constant without a description is reported."""
    assert undescribed("feature_genes", [*features.GENE_COLUMNS, "brand_new"]) == ["brand_new"]
    assert undescribed("enrichment", [*(ENRICHMENT_SCHEMA | HELD_OUT_SCHEMA), "brand_new"]) == ["brand_new"]
    assert undescribed("no_such_table", ["feature"]) == ["feature"]
