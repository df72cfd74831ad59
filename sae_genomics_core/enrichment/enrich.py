"""Which units (SAE features, PCA or random directions) are enriched for which annotation terms.

One job per database, all units × all terms at once:
- universe: the background (model vocab ∩ genes expressed in the dataset, with an Ensembl id), and,
  by default, only those background genes the database annotates at all (`annotated_only`): a gene no
  source has studied can never be in a term, and counting it would reward well-studied gene sets;
- a unit's gene set: its top `gene_set_size` genes (by `gene_set_order`) among the background, then
  those of them in the universe (`gene_set_scope="background"`, the usual gene-list ∩ universe), or its
  top genes among the universe itself (`"universe"`, always full sets but reaching deeper into the
  feature's ranking where its best genes are unannotated);
- terms: annotation terms within the universe of at least `min_term_size` genes and at most
  `max_term_fraction` of the universe (or `max_term_size` genes where that is given); ontology
  databases (HPO) are first propagated up is_a (true-path rule) and kept to one branch (`term_roots`:
  HPO's Phenotypic abnormality, so the root, Clinical modifier, Onset, ... are never tested);
- overlaps: one sparse product (units × genes) · (genes × terms); pairs with overlap ≥ `min_overlap`
  get an exact one-sided hypergeometric p-value (= Fisher's exact, greater); all other pairs count
  as p = 1 in Benjamini–Hochberg over every unit × term pair of the database;
- STRING: no terms; a network statistic (edges inside the gene set vs a degree-aware null) per unit,
  BH over the units.

`calibrate` checks the p-values themselves on shuffled gene sets (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.enrichment.hypergeom import (
    bh_q_values,
    hypergeom_log_sf,
    odds_ratio,
    rejection_probabilities,
)
from sae_genomics_core.enrichment.ontology import OntologyTables
from sae_genomics_core.enrichment.settings import EnrichmentSettings
from sae_genomics_core.errors import InputError, SettingsError

if TYPE_CHECKING:  # imported where used: it loads numba
    from sae_genomics_core.enrichment.network import Network

NETWORK_DATABASES = ("string",)
NETWORK_TERM_ID = "STRING:within-set-edges"

ENRICHMENT_SCHEMA: dict[str, pl.DataType] = {
    "feature": pl.Int64(),
    "database": pl.String(),
    "term_id": pl.String(),
    "term_name": pl.String(),
    "term_kind": pl.String(),
    "statistic": pl.String(),
    "overlap": pl.Int64(),
    "feature_set_size": pl.Int64(),
    "term_size": pl.Int64(),
    "background_size": pl.Int64(),
    "expected_overlap": pl.Float64(),
    "odds_ratio": pl.Float64(),
    "p_value": pl.Float64(),
    "log10_p_value": pl.Float64(),
    "q_value": pl.Float64(),
    "significant": pl.Boolean(),
    "most_specific": pl.Boolean(),
    "overlap_genes": pl.List(pl.String()),
}


@dataclass(frozen=True)
class GeneSets:
    """Units' gene sets as a units × genes 0/1 matrix over a fixed gene list."""

    features: np.ndarray  # unit id of each row
    genes: np.ndarray  # Ensembl id of each column
    members: sp.csr_matrix

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.members.indptr)


@dataclass
class DatabaseSummary:
    database: str
    statistic: str
    n_units: int  # units with a non-empty gene set in the database's universe
    n_terms: int
    n_tests: int  # size of the BH family
    n_tested_pairs: int  # pairs given a p-value (the rest are p = 1)
    n_significant: int
    n_units_significant: int
    background_size: int
    notes: dict[str, object] = field(default_factory=dict)
    design: NullDesign | None = None  # what the calibration check needs to compute null rejection rates


@dataclass(frozen=True)
class NullDesign:
    """The hypergeometric family of one database: every unit × term pair, as the calibration sees it."""

    units: np.ndarray  # unit id per set
    set_sizes: np.ndarray  # per set, its genes in the universe
    term_sizes: np.ndarray  # per tested term, its genes in the universe
    population: int
    min_overlap: int


@dataclass
class EnrichmentResult:
    table: pl.DataFrame
    summaries: list[DatabaseSummary]

    def summary_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [{k: v for k, v in vars(s).items() if k not in ("notes", "design")} for s in self.summaries],
            schema={
                "database": pl.String,
                "statistic": pl.String,
                "n_units": pl.Int64,
                "n_terms": pl.Int64,
                "n_tests": pl.Int64,
                "n_tested_pairs": pl.Int64,
                "n_significant": pl.Int64,
                "n_units_significant": pl.Int64,
                "background_size": pl.Int64,
            },
        )


def _column_index(genes: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"ensembl_id": genes.astype(str), "column": np.arange(genes.size, dtype=np.int64)})


