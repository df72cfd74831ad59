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

# the layout all ten annotations_<db> tables share (annotations.base.ANNOTATION_SCHEMA): a row per gene × term
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
    "opentargets",
    "hpo",
    "gwas_catalog",
    "disgenet",
    "monarch",
    "string",
    "omim",
    "orphanet",
    "clinvar",
    "gencc",
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
        "cell_type_key": (
            "VARCHAR",
            "obs column used for cell types; leiden (computed: …) when the file has none and the cells were "
            "clustered instead (50 cells or more); NULL if none",
        ),
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
        "umap_1": (
            "DOUBLE",
            "UMAP x of the cells drawn on the feature pages' map (scanpy; a seeded sample of at most 2,000 "
            "cells), NULL for the others and for datasets under 50 cells",
        ),
        "umap_2": ("DOUBLE", "UMAP y (see umap_1)"),
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
    "activation_sets": {
        "dataset": ("VARCHAR", "dataset key"),
        "layer": ("BIGINT", "model layer the activations were captured at (0-based)"),
        "hook": ("VARCHAR", "hook point: mlp_out, resid_post, attn_out or mlp_hidden"),
        "n_cells": ("BIGINT", "cells with at least one stored token (skipped cells not counted)"),
        "n_tokens": ("BIGINT", "gene tokens stored (<cls>, the drug token and padding are not)"),
        "d_model": ("BIGINT", "width of the activation vectors at this layer and hook"),
        "dtype": ("VARCHAR", "storage dtype of the vectors: bfloat16, float16 or float32"),
        "uri": ("VARCHAR", "where this layer × hook's shards are (file:// or object-storage URI)"),
        "checksum": (
            "VARCHAR",
            "sha256:<hex> over every shard file of the extraction; one forward pass writes every layer × "
            "hook, so a dataset's rows share it",
        ),
        "model_id": ("VARCHAR", "the model that produced the activations, with its seed and options"),
        "revision": ("VARCHAR", "Hugging Face hub revision of the weights (NULL: not from the hub)"),
        "random_weights": ("BOOLEAN", "true when the model's weights are random (tiny-random, random-init:)"),
        "drug_token": (
            "VARCHAR",
            "the drug token the model ran with, <label>:<row> (NULL: none, as upstream's default)",
        ),
        "max_length": (
            "BIGINT",
            "most tokens per cell, <cls> included; a cell with more genes gets a seeded subset",
        ),
        "n_cells_skipped": ("BIGINT", "cells with no token (no non-zero value for a vocab gene)"),
        "n_genes_in_vocab": ("BIGINT", "the dataset's genes found in the model vocab"),
        "created_at": ("TIMESTAMP WITH TIME ZONE", "when the rows were written"),
    },
    "sae_checkpoints": {
        "dataset": ("VARCHAR", "dataset key"),
        "layer": ("BIGINT", "model layer the SAE reads (0-based)"),
        "hook": ("VARCHAR", "hook point the SAE was trained on"),
        "d_in": ("BIGINT", "input width (the hook's d_model)"),
        "d_sae": ("BIGINT", "latents (d_in × expansion_factor)"),
        "k": ("BIGINT", "latents kept per token (TopK)"),
        "train_tokens": ("BIGINT", "training tokens the SAE saw, over all steps"),
        "seed": ("BIGINT", "training seed (it also draws the held-out cells)"),
        "explained_variance": (
            "DOUBLE",
            "1 − squared error / total variance on held-out cells' tokens (up to eval_tokens) at the last step",
        ),
        "mse": (
            "DOUBLE",
            "mean squared reconstruction error per input dimension on those tokens, in normalised units "
            "(inputs centred and scaled so that E‖x − μ‖² = d_in)",
        ),
        "l0": ("DOUBLE", "mean latents firing per held-out token"),
        "dead_fraction": (
            "DOUBLE",
            "fraction of latents that never fire in a full pass over every token, held-out and training",
        ),
        "dense_fraction": (
            "DOUBLE",
            "fraction of latents firing on more than dense_threshold (10%) of the training tokens of the "
            "last log window",
        ),
        "uri": (
            "VARCHAR",
            "where the checkpoint is (sae-lens format plus provenance.json, metrics.json, fidelity.json)",
        ),
        "model_id": ("VARCHAR", "the model the activations came from"),
        "random_weights": ("BOOLEAN", "true when that model's weights are random"),
        "gamma": (
            "DOUBLE",
            "γ = ‖μ‖ / ‖σ‖ of the raw inputs (the mean's norm over the per-dimension s.d.'s norm): "
            "a dead-latent risk",
        ),
        "created_at": ("TIMESTAMP WITH TIME ZONE", "when the row was written"),
        "dead_fraction_heldout": (
            "DOUBLE",
            "fraction of latents that never fire on the held-out cells' tokens (NULL: older checkpoint)",
        ),
        "dead_window_tokens": (
            "BIGINT",
            "tokens a latent must stay silent to count as dead for AuxK, as used (NULL: older checkpoint)",
        ),
        "warmup_steps": ("BIGINT", "learning-rate warm-up steps used (NULL: older checkpoint)"),
        "auxk_steps": (
            "BIGINT",
            "training steps on which AuxK had dead latents to train (NULL: older checkpoint)",
        ),
        "loss_recovered_expr_zero": (
            "DOUBLE",
            "expression decoder, (L_zero − L_sae) / (L_zero − L_clean): 1 = the SAE keeps all the head uses, "
            "0 = no better than zeroing the layer (NULL: not measured, or zeroing costs nothing)",
        ),
        "loss_recovered_expr_mean": (
            "DOUBLE",
            "expression decoder, (L_mean − L_sae) / (L_mean − L_clean), against the layer set to the SAE's "
            "training mean (NULL: not measured, or no gap)",
        ),
        "loss_recovered_mvc_zero": (
            "DOUBLE",
            "MVC decoder, (L_zero − L_sae) / (L_zero − L_clean) (NULL: not measured, or no gap)",
        ),
        "loss_recovered_mvc_mean": (
            "DOUBLE",
            "MVC decoder, (L_mean − L_sae) / (L_mean − L_clean) (NULL: not measured, or no gap)",
        ),
        "loss_expr_clean": (
            "DOUBLE",
            "expression decoder's masked MSE (expression bins², over the hidden 15% of gene tokens of up to "
            "fidelity_cells held-out cells) with the layer as computed (NULL: not measured)",
        ),
        "loss_expr_sae": (
            "DOUBLE",
            "the same with the layer's gene tokens replaced by the SAE's reconstruction (NULL: not measured)",
        ),
        "loss_expr_zero": ("DOUBLE", "the same with the layer's gene tokens set to 0 (NULL: not measured)"),
        "loss_expr_mean": (
            "DOUBLE",
            "the same with the layer's gene tokens set to the SAE's training mean μ (NULL: not measured)",
        ),
        "loss_mvc_clean": (
            "DOUBLE",
            "MVC decoder's masked MSE (predicted from the cell embedding) with the layer as computed "
            "(NULL: not measured)",
        ),
        "loss_mvc_sae": (
            "DOUBLE",
            "MVC decoder, the layer replaced by the reconstruction (NULL: not measured)",
        ),
        "loss_mvc_zero": ("DOUBLE", "MVC decoder, the layer set to 0 (NULL: not measured)"),
        "loss_mvc_mean": ("DOUBLE", "MVC decoder, the layer set to the training mean (NULL: not measured)"),
        "training_warnings": (
            "VARCHAR[]",
            "what training warned about, e.g. a dead window replaced or AuxK unable to engage (empty: none)",
        ),
    },
    "sae_training_log": {
        "dataset": ("VARCHAR", "dataset key"),
        "layer": ("BIGINT", "the SAE's layer"),
        "step": ("BIGINT", "optimiser steps done (a row every log_every_steps and at the end)"),
        "tokens_seen": ("BIGINT", "training tokens consumed by then"),
        "mse": ("DOUBLE", "held-out MSE per input dimension, normalised units (as sae_checkpoints.mse)"),
        "explained_variance": ("DOUBLE", "held-out explained variance (as in sae_checkpoints)"),
        "l0": ("DOUBLE", "mean latents firing per held-out token"),
        "dead_fraction": (
            "DOUBLE",
            "windowed estimate: latents silent for the last dead window of training tokens (0 until one "
            "window has passed); not the full-pass value of sae_checkpoints",
        ),
        "dense_fraction": (
            "DOUBLE",
            "fraction of latents firing on more than 10% of the training tokens since the previous row",
        ),
        "aux_loss": ("DOUBLE", "AuxK loss of the last step (0: no latent was dead)"),
        "lr": ("DOUBLE", "learning rate after the step (linear warm-up, then cosine decay)"),
    },
    "feature_stats": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "fire_count": ("BIGINT", "tokens on which the feature fires (activation > 0 among the top k)"),
        "frequency": ("DOUBLE", "fire_count / every stored token of the dataset × layer"),
        "mean_activation": ("DOUBLE", "mean activation over the tokens where it fires (0: never fires)"),
        "max_activation": ("DOUBLE", "largest activation on any token (0: never fires)"),
        "n_cells_active": ("BIGINT", "cells with at least one firing token"),
        **_DERIVED_FROM,
    },
    "feature_genes": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "ensembl_id": ("VARCHAR", "the gene (NULL: HGNC could not map it, see genes.ensembl_id_source)"),
        "symbol": ("VARCHAR", "the gene's symbol (the vocab token where the dataset names none)"),
        "score": ("DOUBLE", "Σ activation × expression bin over the gene's tokens"),
        "n_tokens": ("BIGINT", "the gene's tokens on which the feature fires (≥ min_gene_tokens)"),
        "mean_activation": (
            "DOUBLE",
            "m_g: Σ activation over the gene's tokens / all its tokens, firing or not",
        ),
        "specificity": (
            "DOUBLE",
            "the lift m_g / μ shrunk by empirical Bayes, (μ + B_g (m_g − μ)) / μ; 1 = no preference; the "
            "ranking key",
        ),
        "rank": (
            "BIGINT",
            "1 = highest specificity (ties: specificity_z, then gene_id); the top top_genes are kept",
        ),
        "gene_id": ("BIGINT", "the gene's vocab token id"),
        "raw_specificity": (
            "DOUBLE",
            "observed lift m_g / μ, μ the feature's mean activation over all tokens (0: μ = 0)",
        ),
        "specificity_z": ("DOUBLE", "(m_g − μ) / (σ / √n_g) over the gene's n_g tokens; breaks ties"),
        "selected": ("BOOLEAN", "among the feature's top genes ranked on the selection half's cells alone"),
        "held_out_specificity": (
            "DOUBLE",
            "the lift on the evaluation half's tokens (NULL: none of the gene's tokens there, or the feature "
            "silent there)",
        ),
        "held_out_p_value": (
            "DOUBLE",
            "exact one-sided binomial p of the feature firing on more of the gene's evaluation-half tokens "
            "than its rate there (NULL: none of the gene's tokens there)",
        ),
        "held_out_q_value": (
            "DOUBLE",
            "BH over every selected gene of the dataset × layer, shown here or not (NULL: not selected)",
        ),
        "replicated": ("BOOLEAN", "selected, held-out lift > 1 and held-out q ≤ fdr (0.05)"),
        **_DERIVED_FROM,
    },
    "feature_cells": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "cell_index": ("BIGINT", "row of the cell in the .h5ad (0-based)"),
        "max_activation": ("DOUBLE", "the feature's maximum activation over the cell's tokens"),
        "rank": ("BIGINT", "1 = highest max_activation (ties: lower cell_index); the top top_cells are kept"),
        "cell_id": ("VARCHAR", "obs name of the cell"),
        **_DERIVED_FROM,
    },
    "feature_cell_genes": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "cell_rank": (
            "BIGINT",
            "the cell's rank in feature_cells (the top cells_with_genes, 10, have genes)",
        ),
        "cell_index": ("BIGINT", "row of the cell in the .h5ad (0-based)"),
        "cell_id": ("VARCHAR", "obs name of the cell"),
        "rank": ("BIGINT", "1 = the gene (token) where the feature fires most strongly in this cell"),
        "gene_id": ("BIGINT", "the gene's tahoe-x1 vocabulary token id"),
        "ensembl_id": ("VARCHAR", "Ensembl gene id (NULL: the gene has none)"),
        "symbol": ("VARCHAR", "gene symbol"),
        "activation": ("DOUBLE", "the feature's activation on this gene's token in this cell"),
        "expression_bin": ("BIGINT", "the gene's expression bin in this cell, the value tahoe-x1 saw"),
        **_DERIVED_FROM,
    },
    "feature_cell_map": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "cell_index": ("BIGINT", "a cell drawn on the map (cells.umap_1 not NULL) where the feature fires"),
        "max_activation": ("DOUBLE", "the feature's maximum activation over the cell's tokens"),
        **_DERIVED_FROM,
    },
    "feature_cell_types": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index (only features firing on some typed cell)"),
        "cell_type": ("VARCHAR", "the type tested against the other typed cells"),
        "mean_activation": (
            "DOUBLE",
            "mean over the type's cells of the per-cell statistic, the feature's mean activation over the "
            "cell's tokens",
        ),
        "mean_activation_rest": ("DOUBLE", "the same over the other typed cells"),
        "frac_active": ("DOUBLE", "fraction of the type's cells with at least one firing token"),
        "log2_fold_change": (
            "DOUBLE",
            "log2((type + c) / (rest + c)) of the units' means, c a tenth of the feature's mean over all "
            "tested cells (NULL: no sample holds both the type and other cells)",
        ),
        "log2_fold_change_lower": (
            "DOUBLE",
            "its one-sided 95% lower confidence bound, delta method (NULL: fewer than 2 units on a side)",
        ),
        "p_value": (
            "DOUBLE",
            "one-sided type > rest: Welch's t-test over cells, or a paired t-test over samples' pseudobulk "
            "pairs (1: untestable)",
        ),
        "q_value": (
            "DOUBLE",
            "BH over every feature × cell type of the dataset × layer (untested pairs count as p = 1)",
        ),
        "n_cells": ("BIGINT", "the type's cells the model saw"),
        "test_unit": ("VARCHAR", "cell, or sample (pseudobulk) when the dataset has a sample column"),
        "n_units": ("BIGINT", "units of the test: the type's cells, or the samples holding both sides"),
        "selected": ("BOOLEAN", "q ≤ fdr (0.05) with a lower bound above 0 on the selection half"),
        "held_out_log2_fold_change": (
            "DOUBLE",
            "log2_fold_change on the evaluation half (NULL: not tested there)",
        ),
        "held_out_p_value": ("DOUBLE", "p_value on the evaluation half (NULL: not tested there)"),
        "held_out_q_value": ("DOUBLE", "BH over the selected pairs (NULL: not selected)"),
        "replicated": ("BOOLEAN", "selected, held-out fold change > 0 and held-out q ≤ fdr (0.05)"),
        "held_out_f1": (
            "DOUBLE",
            "F1 of 'the feature fires in the cell' as a detector of the type, on the evaluation half "
            "(2·TP / (cells of the type + cells where it fires)); NULL: it fires on no cell there",
        ),
        "best_for_type": (
            "BOOLEAN",
            "the type's best detector among the features, chosen by F1 on the selection half (its "
            "held_out_f1 is the unbiased score; InterPLM's per-concept best feature)",
        ),
        **_DERIVED_FROM,
    },
    "feature_histograms": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "bin": ("BIGINT", "bin index, 0–19 (empty bins are not stored)"),
        "bin_start": (
            "DOUBLE",
            "the bin's lower edge; 20 equal bins from 0 to less than twice the feature's maximum activation",
        ),
        "bin_end": ("DOUBLE", "the bin's upper edge (the last bin is closed)"),
        "n_cells": ("BIGINT", "active cells whose maximum activation of the feature falls in the bin"),
        **_DERIVED_FROM,
    },
    "feature_stability": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "latent index in the published checkpoint"),
        "seed": (
            "BIGINT",
            "training seed of the replicate SAE matched against (the checkpoint's seed + 1, …)",
        ),
        "best_cosine": ("DOUBLE", "decoder cosine of the feature's best match in the replicate"),
        "best_match": ("BIGINT", "the replicate's latent index of that match"),
        "matched_cosine": (
            "DOUBLE",
            "cosine of its one-to-one partner (the assignment maximising the summed cosine)",
        ),
        "matched_feature": ("BIGINT", "the replicate's latent index of the one-to-one partner"),
        "mutual": ("BOOLEAN", "the best match's own best match is this feature"),
        "stable": (
            "BOOLEAN",
            "the one-to-one partner has cosine ≥ 0.7 in every other seed (the same on all the feature's rows)",
        ),
        **_CHECKPOINT_ID,
    },
    "sae_stability": {
        **_DATASET_LAYER,
        "n_seeds": ("BIGINT", "SAEs compared: the checkpoint and its replicates"),
        "best_above_0_9": (
            "DOUBLE",
            "share of features whose best-match cosine is > 0.9, mean over the replicates",
        ),
        "best_above_0_7": ("DOUBLE", "the same above 0.7"),
        "matched_above_0_9": (
            "DOUBLE",
            "share whose one-to-one partner's cosine is > 0.9, mean over replicates",
        ),
        "matched_above_0_7": ("DOUBLE", "the same above 0.7"),
        "mean_best_cosine": ("DOUBLE", "mean best-match cosine, mean over replicates"),
        "null_best_above_0_9": (
            "DOUBLE",
            "best_above_0_9 of random unit directions of the same shape (chance)",
        ),
        "null_best_above_0_7": ("DOUBLE", "best_above_0_7 of the random directions"),
        "null_mean_best_cosine": ("DOUBLE", "mean_best_cosine of the random directions"),
        "fraction_stable": ("DOUBLE", "fraction of features with feature_stability.stable"),
        "explained_variance_mean": ("DOUBLE", "held-out explained variance, mean over the seeds"),
        "explained_variance_sd": ("DOUBLE", "its standard deviation over the seeds (NULL: one value)"),
        "l0_mean": ("DOUBLE", "L0, mean over the seeds"),
        "l0_sd": ("DOUBLE", "its standard deviation over the seeds (NULL: one value)"),
        "dead_fraction_mean": ("DOUBLE", "full-pass dead fraction, mean over the seeds"),
        "dead_fraction_sd": ("DOUBLE", "its standard deviation over the seeds (NULL: one value)"),
        "mse_mean": ("DOUBLE", "held-out MSE (normalised units), mean over the seeds"),
        "mse_sd": ("DOUBLE", "its standard deviation over the seeds (NULL: one value)"),
        **_CHECKPOINT_ID,
    },
    "feature_matches": {
        "dataset": ("VARCHAR", "dataset key of the feature's SAE"),
        "layer": ("BIGINT", "layer of the feature's SAE"),
        "feature": ("BIGINT", "SAE latent index"),
        "other_dataset": ("VARCHAR", "dataset of the SAE matched against (same model, hook and d_in)"),
        "other_layer": (
            "BIGINT",
            "layer of the SAE matched against: another layer of the dataset, or this layer of another dataset",
        ),
        "best_match": ("BIGINT", "the other SAE's latent with the highest decoder cosine"),
        "best_cosine": ("DOUBLE", "that cosine"),
        "mutual": ("BOOLEAN", "the best match's own best match is this feature"),
        "matched_feature": (
            "BIGINT",
            "one-to-one partner, maximising the summed cosine (-1: none, the other SAE being smaller)",
        ),
        "matched_cosine": ("DOUBLE", "the partner's cosine (NaN: no partner)"),
        "chance_cosine": (
            "DOUBLE",
            "99th percentile of the best cosines random unit directions reach against the other SAE",
        ),
    },
    "enrichment": {
        **_DATASET_LAYER,
        "feature": ("BIGINT", "SAE latent index"),
        "database": ("VARCHAR", "annotation database (annotations_<db>)"),
        "term_id": ("VARCHAR", "the term tested (STRING: STRING:within-set-edges)"),
        "term_name": ("VARCHAR", "its name (STRING: the edge test, with its score threshold and basis)"),
        "term_kind": ("VARCHAR", "the annotations' term_kind (STRING: network)"),
        "statistic": ("VARCHAR", "hypergeometric, or string_network"),
        "overlap": (
            "BIGINT",
            "the feature's genes in the term, ≥ min_overlap (2) (STRING: edges inside the feature's gene set)",
        ),
        "feature_set_size": (
            "BIGINT",
            "the feature's genes in the universe, from its top gene_set_size (20) genes of feature_genes by score",
        ),
        "term_size": (
            "BIGINT",
            "the term's genes in the universe, HPO propagated up is_a (STRING: edges among the background genes)",
        ),
        "background_size": (
            "BIGINT",
            "genes in the universe: vocab ∩ expressed genes with an Ensembl id, by default only those the "
            "database annotates",
        ),
        "expected_overlap": (
            "DOUBLE",
            "feature_set_size × term_size / background_size (STRING: the null's expected edge count)",
        ),
        "odds_ratio": (
            "DOUBLE",
            "sample odds ratio, +0.5 to each cell where one is 0 (STRING: observed / expected edges, NULL "
            "when none expected)",
        ),
        "p_value": (
            "DOUBLE",
            "one-sided hypergeometric p (Fisher's exact, greater; STRING: network p-value); may underflow to 0",
        ),
        "log10_p_value": ("DOUBLE", "log10 of the p-value, exact where p_value underflows"),
        "q_value": (
            "DOUBLE",
            "BH over every feature × term pair of the dataset × layer × database, untested pairs as p = 1 "
            "(STRING: over the features)",
        ),
        "significant": ("BOOLEAN", "q_value ≤ fdr (0.05)"),
        "most_specific": (
            "BOOLEAN",
            "significant and no descendant term significant for the feature (NULL: not significant, or a "
            "database without an ontology)",
        ),
        "overlap_genes": (
            "VARCHAR[]",
            "the overlapping genes' symbols (else Ensembl ids), sorted (NULL: not significant, or STRING)",
        ),
        "selected": ("BOOLEAN", "significant among the selection half's genes alone"),
        "held_out_overlap": ("BIGINT", "overlap among the evaluation half's genes (NULL: not tested there)"),
        "held_out_odds_ratio": ("DOUBLE", "odds ratio there (NULL: not tested there)"),
        "held_out_p_value": ("DOUBLE", "p-value there (NULL: not tested there)"),
        "held_out_q_value": ("DOUBLE", "BH over the database's selected pairs (NULL: not selected)"),
        "replicated": ("BOOLEAN", "selected, held-out odds ratio > 1 and held-out q ≤ fdr (0.05)"),
        "held_out_f1": (
            "DOUBLE",
            "F1 of the feature's gene set against the term's genes on the evaluation half of the genes: "
            "2·overlap / (set size + term size); NULL: under min_overlap genes shared there, or STRING",
        ),
        "best_for_term": (
            "BOOLEAN",
            "the feature whose gene set matches the term best (F1) on the selection half of the genes; "
            "its held_out_f1 is the unbiased score (InterPLM's per-concept best feature)",
        ),
        "evidence_source": (
            "VARCHAR",
            "the independent source the row counts for: databases linked by derived_from share one, named "
            "by the group's alphabetically first member",
        ),
        "source_version": ("VARCHAR", "release(s) of the database's annotation table ('unknown': none)"),
        **_DERIVED_FROM,
    },
    "enrichment_baselines": {
        **_DATASET_LAYER,
        "method": ("VARCHAR", "sae, pca or random: the units tested"),
        "database": ("VARCHAR", "annotation database"),
        "statistic": ("VARCHAR", "hypergeometric, or string_network"),
        "n_units": (
            "BIGINT",
            "all units of the method: d_sae; PCA axes (both signs) explaining pca_variance; random directions",
        ),
        "n_units_tested": (
            "BIGINT",
            "units with a gene in the database's universe (0: the database had nothing to test)",
        ),
        "n_units_significant": ("BIGINT", "units with at least one significant term"),
        "fraction_significant": (
            "DOUBLE",
            "n_units_significant / n_units_tested (NULL: nothing tested)",
        ),
        "fraction_of_all_units": ("DOUBLE", "n_units_significant / n_units (NULL: nothing tested)"),
        "n_tests": ("BIGINT", "the BH family: units × tested terms (STRING: units)"),
        "n_significant_pairs": ("BIGINT", "significant unit × term pairs"),
        "background_size": ("BIGINT", "genes in the database's universe"),
        "n_distinct_terms": ("BIGINT", "distinct significant terms over all units (NULL: STRING)"),
        "n_distinct_top_terms": (
            "BIGINT",
            "distinct best terms (lowest p, ties by term id) of the significant units (NULL: STRING)",
        ),
        "n_units_sharing_top_term": (
            "BIGINT",
            "significant units whose best term is another unit's best term too (NULL: STRING)",
        ),
        "redundancy": (
            "DOUBLE",
            "1 − n_distinct_top_terms / n_units_significant (NULL: STRING, or no significant unit)",
        ),
        "rate_p10": ("DOUBLE", "10th percentile of the method's per-unit firing rates (fraction of tokens)"),
        "rate_p50": ("DOUBLE", "median of the method's per-unit firing rates"),
        "rate_p90": ("DOUBLE", "90th percentile of the method's per-unit firing rates"),
        **_DERIVED_FROM,
    },
    "gene_identifiers": {
        "hgnc_id": ("VARCHAR", "HGNC id (HGNC:<number>); the key"),
        "symbol": ("VARCHAR", "approved symbol"),
        "name": ("VARCHAR", "approved gene name"),
        "ensembl_id": ("VARCHAR", "unversioned Ensembl gene id (NULL: HGNC lists none)"),
        "entrez_id": ("VARCHAR", "NCBI Gene (Entrez) id (NULL: none)"),
        "uniprot_ids": ("VARCHAR[]", "UniProt accessions (empty: none)"),
        "alias_symbols": ("VARCHAR[]", "alias symbols (empty: none)"),
        "prev_symbols": ("VARCHAR[]", "previous approved symbols (empty: none)"),
        "omim_ids": ("VARCHAR[]", "OMIM gene MIM numbers (empty: none)"),
        "orphanet_id": ("VARCHAR", "Orphanet gene id (NULL: none)"),
        "locus_group": ("VARCHAR", "HGNC locus group, e.g. protein-coding gene"),
        "locus_type": ("VARCHAR", "HGNC locus type, e.g. gene with protein product"),
        "status": ("VARCHAR", "HGNC status, e.g. Approved"),
        "location": ("VARCHAR", "cytogenetic location, e.g. 12q13.12"),
        "date_modified": ("VARCHAR", "date HGNC last modified the entry (YYYY-MM-DD)"),
        "source_version": ("VARCHAR", "HGNC <newest date_modified> (the file carries no version)"),
        "retrieved_at": ("TIMESTAMP WITH TIME ZONE", "when the table was refreshed"),
    },
    "hpo_ontology": {
        "ontology": ("VARCHAR", "the ontology: hpo"),
        "term_id": ("VARCHAR", "HPO term id, or an alternative id merged into another term; the key"),
        "name": ("VARCHAR", "the term's label (NULL: an alternative id)"),
        "is_obsolete": ("BOOLEAN", "obsolete term, or alternative id"),
        "replaced_by": (
            "VARCHAR",
            "the current term an obsolete or alternative id maps to (NULL: none, or several)",
        ),
        "ancestor_ids": (
            "VARCHAR[]",
            "every is_a ancestor, self excluded, nearest first (NULL: none, e.g. the root or obsolete terms)",
        ),
        "ancestor_distances": ("BIGINT[]", "shortest is_a path length to each of ancestor_ids, in order"),
        "version": ("VARCHAR", "the release: data-version's date, else the file's sha256 prefix"),
    },
    **{f"annotations_{database}": dict(ANNOTATION_COLUMNS) for database in ANNOTATION_DATABASES},
}


def columns(table: str) -> list[str]:
    return list(TABLES[table])
