"""The public table contract (DESIGN §3): column names, types and meanings, in one place.

Dagster shows these as column schemas; tests check that written tables carry every column.
"""

from __future__ import annotations

Columns = dict[str, tuple[str, str]]

# the partition keys of a dataset × layer table (pipeline.result.keyed puts them first)
_DATASET_LAYER: Columns = {
    "dataset": ("VARCHAR", "dataset key"),
    "layer": ("BIGINT", "the SAE's layer"),
}
_CHECKPOINT_ID: Columns = {
    "checkpoint_id": (
        "VARCHAR",
        "the SAE checkpoint the rows were derived from (<hook>-<content key>, its run folder's name)",
    ),
}
# what a dataset × layer table's rows were derived from (keyed() puts them last)
_DERIVED_FROM: Columns = {
    **_CHECKPOINT_ID,
    "activations_checksum": (
        "VARCHAR",
        "the activation set the rows were computed from (activation_sets.checksum)",
    ),
}

# the ten annotations_<db> tables share one layout (annotations.base.ANNOTATION_SCHEMA), one row per gene × term
ANNOTATION_COLUMNS: Columns = {
    "database": ("VARCHAR", "the annotation database (the table's <db>)"),
    "ensembl_id": (
        "VARCHAR",
        "unversioned Ensembl gene id, mapped from the source's gene id through gene_identifiers; "
        "with term_id, the key",
    ),
    "term_id": (
        "VARCHAR",
        "the source's term id (e.g. HP:…, MONDO:…, OMIM:…, EFO_…, ORPHA:…; STRING: the partner protein, "
        "STRING:<protein id>)",
    ),
    "symbol": ("VARCHAR", "the gene's approved HGNC symbol"),
    "term_name": ("VARCHAR", "the term's name in the source (STRING: the partner's preferred name)"),
    "term_kind": (
        "VARCHAR",
        "what the term is: disease, phenotype, inheritance, trait or interaction (the database's default "
        "unless the source says otherwise)",
    ),
    "score": (
        "DOUBLE",
        "strength of the gene–term link on the source's own scale, the highest of the merged source rows "
        "(e.g. Open Targets association score, HPO frequency as a fraction, GWAS −log10 p, STRING score / "
        "1000, an evidence class mapped to 0–1); NULL: the source gives none",
    ),
    "evidence": (
        "VARCHAR",
        "the source's evidence for the link: up to 10 distinct strings, sorted, joined by '; ' (NULL: none)",
    ),
    "n_evidence": ("BIGINT", "distinct evidence strings, all of them (evidence keeps 10)"),
    "source_gene_id": (
        "VARCHAR",
        "the gene id as the source gave it (Entrez, HGNC id, symbol or Ensembl; the first of merged rows)",
    ),
    "source_version": ("VARCHAR", "the source release the table was built from"),
    "retrieved_at": ("TIMESTAMP WITH TIME ZONE", "when the table was refreshed"),
}
# the databases with an annotations_<db> table: the keys of annotations.refresh.CLIENTS (listed here so
# that this module imports nothing; tests/unit/test_table_descriptions.py checks the two agree)
ANNOTATION_DATABASES = (
    *("opentargets", "hpo", "gwas_catalog", "disgenet", "monarch"),
    *("string", "omim", "orphanet", "clinvar", "gencc"),
)