def gene_sets(
    unit_genes: pl.DataFrame,
    universe: Sequence[str],
    settings: EnrichmentSettings,
    candidates: Sequence[str] | None = None,
) -> GeneSets:
    """Per unit, its top `gene_set_size` genes among `candidates` (default: the universe) that are also in
    `universe` (unit_genes: feature, ensembl_id, score, rank)."""
    genes = np.asarray(sorted(set(universe)), dtype=object)
    index = _column_index(genes)
    pool = index if candidates is None else _column_index(np.asarray(sorted(set(candidates)), dtype=object))
    order = (
        ["feature", "score", "ensembl_id"]
        if settings.gene_set_order == "score"
        else ["feature", "rank", "ensembl_id"]
    )
    descending = [False, True, False] if settings.gene_set_order == "score" else [False, False, False]
    chosen = (
        unit_genes.select("feature", "ensembl_id", "score", "rank")
        .join(pool.select("ensembl_id"), on="ensembl_id", how="inner")
        .sort(order, descending=descending)  # two tokens of one gene: the better-ranked row stands
        .unique(["feature", "ensembl_id"], keep="first", maintain_order=True)
        .with_columns(pl.int_range(pl.len()).over("feature").alias("position"))
        .filter(pl.col("position") < settings.gene_set_size)
        .join(index, on="ensembl_id", how="inner")
    )
    features, rows = np.unique(chosen["feature"].to_numpy(), return_inverse=True)
    members = sp.csr_matrix(
        (np.ones(chosen.height, dtype=np.int32), (rows, chosen["column"].to_numpy())),
        shape=(features.size, genes.size),
    )
    return GeneSets(features=features.astype(np.int64), genes=genes, members=members)


def enrich(
    unit_genes: pl.DataFrame,
    background: Sequence[str],
    annotations: Mapping[str, pl.DataFrame],
    settings: EnrichmentSettings = EnrichmentSettings(),
    ontologies: Mapping[str, OntologyTables] | None = None,
) -> EnrichmentResult:
    """Enrichment of every unit against every database (annotations: database → annotations_<db> rows)."""
    background = sorted(set(background))
    if not background:
        raise InputError(
            "the background is empty: no gene with an Ensembl id is both in the model vocab and expressed; check "
            "genes.ensembl_id_source (symbols the HGNC set cannot map) and that the dataset's matrix holds counts"
        )
    tables, summaries = [], []
    for database, frame in annotations.items():
        if database in NETWORK_DATABASES:
            table, summary = _network(database, unit_genes, background, frame, settings)
        else:
            ontology = (ontologies or {}).get(database)
            table, summary = _hypergeometric(database, unit_genes, background, frame, settings, ontology)
        tables.append(table)
        summaries.append(summary)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=ENRICHMENT_SCHEMA)
    return EnrichmentResult(table=table, summaries=summaries)


HELD_OUT_SCHEMA: dict[str, pl.DataType] = {
    "selected": pl.Boolean(),
    "held_out_overlap": pl.Int64(),
    "held_out_odds_ratio": pl.Float64(),
    "held_out_p_value": pl.Float64(),
    "held_out_q_value": pl.Float64(),
    "replicated": pl.Boolean(),
    "held_out_f1": pl.Float64(),
    "best_for_term": pl.Boolean(),
}
# a term's genes and a feature's gene set as two sets: F1 = 2·overlap / (set size + term size)
_F1 = 2 * pl.col("overlap") / (pl.col("feature_set_size") + pl.col("term_size"))


