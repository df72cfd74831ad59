"""Which units (SAE features, PCA or random directions) are enriched for which annotation terms.

One job per database, all units × all terms at once:
- universe: the background (model vocab ∩ genes expressed in the dataset, with an Ensembl id), and,
  by default, only those background genes the database annotates at all (`annotated_only`): a gene no
  source has studied can never be in a term, and counting it would reward well-studied gene sets;
- a unit's gene set: its top `gene_set_size` genes (by `gene_set_order`) among the background, then
  those of them in the universe (`gene_set_scope="background"`, the usual gene-list ∩ universe), or its
  top genes among the universe itself (`"universe"`, always full sets but reaching deeper into the
  feature's ranking where its best genes are unannotated);
- terms: annotation terms within the universe with `min_term_size` ≤ size ≤ `max_term_size`; ontology
  databases (HPO) are first propagated up is_a (true-path rule) and kept to one branch (`term_roots`:
  HPO's Phenotypic abnormality, so the root, Clinical modifier, Onset, ... are never tested);
- overlaps: one sparse product (units × genes) · (genes × terms); pairs with overlap ≥ `min_overlap`
  get an exact one-sided hypergeometric p-value (= Fisher's exact, greater); all other pairs count
  as p = 1 in Benjamini–Hochberg over every unit × term pair of the database;
- STRING: no terms; a network statistic (edges inside the gene set vs a degree-aware null) per unit,
  BH over the units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.enrichment.hypergeom import bh_q_values, hypergeom_log_sf, odds_ratio
from sae_genomics_core.enrichment.ontology import OntologyTables

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
class EnrichmentSettings:
    gene_set_size: int = 20
    gene_set_order: Literal["score", "rank"] = "score"
    gene_set_scope: Literal["background", "universe"] = "background"
    min_term_size: int = 5
    max_term_size: int = 500
    min_overlap: int = 2
    fdr: float = 0.05
    annotated_only: bool = True
    only_most_specific: bool = False
    exclude_term_kinds: tuple[str, ...] = ("inheritance",)
    # (database, root): only terms below the root are tested (HPO: Phenotypic abnormality)
    term_roots: tuple[tuple[str, str], ...] = (("hpo", "HP:0000118"),)
    min_network_score: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.gene_set_size < 1:
            problems.append("gene_set_size must be at least 1")
        if self.gene_set_order not in ("score", "rank"):
            problems.append("gene_set_order must be 'score' or 'rank'")
        if self.gene_set_scope not in ("background", "universe"):
            problems.append("gene_set_scope must be 'background' or 'universe'")
        if not 1 <= self.min_term_size <= self.max_term_size:
            problems.append("term sizes need 1 <= min_term_size <= max_term_size")
        if self.min_overlap < 1:
            problems.append("min_overlap must be at least 1")
        if not 0 < self.fdr < 1:
            problems.append("fdr must be between 0 and 1")
        if problems:
            raise ValueError("invalid enrichment settings: " + "; ".join(problems))


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


@dataclass
class EnrichmentResult:
    table: pl.DataFrame
    summaries: list[DatabaseSummary]

    def summary_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [{k: v for k, v in vars(s).items() if k != "notes"} for s in self.summaries],
            schema={
                "database": pl.String, "statistic": pl.String, "n_units": pl.Int64, "n_terms": pl.Int64,
                "n_tests": pl.Int64, "n_tested_pairs": pl.Int64, "n_significant": pl.Int64,
                "n_units_significant": pl.Int64, "background_size": pl.Int64,
            },
        )  # fmt: skip


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
    )  # fmt: skip
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
        raise ValueError(
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
    sizes = terms_long.group_by("term_id").len()
    kept = sizes.filter(pl.col("len").is_between(settings.min_term_size, settings.max_term_size))
    term_info = (
        terms_long.filter(pl.col("term_id").is_in(kept["term_id"].implode()))
        .group_by("term_id").agg(pl.col("term_name").first(), pl.col("term_kind").first(), pl.len().alias("size"))
        .sort("term_id").with_row_index("term_column")
    )  # fmt: skip
    members = terms_long.join(term_info.select("term_id", "term_column"), on="term_id").join(
        _column_index(sets.genes), on="ensembl_id"
    )
    annotation = sp.csc_matrix(
        (
            np.ones(members.height, dtype=np.int32),
            (members["column"].to_numpy(), members["term_column"].to_numpy()),
        ),
        shape=(sets.genes.size, term_info.height),
    )
    n_units, n_terms, population = sets.features.size, term_info.height, len(universe)
    overlaps = (sets.members @ annotation).tocoo()
    tested = overlaps.data >= settings.min_overlap
    unit_row, term_col, overlap = (
        overlaps.row[tested],
        overlaps.col[tested],
        overlaps.data[tested].astype(np.int64),
    )
    set_size = sets.sizes[unit_row].astype(np.int64)
    term_size = term_info["size"].to_numpy()[term_col].astype(np.int64)
    log_p = hypergeom_log_sf(overlap, population, term_size, set_size)
    n_tests = n_units * n_terms
    q_values = bh_q_values(np.exp(log_p), n_tests)
    table = pl.DataFrame({
        "feature": sets.features[unit_row], "database": [database] * unit_row.size,
        "term_id": term_info["term_id"].to_numpy()[term_col], "term_name": term_info["term_name"].to_numpy()[term_col],
        "term_kind": term_info["term_kind"].to_numpy()[term_col], "statistic": ["hypergeometric"] * unit_row.size,
        "overlap": overlap, "feature_set_size": set_size, "term_size": term_size,
        "background_size": np.full(unit_row.size, population, dtype=np.int64),
        "expected_overlap": set_size * term_size / max(population, 1),
        "odds_ratio": odds_ratio(overlap, population, term_size, set_size),
        "p_value": np.exp(log_p), "log10_p_value": log_p / np.log(10), "q_value": q_values,
    }, schema_overrides={"term_id": pl.String, "term_name": pl.String, "term_kind": pl.String})  # fmt: skip
    table = table.with_columns(significant=pl.col("q_value") <= settings.fdr)
    n_tested_pairs, n_significant = table.height, int(table["significant"].sum())
    n_units_significant = table.filter("significant")["feature"].n_unique()
    table = _flag_most_specific(table, ontology, settings)  # may drop rows: count before
    table = _with_overlap_genes(table, unit_genes, sets, members)
    summary = DatabaseSummary(
        database=database, statistic="hypergeometric", n_units=n_units, n_terms=n_terms, n_tests=n_tests,
        n_tested_pairs=n_tested_pairs, n_significant=n_significant,
        n_units_significant=n_units_significant, background_size=population, notes=notes,
    )  # fmt: skip
    return table.select(list(ENRICHMENT_SCHEMA)).cast(ENRICHMENT_SCHEMA), summary  # type: ignore[arg-type]


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
    )  # fmt: skip
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
    )  # fmt: skip


def _network(
    database: str,
    unit_genes: pl.DataFrame,
    background: list[str],
    frame: pl.DataFrame,
    settings: EnrichmentSettings,
) -> tuple[pl.DataFrame, DatabaseSummary]:
    from sae_genomics_core.enrichment.network import Network, network_enrichment

    sets = gene_sets(unit_genes, background, settings)
    index = _column_index(sets.genes)
    edges = (
        network_edges(frame, settings.min_network_score)
        .join(index.rename({"ensembl_id": "ensembl_a", "column": "a"}), on="ensembl_a")
        .join(index.rename({"ensembl_id": "ensembl_b", "column": "b"}), on="ensembl_b")
    )
    network = Network.from_edges(len(background), edges["a"].to_numpy(), edges["b"].to_numpy())
    result = network_enrichment(network, sets.members, seed=settings.seed)
    rows = result["unit"].to_numpy()
    q_values = bh_q_values(result["p_value"].to_numpy(), max(result.height, 1))
    p_values = result["p_value"].to_numpy()
    table = pl.DataFrame({
        "feature": sets.features[rows], "database": [database] * rows.size, "term_id": [NETWORK_TERM_ID] * rows.size,
        "term_name": [f"edges within the gene set (STRING combined score ≥ {settings.min_network_score:g})"] * rows.size,
        "term_kind": ["network"] * rows.size, "statistic": ["string_network"] * rows.size,
        "overlap": result["observed_edges"].to_numpy(), "feature_set_size": result["set_size"].to_numpy(),
        "term_size": np.full(rows.size, network.n_edges, dtype=np.int64),
        "background_size": np.full(rows.size, len(background), dtype=np.int64),
        "expected_overlap": result["expected_edges"].to_numpy(), "odds_ratio": result["ratio"].to_numpy(),
        "p_value": p_values, "log10_p_value": np.log10(np.maximum(p_values, np.finfo(float).tiny)), "q_value": q_values,
    })  # fmt: skip
    table = table.with_columns(
        pl.col("odds_ratio").fill_nan(None),  # no edge expected and none seen: no ratio, not NaN
        significant=pl.col("q_value") <= settings.fdr,
        most_specific=pl.lit(None, dtype=pl.Boolean),
        overlap_genes=pl.lit(None, dtype=pl.List(pl.String)),
    )
    summary = DatabaseSummary(
        database=database, statistic="string_network", n_units=sets.features.size, n_terms=1, n_tests=result.height,
        n_tested_pairs=result.height, n_significant=int(table["significant"].sum()),
        n_units_significant=table.filter("significant")["feature"].n_unique(), background_size=len(background),
        notes={"edges": network.n_edges},
    )  # fmt: skip
    return table.select(list(ENRICHMENT_SCHEMA)).cast(ENRICHMENT_SCHEMA), summary  # type: ignore[arg-type]


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
    return pl.DataFrame({
        "feature": np.concatenate(features) if features else np.zeros(0, dtype=np.int64),
        "ensembl_id": chosen.astype(str), "score": rng.random(n), "rank": np.ones(n, dtype=np.int64),
    })  # fmt: skip


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
    dealt = pl.DataFrame({
        "feature": features, "ensembl_id": genes, "score": rng.random(genes.size), "rank": np.ones(genes.size, dtype=np.int64),
    })  # fmt: skip
    return dealt.unique(["feature", "ensembl_id"], keep="first", maintain_order=True)


def calibrate(
    unit_genes: pl.DataFrame,
    background: Sequence[str],
    annotations: Mapping[str, pl.DataFrame],
    settings: EnrichmentSettings = EnrichmentSettings(),
    ontologies: Mapping[str, OntologyTables] | None = None,
    repeats: int = 1,
) -> pl.DataFrame:
    """The features' genes shuffled across features (`shuffled_gene_sets`) through the very same selection
    and tests: per database, the fraction of random sets with at least one significant term. With the
    right universe BH keeps it near or below the FDR level; a universe wider than where feature genes come
    from (the published 20,000-gene mistake) or an anti-conservative test pushes it up."""
    if repeats < 1:
        raise ValueError("calibration needs at least one repeat")
    frames = []
    for repeat in range(repeats):
        random_sets = shuffled_gene_sets(unit_genes, settings.seed + 1 + repeat)
        result = enrich(random_sets, background, annotations, settings, ontologies)
        frames.append(
            result.summary_frame().select(
                "database", pl.col("n_units").alias("n_sets"), pl.col("n_units_significant").alias("n_sets_significant"),
                pl.col("n_significant").alias("n_significant_pairs"), "n_tests",
            )
        )  # fmt: skip
    return (
        pl.concat(frames)
        .group_by("database", maintain_order=True)
        .agg(pl.col("n_sets", "n_sets_significant", "n_significant_pairs", "n_tests").sum())
        .with_columns(
            fraction_significant=pl.col("n_sets_significant")
            / pl.max_horizontal(pl.col("n_sets"), pl.lit(1)),
            fdr=pl.lit(settings.fdr),
        )
    )
