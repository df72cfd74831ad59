"""What enrichment reads from the warehouse: the background, the annotation tables, the ontology."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.store import ANNOTATION_PREFIX, read_table
from sae_genomics_core.enrichment.ontology import OntologyTables
from sae_genomics_core.errors import InputError
from sae_genomics_core.warehouse.lake import warehouse_exists
from sae_genomics_core.warehouse.sql import connect_read_only, table_names

ONTOLOGY_TABLE = "hpo_ontology"


def background_genes(genes: pl.DataFrame, vocab: Collection[str] | None = None) -> list[str]:
    """The test universe: genes in the model vocab, expressed in at least one cell of the dataset, with an
    Ensembl id (the id every database is mapped to). A 20,000-gene universe instead makes random gene sets
    "significant" (16.7 % in bio-sae's revision).

    vocab: the tokens of the activation store (vocab.json keys: Ensembl ids, or symbols where a tiny vocab
    has none); without it the genes table's in_vocab column decides.
    """
    required = {"ensembl_id", "symbol", "n_cells_expressed"} | (set() if vocab is not None else {"in_vocab"})
    missing = required - set(genes.columns)
    if missing:
        raise InputError(f"the genes table lacks {', '.join(sorted(missing))}: re-materialise `genes`")
    if vocab is not None:
        in_vocab = pl.coalesce("ensembl_id", "symbol").is_in(sorted(vocab))
    elif genes["in_vocab"].null_count() == genes.height:
        raise InputError("the genes table does not say which genes are in the model vocab: pass the vocab")
    else:
        in_vocab = pl.col("in_vocab").fill_null(False)
    kept = genes.filter(in_vocab & (pl.col("n_cells_expressed") > 0) & pl.col("ensembl_id").is_not_null())
    return sorted(set(kept["ensembl_id"].to_list()))


def load_annotations(warehouse: Path) -> dict[str, pl.DataFrame]:
    """database → its annotations_<db> table, for every table present."""
    if not warehouse_exists(warehouse):
        return {}
    with connect_read_only(Path(warehouse)) as connection:
        names = sorted(
            t for t in table_names(connection, base_tables_only=True) if t.startswith(ANNOTATION_PREFIX)
        )
        return {
            name.removeprefix(ANNOTATION_PREFIX): connection.sql(f'select * from "{name}"').pl()
            for name in names
        }


def source_versions(annotations: dict[str, pl.DataFrame]) -> dict[str, str]:
    """database → the release its table was built from (joined into enrichment rows for provenance)."""
    versions = {}
    for database, frame in annotations.items():
        found = (
            frame["source_version"].drop_nulls().unique().sort().to_list()
            if "source_version" in frame.columns
            else []
        )
        versions[database] = " / ".join(found) if found else "unknown"
    return versions


def ontology_table(ontology: OntologyTables) -> pl.DataFrame:
    """One row per term with its ancestors as lists (nearest first), for the `hpo_ontology` table."""
    ancestors = (
        ontology.ancestors.sort("term_id", "distance", "ancestor_id")
        .group_by("term_id", maintain_order=True)
        .agg(pl.col("ancestor_id").alias("ancestor_ids"), pl.col("distance").alias("ancestor_distances"))
    )
    return ontology.terms.join(ancestors, on="term_id", how="left").select(
        pl.lit(ontology.ontology).alias("ontology"),
        pl.all(),
        pl.lit(ontology.version).alias("version"),
    )


def ontology_from_table(frame: pl.DataFrame) -> OntologyTables:
    ancestors = (
        frame.select("term_id", "ancestor_ids", "ancestor_distances")
        .explode("ancestor_ids", "ancestor_distances")
        .drop_nulls("ancestor_ids")
        .rename({"ancestor_ids": "ancestor_id", "ancestor_distances": "distance"})
    )
    return OntologyTables(
        ontology=str(frame["ontology"][0]),
        version=str(frame["version"][0]),
        terms=frame.select("term_id", "name", "is_obsolete", "replaced_by"),
        ancestors=ancestors,
    )


def load_ontology(warehouse: Path) -> OntologyTables | None:
    frame = read_table(warehouse, ONTOLOGY_TABLE)
    return ontology_from_table(frame) if frame is not None and frame.height else None