def enrich_held_out(
    unit_genes: pl.DataFrame,
    background: Sequence[str],
    annotations: Mapping[str, pl.DataFrame],
    settings: EnrichmentSettings = EnrichmentSettings(),
    ontologies: Mapping[str, OntologyTables] | None = None,
) -> EnrichmentResult:
    """`enrich` over the whole background, with each pair's held-out evaluation on disjoint genes.

    The background genes are split in two by a hash of (holdout_seed, Ensembl id) (features.holdout).
    The tests are run again within each half alone: a pair is `selected` when significant among the
    selection half's genes, and `replicated` when the term's other genes, those of the evaluation half,
    are enriched too (odds ratio > 1, BH over the database's selected pairs). A term that a feature
    "hits" through a few of its own top genes does not replicate; a feature that prefers the term does.
    Per term, InterPLM's per-concept best feature: `best_for_term` marks the feature whose gene set
    matches the term best (F1) on the selection half, `held_out_f1` is each pair's F1 on the evaluation
    half (NULL where fewer than min_overlap genes are shared there).
    """
    from sae_genomics_core.features.holdout import SELECTION, gene_half, replicated_claims

    genes = pl.Series("ensembl_id", sorted(set(background)))
    in_selection = gene_half(genes, settings.holdout_seed) == SELECTION
    result = enrich(unit_genes, genes, annotations, settings, ontologies)
    selection = enrich(unit_genes, genes.filter(in_selection), annotations, settings, ontologies).table
    evaluation = enrich(unit_genes, genes.filter(~in_selection), annotations, settings, ontologies).table
    pair = ["feature", "database", "term_id"]
    hypergeometric = pl.col("statistic") == "hypergeometric"
    best = (
        selection.filter(hypergeometric)
        .with_columns(_F1.alias("f1"))
        .sort(["database", "term_id", "f1", "feature"], descending=[False, False, True, False])
        .group_by(["database", "term_id"], maintain_order=True)
        .head(1)
        .select(*pair, pl.lit(True).alias("best_for_term"))
    )
    joined = (
        result.table.join(
            selection.filter("significant").select(*pair, pl.lit(True).alias("selected")), on=pair, how="left"
        )
        .join(
            evaluation.select(
                *pair,
                pl.col("overlap").alias("held_out_overlap"),
                pl.col("odds_ratio").alias("held_out_odds_ratio"),
                pl.col("p_value").alias("held_out_p_value"),
                pl.when(hypergeometric).then(_F1).alias("held_out_f1"),
            ),
            on=pair,
            how="left",
        )
        .join(best, on=pair, how="left")
        .with_columns(pl.col("best_for_term").fill_null(False))
    )
    per_database = [
        replicated_claims(
            part,
            pl.col("selected"),
            pl.col("held_out_p_value"),
            pl.col("held_out_odds_ratio") > 1,
            settings.fdr,
        )
        for part in joined.partition_by("database", maintain_order=True)
    ]
    schema = ENRICHMENT_SCHEMA | HELD_OUT_SCHEMA
    table = pl.concat(per_database).select(list(schema)) if per_database else pl.DataFrame(schema=schema)
    return EnrichmentResult(table=table.cast(schema), summaries=result.summaries)  # type: ignore[arg-type]


def _terms(
    frame: pl.DataFrame, database: str, settings: EnrichmentSettings, ontology: OntologyTables | None
) -> tuple[pl.DataFrame, dict[str, object]]:
    """Distinct (ensembl_id, term_id, term_name, term_kind), propagated up the ontology if there is one."""
    notes: dict[str, object] = {}
    rows = frame.filter(
        pl.col("ensembl_id").is_not_null() & ~pl.col("term_kind").is_in(list(settings.exclude_term_kinds))
    ).select("ensembl_id", "term_id", "term_name", "term_kind")
    if ontology is not None:
        from sae_genomics_core.enrichment.ontology import propagate

        kinds = rows.select("term_id", "term_kind").unique("term_id")
        propagated, report = propagate(rows, ontology)
        notes["propagation"] = vars(report)
        rows = propagated.join(kinds, on="term_id", how="left").select(
            "ensembl_id",
            "term_id",
            "term_name",
            pl.col("term_kind").fill_null(_ancestor_kind(rows)),
        )
        notes["ontology_version"] = ontology.version
        root = dict(settings.term_roots).get(database)
        if root is not None:
            below = ontology.ancestors.filter(pl.col("ancestor_id") == root)["term_id"]
            before = rows["term_id"].n_unique()
            rows = rows.filter(pl.col("term_id").is_in(below.implode()))
            notes["term_root"] = {"root": root, "terms_outside": before - rows["term_id"].n_unique()}
    return rows.unique(["ensembl_id", "term_id"]), notes


def _ancestor_kind(rows: pl.DataFrame) -> str:
    """The kind given to ancestor terms added by propagation: the database's usual kind."""
    kinds = rows["term_kind"].drop_nulls()
    return str(kinds.mode().sort().first()) if kinds.len() else "term"


@dataclass(frozen=True)
class _TestedTerms:
    """The terms of one database that are tested, over the gene sets' gene columns."""

    info: pl.DataFrame  # term_column, term_id, term_name, term_kind, size (genes in the universe)
    members: pl.DataFrame  # a tested term's genes: ensembl_id, term_id, ..., term_column, column
    matrix: sp.csc_matrix  # genes × terms, 0/1


