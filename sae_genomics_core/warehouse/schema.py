"""The public table contract (DESIGN §3): column names, types and meanings, in one place.

Dagster shows these as column schemas; tests check that written tables carry every column.
"""

from __future__ import annotations

TABLES: dict[str, dict[str, tuple[str, str]]] = {
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