TABLES: dict[str, Columns] = {
    "datasets": {
        "dataset": ("VARCHAR", "dataset key (sanitised file stem or --name)"),
        "source_path": ("VARCHAR", "absolute path of the registered .h5ad"),
        "n_cells": ("BIGINT", "cells in the file"),
        "n_genes": ("BIGINT", "genes in the matrix used"),
        "n_genes_in_vocab": (
            "BIGINT",
            "genes found in the model vocab (NULL until a model has tokenised it)",
        ),
        "checksum": ("VARCHAR", "sha256 of the file"),
        "matrix_source": ("VARCHAR", "which matrix was read: layers['counts'], raw.X or X"),
        "value_kind": ("VARCHAR", "raw_counts, log1p or normalised"),
        "gene_id_source": ("VARCHAR", "ensembl:<var column> or symbol:<var column>"),
        "n_genes_with_ensembl": ("BIGINT", "genes with an Ensembl id (from the file or mapped through HGNC)"),
        "gene_id_mapping": ("VARCHAR", "the HGNC table symbols were mapped with (and its release)"),
        "cell_type_key": ("VARCHAR", "obs column used for cell types (NULL if none)"),
        "n_cell_types": ("BIGINT", "distinct cell types"),
        "n_empty_cells": ("BIGINT", "cells with no expressed gene"),
        "validation_warnings": ("VARCHAR[]", "what validation reported but did not refuse"),
        "ingested_at": ("TIMESTAMP WITH TIME ZONE", "when the tables were written"),
        "sample_key": (
            "VARCHAR",
            "obs column used for the sample/donor, the unit of pseudobulk tests (NULL: none; cells are the unit)",
        ),
        "n_samples": ("BIGINT", "distinct samples (0 without a sample column)"),
    },
    "cells": {
        "dataset": ("VARCHAR", "dataset key"),
        "cell_index": ("BIGINT", "row of the cell in the .h5ad (0-based); the key"),
        "cell_id": ("VARCHAR", "obs name of the cell"),
        "cell_type": ("VARCHAR", "cell type from the configured obs column (nullable)"),
        "n_genes_expressed": ("INTEGER", "genes with a value > 0"),
        "total_counts": ("DOUBLE", "sum of counts (for log1p data: sum of expm1 values)"),
        "sample": ("VARCHAR", "sample or donor from datasets.sample_key (NULL without a sample column)"),
    },
    "genes": {
        "dataset": ("VARCHAR", "dataset key"),
        "gene_index": ("BIGINT", "column of the gene in the matrix (0-based); the key"),
        "feature_name": ("VARCHAR", "var name in the file"),
        "ensembl_id": (
            "VARCHAR",
            "unversioned Ensembl gene id, from the file or mapped from the symbol through HGNC (NULL: see ensembl_id_source)",
        ),
        "symbol": ("VARCHAR", "gene symbol"),
        "in_vocab": ("BOOLEAN", "whether the model vocab has the gene (NULL until tokenised)"),
        "n_cells_expressed": ("BIGINT", "cells with a value > 0"),
        "ensembl_id_source": (
            "VARCHAR",
            "dataset, hgnc:<symbol|prev_symbol|alias_symbol|symbol_upper>, or why not: unmapped, ambiguous, "
            "no_ensembl, duplicate of <symbol>",
        ),
    },
    "feature_effects": {
        "dataset": ("VARCHAR", "dataset key"),
        "layer": ("BIGINT", "the SAE's layer"),
        "feature": ("BIGINT", "SAE latent index"),
        "intervention": (
            "VARCHAR",
            "ablate (the feature set to 0 where it fires) or steer (added along its decoder)",
        ),
        "strength": (
            "DOUBLE",
            "steering strength in units of the feature's mean activation where it fires; 0 for ablate",
        ),
        "cells": ("VARCHAR", "active (cells where the feature fires) or silent (cells where it does not)"),
        "direction": ("VARCHAR", "up or down: the sign of the change of the gene's predicted expression"),
        "rank": ("BIGINT", "1 = the largest change in that direction"),
        "ensembl_id": ("VARCHAR", "the gene"),
        "symbol": ("VARCHAR", "the gene's symbol"),
        "effect": ("DOUBLE", "mean change of the MVC decoder's predicted expression (bins) over the cells"),
        "effect_sd": ("DOUBLE", "its standard deviation over the cells (NULL with one cell)"),
        "consistency": ("DOUBLE", "share of the cells whose change has the effect's sign"),
        "n_cells": ("BIGINT", "cells intervened on"),
        "gene_id": ("BIGINT", "the gene's vocab token id"),
        "checkpoint_id": ("VARCHAR", "the SAE checkpoint the rows were derived from"),
    },
    "feature_effect_cell_types": {
        "dataset": ("VARCHAR", "dataset key"),
        "layer": ("BIGINT", "the SAE's layer"),
        "feature": ("BIGINT", "SAE latent index"),
        "intervention": ("VARCHAR", "ablate or steer (as in feature_effects)"),
        "strength": ("DOUBLE", "steering strength (as in feature_effects)"),
        "cells": ("VARCHAR", "active or silent (as in feature_effects)"),
        "cell_type": ("VARCHAR", "the type whose centroid (mean clean cell embedding) is compared"),
        "cosine_shift": (
            "DOUBLE",
            "mean change of the cells' cosine similarity to that centroid; > 0: toward it",
        ),
        "n_cells": ("BIGINT", "cells intervened on"),
        "checkpoint_id": ("VARCHAR", "the SAE checkpoint the rows were derived from"),
    },
}


def columns(table: str) -> list[str]:
    return list(TABLES[table])