def _hypergeometric(
    database: str,
    unit_genes: pl.DataFrame,
    background: list[str],
    frame: pl.DataFrame,
    settings: EnrichmentSettings,
    ontology: OntologyTables | None,
) -> tuple[pl.DataFrame, DatabaseSummary]:
    terms_long, notes = _terms(frame, database, settings, ontology)
    terms_long = terms_long.filter(pl.col("ensembl_id").is_in(background))
    universe = sorted(set(terms_long["ensembl_id"].to_list())) if settings.annotated_only else background
    candidates = background if settings.gene_set_scope == "background" else None
    sets = gene_sets(unit_genes, universe, settings, candidates)
    population = len(universe)
    terms = _tested_terms(terms_long, sets.genes, settings, population)
    notes["max_term_size"] = settings.term_size_limit(population)
    n_units, n_terms = sets.features.size, terms.info.height
    n_tests = n_units * n_terms
    table = _hypergeometric_pairs(database, sets, terms, population, n_tests, settings)
    n_tested_pairs, n_significant = table.height, int(table["significant"].sum())
    n_units_significant = table.filter("significant")["feature"].n_unique()
    table = _flag_most_specific(table, ontology, settings)  # may drop rows: count before
    table = _with_overlap_genes(table, unit_genes, sets, terms.members)
    summary = DatabaseSummary(
        database=database,
        statistic="hypergeometric",
        n_units=n_units,
        n_terms=n_terms,
        n_tests=n_tests,
        n_tested_pairs=n_tested_pairs,
        n_significant=n_significant,
        n_units_significant=n_units_significant,
        background_size=population,
        notes=notes,
        design=NullDesign(
            sets.features, sets.sizes, terms.info["size"].to_numpy(), population, settings.min_overlap
        ),
    )
    return table.select(list(ENRICHMENT_SCHEMA)).cast(ENRICHMENT_SCHEMA), summary  # type: ignore[arg-type]


def _tested_terms(
    terms_long: pl.DataFrame, genes: np.ndarray, settings: EnrichmentSettings, population: int
) -> _TestedTerms:
    """Terms within the size bounds, numbered in term_id order, and their genes as a matrix over `genes`."""
    sizes = terms_long.group_by("term_id").len()
    kept = sizes.filter(
        pl.col("len").is_between(settings.min_term_size, settings.term_size_limit(population))
    )
    info = (
        terms_long.filter(pl.col("term_id").is_in(kept["term_id"].implode()))
        .group_by("term_id")
        .agg(pl.col("term_name").first(), pl.col("term_kind").first(), pl.len().alias("size"))
        .sort("term_id")
        .with_row_index("term_column")
    )
    members = terms_long.join(info.select("term_id", "term_column"), on="term_id").join(
        _column_index(genes), on="ensembl_id"
    )
    matrix = sp.csc_matrix(
        (
            np.ones(members.height, dtype=np.int32),
            (members["column"].to_numpy(), members["term_column"].to_numpy()),
        ),
        shape=(genes.size, info.height),
    )
    return _TestedTerms(info=info, members=members, matrix=matrix)


def _hypergeometric_pairs(
    database: str,
    sets: GeneSets,
    terms: _TestedTerms,
    population: int,
    n_tests: int,
    settings: EnrichmentSettings,
) -> pl.DataFrame:
    """One row per unit × term pair with overlap ≥ min_overlap: its exact p-value and its BH q-value
    within all `n_tests` pairs (the untested ones count as p = 1)."""
    overlaps = (sets.members @ terms.matrix).tocoo()
    tested = overlaps.data >= settings.min_overlap
    unit_row, term_col, overlap = (
        overlaps.row[tested],
        overlaps.col[tested],
        overlaps.data[tested].astype(np.int64),
    )
    set_size = sets.sizes[unit_row].astype(np.int64)
    term_size = terms.info["size"].to_numpy()[term_col].astype(np.int64)
    log_p = hypergeom_log_sf(overlap, population, term_size, set_size)
    q_values = bh_q_values(np.exp(log_p), n_tests)
    table = pl.DataFrame(
        {
            "feature": sets.features[unit_row],
            "database": [database] * unit_row.size,
            "term_id": terms.info["term_id"].to_numpy()[term_col],
            "term_name": terms.info["term_name"].to_numpy()[term_col],
            "term_kind": terms.info["term_kind"].to_numpy()[term_col],
            "statistic": ["hypergeometric"] * unit_row.size,
            "overlap": overlap,
            "feature_set_size": set_size,
            "term_size": term_size,
            "background_size": np.full(unit_row.size, population, dtype=np.int64),
            "expected_overlap": set_size * term_size / max(population, 1),
            "odds_ratio": odds_ratio(overlap, population, term_size, set_size),
            "p_value": np.exp(log_p),
            "log10_p_value": log_p / np.log(10),
            "q_value": q_values,
        },
        schema_overrides={"term_id": pl.String, "term_name": pl.String, "term_kind": pl.String},
    )
    return table.with_columns(significant=pl.col("q_value") <= settings.fdr)


def _flag_most_specific(
    table: pl.DataFrame, ontology: OntologyTables | None, settings: EnrichmentSettings
) -> pl.DataFrame:
    """most_specific: a significant term none of whose significant descendants is significant for the unit."""
    if ontology is None:
        return table.with_columns(most_specific=pl.lit(None, dtype=pl.Boolean))
    from sae_genomics_core.enrichment.ontology import most_specific

    significant = table.filter("significant").select("feature", "term_id")
    kept = most_specific(significant, ontology, by=["feature"]).with_columns(most_specific=pl.lit(True))
    table = table.join(kept, on=["feature", "term_id"], how="left").with_columns(
        pl.when(pl.col("significant"))
        .then(pl.col("most_specific").fill_null(False))
        .otherwise(None)
        .alias("most_specific")
    )
    if settings.only_most_specific:
        table = table.filter(~pl.col("significant") | pl.col("most_specific"))
    return table


def _with_overlap_genes(
    table: pl.DataFrame, unit_genes: pl.DataFrame, sets: GeneSets, members: pl.DataFrame
) -> pl.DataFrame:
    """The genes behind each significant overlap (symbols where known), so a reader sees what drove it."""
    significant = table.filter("significant").select("feature", "term_id")
    if significant.height == 0:
        return table.with_columns(overlap_genes=pl.lit(None, dtype=pl.List(pl.String)))
    coo = sets.members.tocoo()
    in_set = pl.DataFrame({"feature": sets.features[coo.row], "ensembl_id": sets.genes[coo.col].astype(str)})
    symbols = unit_genes.select(
        "ensembl_id",
        pl.col("symbol") if "symbol" in unit_genes.columns else pl.lit(None, pl.String).alias("symbol"),
    ).unique("ensembl_id")
    genes = (
        significant.join(members.select("term_id", "ensembl_id"), on="term_id")
        .join(in_set, on=["feature", "ensembl_id"])
        .join(symbols, on="ensembl_id", how="left")
        .group_by("feature", "term_id")
        .agg(pl.coalesce("symbol", "ensembl_id").sort().alias("overlap_genes"))
    )
    return table.join(genes, on=["feature", "term_id"], how="left")


def network_edges(frame: pl.DataFrame, min_score: float) -> pl.DataFrame:
    """Gene–gene edges (ensembl_a, ensembl_b) from annotations_string rows.

    A row is gene → partner protein ("STRING:<protein id>", named by its preferred name); the partner's
    gene is the one the same table resolved for that preferred name when it was the first protein.
    """
    rows = frame.filter(pl.col("ensembl_id").is_not_null() & (pl.col("score") >= min_score))
    names = rows.select(
        pl.col("source_gene_id").alias("term_name"), pl.col("ensembl_id").alias("ensembl_b")
    ).unique("term_name")
    return (
        rows.join(names, on="term_name", how="inner")
        .select(pl.col("ensembl_id").alias("ensembl_a"), "ensembl_b")
        .filter(pl.col("ensembl_a") != pl.col("ensembl_b"))
        .unique()
    )


def _network(
    database: str,
    unit_genes: pl.DataFrame,
    background: list[str],
    frame: pl.DataFrame,
    settings: EnrichmentSettings,
) -> tuple[pl.DataFrame, DatabaseSummary]:
    from sae_genomics_core.annotations.string_db import score_basis
    from sae_genomics_core.enrichment.network import MAX_PERMUTATIONS, network_enrichment

    # what the STRING scores were made from (channels, or combined_score), recorded with every row
    basis = score_basis(
        frame["source_version"].drop_nulls().unique() if "source_version" in frame.columns else []
    )
    sets = gene_sets(unit_genes, background, settings)
    network = _string_network(frame, sets.genes, len(background), settings)
    result = network_enrichment(network, sets.members, seed=settings.seed)
    term_name = f"edges within the gene set (STRING score ≥ {settings.min_network_score:g}; {basis})"
    table = _network_rows(database, term_name, sets, result, network.n_edges, len(background), settings)
    summary = DatabaseSummary(
        database=database,
        statistic="string_network",
        n_units=sets.features.size,
        n_terms=1,
        n_tests=result.height,
        n_tested_pairs=result.height,
        n_significant=int(table["significant"].sum()),
        n_units_significant=table.filter("significant")["feature"].n_unique(),
        background_size=len(background),
        notes={
            "edges": network.n_edges,
            "score": basis,
            # "monte_carlo": p-values below the tail's refine threshold, redone by sequential Monte Carlo
            "p_value_methods": dict(
                result["p_value_method"].value_counts().sort("p_value_method").iter_rows()
            ),
            "monte_carlo_at_cap": int((result["null_draws"] >= MAX_PERMUTATIONS).sum()),
        },
    )
    return table.select(list(ENRICHMENT_SCHEMA)).cast(ENRICHMENT_SCHEMA), summary  # type: ignore[arg-type]


def _string_network(
    frame: pl.DataFrame, genes: np.ndarray, n_genes: int, settings: EnrichmentSettings
) -> Network:
    """The STRING edges between background genes, as a graph over the gene sets' gene columns."""
    from sae_genomics_core.enrichment.network import Network

    index = _column_index(genes)
    edges = (
        network_edges(frame, settings.min_network_score)
        .join(index.rename({"ensembl_id": "ensembl_a", "column": "a"}), on="ensembl_a")
        .join(index.rename({"ensembl_id": "ensembl_b", "column": "b"}), on="ensembl_b")
    )
    return Network.from_edges(n_genes, edges["a"].to_numpy(), edges["b"].to_numpy())


def _network_rows(
    database: str,
    term_name: str,
    sets: GeneSets,
    result: pl.DataFrame,
    n_edges: int,
    background_size: int,
    settings: EnrichmentSettings,
) -> pl.DataFrame:
    """`network_enrichment`'s rows in the enrichment table's terms, BH over the units."""
    rows = result["unit"].to_numpy()
    q_values = bh_q_values(result["p_value"].to_numpy(), max(result.height, 1))
    p_values = result["p_value"].to_numpy()
    table = pl.DataFrame(
        {
            "feature": sets.features[rows],
            "database": [database] * rows.size,
            "term_id": [NETWORK_TERM_ID] * rows.size,
            "term_name": [term_name] * rows.size,
            "term_kind": ["network"] * rows.size,
            "statistic": ["string_network"] * rows.size,
            "overlap": result["observed_edges"].to_numpy(),
            "feature_set_size": result["set_size"].to_numpy(),
            "term_size": np.full(rows.size, n_edges, dtype=np.int64),
            "background_size": np.full(rows.size, background_size, dtype=np.int64),
            "expected_overlap": result["expected_edges"].to_numpy(),
            "odds_ratio": result["ratio"].to_numpy(),
            "p_value": p_values,
            "log10_p_value": np.log10(np.maximum(p_values, np.finfo(float).tiny)),
            "q_value": q_values,
        }
    )
    return table.with_columns(
        pl.col("odds_ratio").fill_nan(None),  # no edge expected and none seen: no ratio, not NaN
        significant=pl.col("q_value") <= settings.fdr,
        most_specific=pl.lit(None, dtype=pl.Boolean),
        overlap_genes=pl.lit(None, dtype=pl.List(pl.String)),
    )


def evidence_sources(derived_from: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """database → the independent source it counts as: databases linked by `derived_from` (in either
    direction, transitively) form one group, named by its alphabetically first member. A feature
    significant in HPO and in a Monarch snapshot derived from HPO then has one source of evidence, not two."""
    parent = {name: name for name in derived_from}
    for links in derived_from.values():
        parent.update({link: link for link in links if link not in parent})

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for name, links in derived_from.items():
        for link in links:
            first, second = sorted((root(name), root(link)))
            parent[second] = first
    return {name: root(name) for name in parent}


def with_evidence_source(table: pl.DataFrame, sources: Mapping[str, str]) -> pl.DataFrame:
    """The enrichment rows with `evidence_source` (see `evidence_sources`; a database not listed is its own)."""
    return table.with_columns(
        evidence_source=pl.col("database").replace_strict(
            dict(sources), default=pl.col("database"), return_dtype=pl.String
        )
    )


def random_gene_sets(sizes: np.ndarray, universe: Sequence[str], seed: int) -> pl.DataFrame:
    """unit_genes-shaped random sets: set i has sizes[i] genes drawn uniformly without replacement."""
    rng = np.random.default_rng(seed)
    genes = np.asarray(sorted(set(universe)), dtype=object)
    features, picked = [], []
    for unit, size in enumerate(np.minimum(sizes, genes.size)):
        features.append(np.full(size, unit, dtype=np.int64))
        picked.append(genes[rng.choice(genes.size, size=size, replace=False)])
    n = sum(f.size for f in features)
    chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=object)
    return pl.DataFrame(
        {
            "feature": np.concatenate(features) if features else np.zeros(0, dtype=np.int64),
            "ensembl_id": chosen.astype(str),
            "score": rng.random(n),
            "rank": np.ones(n, dtype=np.int64),
        }
    )


def shuffled_gene_sets(unit_genes: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The features' genes dealt out again at random: every feature keeps its number of candidate genes,
    every gene keeps how often it occurs across features, the pairing is random (a gene drawn twice for
    one feature counts once). This null keeps whatever decides which genes can be a feature's top genes
    at all (expression, vocab, well-studied genes) and removes only what ties genes to one feature."""
    rng = np.random.default_rng(seed)
    features = unit_genes["feature"].to_numpy()
    genes = unit_genes["ensembl_id"].to_numpy()[rng.permutation(unit_genes.height)]
    for _ in range(100):  # a gene dealt twice to one feature swaps places with a random other card
        later = pl.DataFrame({"f": features, "g": genes}).select(~pl.struct("f", "g").is_first_distinct())
        clash = np.flatnonzero(later.to_series().to_numpy())
        if clash.size == 0:
            break
        for card, partner in zip(clash, rng.integers(0, genes.size, clash.size), strict=True):
            genes[card], genes[partner] = genes[partner], genes[card]  # a swap keeps every gene's count
    dealt = pl.DataFrame(
        {
            "feature": features,
            "ensembl_id": genes,
            "score": rng.random(genes.size),
            "rank": np.ones(genes.size, dtype=np.int64),
        }
    )
    return dealt.unique(["feature", "ensembl_id"], keep="first", maintain_order=True)


@dataclass(frozen=True)
class CalibrationSettings:
    """The p-value-level calibration check (`calibrate`).

    thresholds: p-value levels at which the null rejection count is compared with its expectation;
    level: the check's family-wise false-alarm rate, Bonferroni-split over thresholds × databases;
    repeats: independent shuffles of all the features' gene sets;
    max_detectable_ratio: a (database, threshold) whose bound could not catch p-values this many times
    too small has too few null tests and is reported "not testable", never "pass"."""

    thresholds: tuple[float, ...] = (0.01, 0.001)
    level: float = 0.01
    repeats: int = 3
    max_detectable_ratio: float = 10.0

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise SettingsError("calibration needs at least one repeat")
        if not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
            raise SettingsError("calibration thresholds must be p-value levels between 0 and 1")
        if not 0 < self.level < 1:
            raise SettingsError("the calibration level must be between 0 and 1")


CALIBRATION_SCHEMA: dict[str, pl.DataType] = {
    "database": pl.String(),
    "statistic": pl.String(),
    "threshold": pl.Float64(),
    "n_sets": pl.Int64(),
    "n_tests": pl.Int64(),
    "observed": pl.Int64(),  # null tests with p ≤ threshold
    "expected": pl.Float64(),  # their expectation under the null (attainable levels summed)
    "observed_fraction": pl.Float64(),
    "expected_fraction": pl.Float64(),
    "ratio": pl.Float64(),
    "design_effect": pl.Float64(),
    "detectable_ratio": pl.Float64(),  # the smallest observed / expected the bound would reject
    "p_too_many": pl.Float64(),
    "p_too_few": pl.Float64(),
    "level": pl.Float64(),  # per database × threshold (Bonferroni share of the check's level)
    "status": pl.String(),
}


def calibrate(
    unit_genes: pl.DataFrame,
    background: Sequence[str],
    annotations: Mapping[str, pl.DataFrame],
    settings: EnrichmentSettings = EnrichmentSettings(),
    ontologies: Mapping[str, OntologyTables] | None = None,
    check: CalibrationSettings = CalibrationSettings(),
) -> pl.DataFrame:
    """Are the p-values valid where feature gene sets come from? One row per database × threshold.

    The features' genes are shuffled across features (`shuffled_gene_sets`: no set means anything) and go
    through the very same selection and tests. Under this null a hypergeometric pair reaches p ≤ t with
    its attainable probability (`rejection_probabilities`, exact for the pair's set size, term size,
    universe and min_overlap, ≤ t because the test is discrete); summed over every unit × term pair that
    is the expected count. The observed count must not exceed it beyond an exact one-sided binomial bound
    (binomtest at `check.level` / (thresholds × databases)); pairs sharing a set are dependent (terms
    overlap, HPO terms nest), so the counts are first divided by a design effect estimated from the
    per-set counts (Kish: ≥ 1, 1 for independent tests). A universe wider than where feature genes come
    from, or p-values too small, push the count up; far fewer rejections than attainable (p-values too
    large) are reported as "conservative". STRING (one network p-value per set, continuous-approximated)
    is held to the nominal t. Nothing to test, or too few tests to catch p-values
    `check.max_detectable_ratio` times too small: "not testable", never a pass."""
    settings = replace(settings, only_most_specific=False)  # every tested pair counts
    runs = [
        enrich(
            shuffled_gene_sets(unit_genes, settings.seed + 1 + r),
            background,
            annotations,
            settings,
            ontologies,
        )
        for r in range(check.repeats)
    ]
    databases = list(annotations)
    level = check.level / max(1, len(check.thresholds) * len(databases))
    rows = [
        _calibration_row(database, threshold, _null_counts(runs, database, threshold), level, check)
        for database in databases
        for threshold in check.thresholds
    ]
    return pl.DataFrame(rows, schema=CALIBRATION_SCHEMA)


def calibration_verdicts(calibration: pl.DataFrame) -> dict[str, str]:
    """database → "fail" (a threshold beyond its bound), "pass" (some threshold testable, none failed; a
    conservative one passes) or "not testable" (no threshold could have failed)."""
    verdicts = {}
    for database, frame in calibration.group_by("database", maintain_order=True):
        statuses = set(frame["status"].to_list())
        verdicts[str(database[0])] = (
            "fail" if "fail" in statuses else "not testable" if statuses == {"not testable"} else "pass"
        )
    return verdicts


@dataclass
class _NullCounts:
    statistic: str
    observed: np.ndarray  # per shuffled set: its tests with p ≤ threshold
    expected: np.ndarray  # per shuffled set: the null expectation of that count
    tests: np.ndarray  # per shuffled set: its tests (unit × term pairs)


def _null_counts(runs: list[EnrichmentResult], database: str, threshold: float) -> _NullCounts:
    observed, expected, tests, statistic = [], [], [], "hypergeometric"
    for run in runs:
        summary = next(s for s in run.summaries if s.database == database)
        statistic = summary.statistic
        table = run.table.filter(pl.col("database") == database)
        if summary.design is None:  # a network statistic: one test per set, valid p-values hold P ≤ t
            units = table.filter(pl.col("p_value").is_not_null())
            observed.append((units["p_value"].to_numpy() <= threshold).astype(np.int64))
            expected.append(np.full(units.height, threshold))
            tests.append(np.ones(units.height, dtype=np.int64))
            continue
        design = summary.design
        sizes, per_size = np.unique(design.set_sizes, return_inverse=True)
        terms, per_term = np.unique(design.term_sizes, return_counts=True)
        grid = rejection_probabilities(sizes, terms, design.population, design.min_overlap, threshold)
        hits = table.filter(pl.col("p_value") <= threshold).group_by("feature").len()
        count = dict(zip(hits["feature"].to_list(), hits["len"].to_list(), strict=True))
        observed.append(np.array([count.get(int(u), 0) for u in design.units], dtype=np.int64))
        expected.append((grid @ per_term)[per_size.reshape(-1)] if sizes.size else np.zeros(0))
        tests.append(np.full(design.units.size, design.term_sizes.size, dtype=np.int64))
    return _NullCounts(statistic, *(np.concatenate(parts) for parts in (observed, expected, tests)))


def _calibration_row(
    database: str, threshold: float, counts: _NullCounts, level: float, check: CalibrationSettings
) -> dict[str, object]:
    from scipy.stats import binom, binomtest

    n_tests, observed, expected = (
        int(counts.tests.sum()),
        int(counts.observed.sum()),
        float(counts.expected.sum()),
    )
    row: dict[str, object] = {
        "database": database,
        "statistic": counts.statistic,
        "threshold": threshold,
        "n_sets": counts.tests.size,
        "n_tests": n_tests,
        "observed": observed,
        "expected": expected,
        "level": level,
        "status": "not testable",
    }
    if n_tests == 0 or expected <= 0:
        return row
    ratio = observed / expected
    # dispersion of the per-set counts around the fitted rate, relative to the null's Poisson variance (so a
    # chance excess cannot shrink it), with the small-sample factor S / (S − 1) over S sets
    residual = float(np.sum((counts.observed - ratio * counts.expected) ** 2))
    n_sets = counts.tests.size
    design_effect = max(1.0, residual / expected * n_sets / max(n_sets - 1, 1))
    n_eff = max(1, round(n_tests / design_effect))
    k_eff = min(n_eff, round(observed / design_effect))
    p0 = expected / n_tests  # the mean attainable level: a binomial is the widest law with this mean
    p_too_many = binomtest(k_eff, n_eff, p0, alternative="greater").pvalue
    exact = counts.statistic == "hypergeometric"  # a known attainable level: too few is meaningful too
    p_too_few = binomtest(k_eff, n_eff, p0, alternative="less").pvalue if exact else None
    critical = float(binom.isf(level, n_eff, p0)) + 1  # the smallest effective count the bound rejects
    detectable = critical * design_effect / expected
    row.update(
        observed_fraction=observed / n_tests,
        expected_fraction=p0,
        ratio=ratio,
        design_effect=design_effect,
        detectable_ratio=detectable,
        p_too_many=p_too_many,
        p_too_few=p_too_few,
    )
    row["status"] = _status(p_too_many, p_too_few, detectable, level, check)
    return row


def _status(
    p_too_many: float, p_too_few: float | None, detectable: float, level: float, check: CalibrationSettings
) -> str:
    if p_too_many < level:
        return "fail"
    if detectable > check.max_detectable_ratio:
        return "not testable"
    if p_too_few is not None and p_too_few < level:
        return "conservative"
    return "pass"
