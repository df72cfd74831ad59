"""Hypergeometric enrichment: exact p-values, BH over the whole family, universes, calibration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from scipy.stats import fisher_exact, hypergeom
from statsmodels.stats.multitest import multipletests

from sae_genomics_core.enrichment.enrich import (
    CalibrationSettings,
    EnrichmentSettings,
    calibrate,
    calibration_verdicts,
    enrich,
    evidence_sources,
    gene_sets,
    random_gene_sets,
    shuffled_gene_sets,
    with_evidence_source,
)
from sae_genomics_core.enrichment.hypergeom import (
    bh_q_values,
    hypergeom_log_sf,
    odds_ratio,
    rejection_probabilities,
)


def _random_tables(rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    population = rng.integers(30, 20_000, size)
    successes = np.minimum(rng.integers(1, 700, size), population)
    draws = np.minimum(rng.integers(1, 80, size), population)
    low, high = np.maximum(0, draws + successes - population), np.minimum(draws, successes)
    overlap = low + (rng.random(size) * (high - low + 1)).astype(int)
    return overlap, population, successes, draws


def test_p_values_equal_fisher_exact_to_1e9_relative() -> None:
    rng = np.random.default_rng(7)
    overlap, population, successes, draws = _random_tables(rng, 3_000)
    # push a third of the tables into the far tail, where p is tiny
    far = rng.random(overlap.size) < 0.33
    overlap[far] = np.minimum(draws, successes)[far]
    ours = np.exp(hypergeom_log_sf(overlap, population, successes, draws))
    reference = np.array(
        [
            fisher_exact([[k, n - k], [K - k, N - K - n + k]], alternative="greater").pvalue
            for k, N, K, n in zip(overlap, population, successes, draws, strict=True)
        ]
    )
    positive = reference > 0
    assert np.max(np.abs(ours[positive] - reference[positive]) / reference[positive]) < 1e-9
    assert reference[positive].min() < 1e-30  # the tail was really exercised


def test_log_p_values_stay_exact_below_double_precision() -> None:
    # p below the smallest double: log p is still exact (scipy's own log-sf agrees)
    log_p = hypergeom_log_sf(np.array([200]), np.array([20_000]), np.array([220]), np.array([200]))
    assert log_p[0] == pytest.approx(hypergeom.logsf(199, 20_000, 220, 200), rel=1e-10)
    assert log_p[0] < np.log(1e-320)
    # an overlap at or below the support's minimum is certain
    assert (
        hypergeom_log_sf(np.array([0, 3]), np.array([10, 10]), np.array([8, 8]), np.array([5, 5]))[0] == 0.0
    )


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="population"):
        hypergeom_log_sf(np.array([1]), np.array([10]), np.array([11]), np.array([2]))


def test_odds_ratio_matches_fisher_exact_and_stays_finite() -> None:
    table = [[4, 16], [20, 960]]
    expected = fisher_exact(table, alternative="greater").statistic
    assert odds_ratio(np.array([4]), np.array([1000]), np.array([24]), np.array([20]))[0] == pytest.approx(
        expected
    )
    # a set inside its term (b = 0, sample OR inf) and a term inside the set (c = 0): Haldane–Anscombe
    ratios = odds_ratio(np.array([5, 5]), np.array([100, 100]), np.array([20, 5]), np.array([5, 20]))
    assert np.isfinite(ratios).all()
    assert ratios[0] == pytest.approx(5.5 * 80.5 / (0.5 * 15.5))  # a, b, c, d = 5, 0, 15, 80


def test_bh_over_untested_pairs_equals_padding_with_ones() -> None:
    rng = np.random.default_rng(3)
    p_values = np.concatenate([rng.random(500) ** 6, rng.random(300)])
    n_tests = 5_000
    padded = multipletests(np.concatenate([p_values, np.ones(n_tests - p_values.size)]), method="fdr_bh")[1]
    assert np.allclose(bh_q_values(p_values, n_tests), padded[: p_values.size], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="n_tests"):
        bh_q_values(p_values, 10)


def _world(seed: int = 0, n_genes: int = 2_000, n_terms: int = 120) -> tuple[list[str], pl.DataFrame]:
    rng = np.random.default_rng(seed)
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    rows = []
    for term in range(n_terms):
        size = int(rng.integers(5, 80))
        for gene in rng.choice(n_genes, size, replace=False):
            rows.append((genes[gene], f"T:{term:04d}", f"term {term}", "phenotype"))
    frame = pl.DataFrame(rows, schema=["ensembl_id", "term_id", "term_name", "term_kind"], orient="row")
    return genes, frame


def _planted(genes: list[str], annotations: pl.DataFrame, term: str, seed: int = 1) -> pl.DataFrame:
    """Feature 0: 12 genes of `term` + 8 random; features 1..40: random sets of 20."""
    rng = np.random.default_rng(seed)
    members = annotations.filter(pl.col("term_id") == term)["ensembl_id"].to_list()
    rows = [(0, g) for g in members[:12]]
    rows += [(0, genes[i]) for i in rng.choice(len(genes), 8, replace=False) if genes[i] not in members[:12]]
    for feature in range(1, 41):
        rows += [(feature, genes[i]) for i in rng.choice(len(genes), 20, replace=False)]
    frame = pl.DataFrame(rows, schema=["feature", "ensembl_id"], orient="row")
    return frame.with_columns(
        score=pl.int_range(pl.len(), 0, -1).over("feature").cast(pl.Float64),
        rank=pl.int_range(1, pl.len() + 1).over("feature").cast(pl.Int64),
        symbol=pl.col("ensembl_id").str.replace("ENSG0+", "G"),
    )


def test_enrich_finds_the_planted_term_with_fisher_p_values() -> None:
    genes, annotations = _world()
    term = annotations.group_by("term_id").len().filter(pl.col("len") >= 30)["term_id"].sort()[0]
    unit_genes = _planted(genes, annotations, term)
    settings = EnrichmentSettings(gene_set_size=20, min_overlap=1, annotated_only=False, max_term_size=100)
    result = enrich(unit_genes, genes, {"toy": annotations}, settings)
    table = result.table
    best = table.filter(pl.col("feature") == 0).sort("p_value").row(0, named=True)
    assert best["term_id"] == term and best["significant"] and best["overlap"] >= 12
    assert len(best["overlap_genes"]) == best["overlap"]  # the genes behind the overlap, by symbol
    assert all(g.startswith("G") for g in best["overlap_genes"])
    # every computed p-value is Fisher's exact test on that pair's table
    for row in table.sample(60, seed=0).iter_rows(named=True):
        k, n, K, N = row["overlap"], row["feature_set_size"], row["term_size"], row["background_size"]
        expected = fisher_exact([[k, n - k], [K - k, N - K - n + k]], alternative="greater").pvalue
        assert row["p_value"] == pytest.approx(expected, rel=1e-9)
    summary = result.summaries[0]
    assert summary.n_tests == 41 * summary.n_terms  # BH family: every unit × term, tested or not
    assert summary.n_units_significant >= 1
    # the random features stay silent (FDR 5 %: at most a stray one)
    assert table.filter((pl.col("feature") > 0) & pl.col("significant"))["feature"].n_unique() <= 2


def test_universe_term_bounds_and_min_overlap() -> None:
    genes, annotations = _world(seed=2)
    unit_genes = _planted(genes, annotations, annotations["term_id"].sort()[0])
    # a background that drops half the genes shrinks sets, terms and the population
    half = genes[::2]
    result = enrich(
        unit_genes, half, {"toy": annotations}, EnrichmentSettings(annotated_only=False, min_overlap=1)
    )
    assert set(result.table["background_size"].to_list()) == {len(half)}
    sets = gene_sets(unit_genes, half, EnrichmentSettings())
    assert sets.sizes.max() <= 20 and np.isin(sets.genes, half).all()
    # annotated_only: the universe is the background genes the database annotates at all
    annotated = set(annotations["ensembl_id"].to_list()) & set(genes)
    result = enrich(unit_genes, genes, {"toy": annotations}, EnrichmentSettings(min_overlap=1))
    assert result.summaries[0].background_size == len(annotated) < len(genes)
    # term size bounds count genes inside the universe, and min_overlap drops pairs from p-values only
    bounded = enrich(
        unit_genes,
        genes,
        {"toy": annotations},
        EnrichmentSettings(min_term_size=20, max_term_size=40, min_overlap=2),
    )
    assert bounded.table["term_size"].is_between(20, 40).all()
    assert (bounded.table["overlap"] >= 2).all()
    assert bounded.summaries[0].n_tests == bounded.summaries[0].n_units * bounded.summaries[0].n_terms


def test_gene_set_is_the_top_genes_then_those_the_database_annotates() -> None:
    genes = [f"ENSG{i:011d}" for i in range(100)]
    annotated = genes[::2]  # the database knows every other gene
    annotations = pl.DataFrame(
        {
            "ensembl_id": annotated,
            "term_id": [f"T:{i % 5}" for i in range(50)],
            "term_name": ["t"] * 50,
            "term_kind": ["phenotype"] * 50,
        }
    )
    unit_genes = pl.DataFrame({"feature": [0] * 100, "ensembl_id": genes, "score": np.arange(100, 0, -1.0)})
    unit_genes = unit_genes.with_columns(rank=pl.int_range(1, 101).cast(pl.Int64))
    settings = EnrichmentSettings(gene_set_size=20, min_overlap=1, max_term_fraction=0.5)  # 50-gene universe
    result = enrich(unit_genes, genes, {"toy": annotations}, settings)
    assert set(result.table["feature_set_size"].to_list()) == {10}  # top 20 ∩ annotated
    deeper = enrich(unit_genes, genes, {"toy": annotations}, replace(settings, gene_set_scope="universe"))
    assert set(deeper.table["feature_set_size"].to_list()) == {20}  # top 20 of the annotated genes


def test_inheritance_terms_and_unmapped_rows_are_left_out() -> None:
    genes, annotations = _world(seed=4, n_terms=20)
    extra = pl.DataFrame(
        {
            "ensembl_id": [genes[0]] * 6 + [None],
            "term_id": ["HP:0000006"] * 6 + ["T:none"],
            "term_name": ["Autosomal dominant inheritance"] * 6 + ["x"],
            "term_kind": ["inheritance"] * 6 + ["phenotype"],
        }
    )
    result = enrich(_planted(genes, annotations, "T:0000"), genes, {"toy": pl.concat([annotations, extra])})
    assert not result.table["term_id"].is_in(["HP:0000006", "T:none"]).any()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_term_size"):
        EnrichmentSettings(min_term_size=50, max_term_size=10)
    with pytest.raises(ValueError, match="gene_set_order"):
        EnrichmentSettings(gene_set_order="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background is empty"):
        enrich(
            pl.DataFrame(
                schema={"feature": pl.Int64, "ensembl_id": pl.String, "score": pl.Float64, "rank": pl.Int64}
            ),
            [],
            {},
        )


def test_random_sets_have_the_requested_sizes() -> None:
    genes = [f"g{i}" for i in range(100)]
    frame = random_gene_sets(np.array([5, 20, 1]), genes, seed=3)
    assert frame.group_by("feature").len().sort("feature")["len"].to_list() == [5, 20, 1]
    assert frame.unique(["feature", "ensembl_id"]).height == frame.height


def _calibration_world(seed: int = 11) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
    """1,500 expressed genes, 150 terms on them, 300 features whose 30 candidate genes are expressed ones."""
    rng = np.random.default_rng(seed)
    expressed = [f"ENSG{i:011d}" for i in range(1_500)]
    rows = [
        (expressed[g], f"T:{t}", f"t{t}", "phenotype")
        for t in range(150)
        for g in rng.choice(len(expressed), int(rng.integers(10, 60)), replace=False)
    ]
    annotations = pl.DataFrame(rows, schema=["ensembl_id", "term_id", "term_name", "term_kind"], orient="row")
    return expressed, annotations, random_gene_sets(np.full(300, 30), expressed, seed=seed + 1)


def _statuses(calibration: pl.DataFrame) -> list[str]:
    return calibration.sort("threshold", descending=True)["status"].to_list()


def test_calibration_passes_a_correct_null_and_fails_p_values_ten_times_too_small(monkeypatch) -> None:
    import sae_genomics_core.enrichment.enrich as enrich_module

    expressed, annotations, unit_genes = _calibration_world()
    settings = EnrichmentSettings(annotated_only=False)
    right = calibrate(unit_genes, expressed, {"toy": annotations}, settings)
    assert _statuses(right) == ["pass", "pass"] and calibration_verdicts(right) == {"toy": "pass"}
    assert right["n_sets"][0] == 3 * 300 and right["n_tests"][0] == 3 * 300 * 150  # every unit × term pair
    assert right["ratio"].is_between(0.8, 1.25).all()  # observed / attainable expectation
    assert (right["expected_fraction"] < right["threshold"]).all()  # discrete test: below nominal
    assert (right["detectable_ratio"] < 2).all()  # the bound has power against a 2× inflation

    log_sf = enrich_module.hypergeom_log_sf
    monkeypatch.setattr(enrich_module, "hypergeom_log_sf", lambda *a: log_sf(*a) - np.log(10))
    shrunk = calibrate(unit_genes, expressed, {"toy": annotations}, settings)
    assert _statuses(shrunk) == ["fail", "fail"] and calibration_verdicts(shrunk) == {"toy": "fail"}
    # the former check (shuffled sets with any BH-significant term ≤ 5 %) passed these p-values
    shuffled = shuffled_gene_sets(unit_genes, seed=1)
    summary = enrich(shuffled, expressed, {"toy": annotations}, settings).summaries[0]
    assert summary.n_units_significant / summary.n_units <= 0.05


def test_calibration_fails_a_universe_padded_twofold() -> None:
    expressed, annotations, unit_genes = _calibration_world(seed=3)
    padding = [f"ENSG{i:011d}" for i in range(1_500, 3_000)]  # in no feature's genes and no term
    settings = EnrichmentSettings(annotated_only=False)
    assert calibration_verdicts(calibrate(unit_genes, expressed, {"toy": annotations}, settings)) == {
        "toy": "pass"
    }
    padded = calibrate(unit_genes, expressed + padding, {"toy": annotations}, settings)
    assert _statuses(padded) == ["fail", "fail"] and (padded["ratio"] > 3).all()
    # the former check (shuffled sets with any BH-significant term ≤ 5 %) passed this universe
    summary = enrich(
        shuffled_gene_sets(unit_genes, seed=1), expressed + padding, {"toy": annotations}, settings
    )
    assert summary.summaries[0].n_units_significant / summary.summaries[0].n_units <= 0.05
    # the default universe (genes the database annotates) drops such padding, and the check agrees
    default = calibrate(unit_genes, expressed + padding, {"toy": annotations}, EnrichmentSettings())
    assert calibration_verdicts(default) == {"toy": "pass"}


def test_calibration_is_not_testable_where_nothing_or_too_little_was_tested() -> None:
    expressed, annotations, unit_genes = _calibration_world(seed=4)
    settings = EnrichmentSettings(annotated_only=False)
    # every term above the size bound: no test at all
    empty = calibrate(
        unit_genes, expressed, {"toy": annotations}, replace(settings, max_term_size=5, min_term_size=5)
    )
    assert _statuses(empty) == ["not testable", "not testable"]
    assert calibration_verdicts(empty) == {"toy": "not testable"}
    # three features and three small terms: too few null tests to catch p-values 10× too small
    few_terms = annotations.filter(pl.col("term_id").is_in(["T:0", "T:1", "T:2"]))
    few = calibrate(unit_genes.filter(pl.col("feature") < 3), expressed, {"toy": few_terms}, settings)
    assert calibration_verdicts(few) == {"toy": "not testable"} and (few["detectable_ratio"] > 10).all()


def test_rejection_probabilities_are_the_attainable_levels_of_the_exact_test() -> None:
    rng = np.random.default_rng(5)
    population, min_overlap, alpha = 800, 2, 0.01
    set_sizes, term_sizes = np.array([1, 3, 20, 45]), np.array([2, 7, 40, 300, 800])
    levels = rejection_probabilities(set_sizes, term_sizes, population, min_overlap, alpha)
    for i, n in enumerate(set_sizes):
        for j, K in enumerate(term_sizes):
            tail = hypergeom.sf(np.arange(n + 1) - 1, population, K, n)  # P(X ≥ k)
            rejecting = [t for k, t in enumerate(tail) if k >= min_overlap and t <= alpha]
            assert levels[i, j] == pytest.approx(rejecting[0] if rejecting else 0.0, rel=1e-9, abs=1e-300)
    assert (levels <= alpha).all() and levels[0].max() == 0.0  # one gene never reaches overlap 2
    # and it is what a simulated null rejects at
    draws = hypergeom.rvs(population, 40, 20, size=400_000, random_state=rng)
    critical = min(
        k for k in range(21) if k >= min_overlap and hypergeom.sf(k - 1, population, 40, 20) <= alpha
    )
    assert (draws >= critical).mean() == pytest.approx(levels[2, 2], rel=0.05)


def test_max_term_size_is_relative_to_the_universe_unless_given_in_genes() -> None:
    genes = [f"ENSG{i:011d}" for i in range(2_000)]
    sizes = {"T:a": 10, "T:b": 30, "T:c": 60, "T:d": 120}  # terms nested in the first 120 genes
    rows = [(genes[g], term, term, "phenotype") for term, size in sizes.items() for g in range(size)]
    annotations = pl.DataFrame(rows, schema=["ensembl_id", "term_id", "term_name", "term_kind"], orient="row")
    unit_genes = random_gene_sets(np.full(5, 20), genes[:1_000], seed=0).with_columns(
        symbol=pl.col("ensembl_id")
    )

    def tested(background: list[str], **options: object) -> tuple[int, list[str]]:
        result = enrich(
            unit_genes, background, {"toy": annotations}, EnrichmentSettings(min_overlap=1, **options)
        )
        return result.summaries[0].notes["max_term_size"], sorted(set(result.table["term_id"]))  # type: ignore[return-value]

    # the default: 10 % of the universe, whatever its size
    assert tested(genes[:500], annotated_only=False) == (50, ["T:a", "T:b"])
    assert tested(genes[:1_000], annotated_only=False) == (100, ["T:a", "T:b", "T:c"])
    assert tested(genes)[0] == 12  # annotated_only: the universe is the 120 annotated genes
    # an absolute bound, as configs gave it before, replaces the fraction
    assert tested(genes[:1_000], annotated_only=False, max_term_size=500)[1] == ["T:a", "T:b", "T:c", "T:d"]
    with pytest.raises(ValueError, match="max_term_fraction"):
        EnrichmentSettings(max_term_fraction=0)


def test_shuffled_sets_keep_set_sizes_and_gene_frequencies() -> None:
    unit_genes = random_gene_sets(np.array([10, 25, 40]), [f"g{i}" for i in range(60)], seed=2)
    shuffled = shuffled_gene_sets(unit_genes, seed=3)
    assert shuffled.unique(["feature", "ensembl_id"]).height == shuffled.height
    sizes = shuffled.group_by("feature").len().sort("feature")["len"].to_list()
    assert sizes == [10, 25, 40]  # every feature keeps its number of genes ...
    counts = {g: n for g, n in unit_genes["ensembl_id"].value_counts().iter_rows()}
    assert {
        g: n for g, n in shuffled["ensembl_id"].value_counts().iter_rows()
    } == counts  # ... every gene its count
    assert set(shuffled["ensembl_id"]) <= set(unit_genes["ensembl_id"])
    assert not shuffled.sort("feature", "ensembl_id").equals(
        unit_genes.select(shuffled.columns).sort("feature", "ensembl_id")
    )
    with pytest.raises(ValueError, match="repeat"):
        CalibrationSettings(repeats=0)


def test_an_ontology_database_with_no_usable_rows_gives_no_rows() -> None:
    from pathlib import Path

    from sae_genomics_core.enrichment.ontology import read_ontology

    ontology = read_ontology(Path(__file__).parents[1] / "fixtures" / "ontology" / "tiny.obo", "hpo")
    genes, annotations = _world(seed=5, n_terms=10)
    only_inheritance = annotations.head(8).with_columns(term_kind=pl.lit("inheritance"))
    result = enrich(
        _planted(genes, annotations, "T:0000"), genes, {"hpo": only_inheritance}, ontologies={"hpo": ontology}
    )
    assert result.table.height == 0 and result.summaries[0].n_terms == 0


def test_string_goes_through_the_network_statistic_with_finite_or_null_ratios() -> None:
    genes = [f"ENSG{i:011d}" for i in range(60)]
    rng = np.random.default_rng(0)
    clique = [(a, b) for a in range(8) for b in range(8) if a != b]  # unit 0's genes, densely linked
    scattered = [(int(a), int(b)) for a, b in rng.integers(8, 40, (80, 2)) if a != b]
    rows = [
        {
            "ensembl_id": genes[a],
            "term_id": f"STRING:9606.P{b}",
            "term_name": f"N{b}",
            "term_kind": "interaction",
            "source_gene_id": f"N{a}",
            "score": 0.9,
        }
        for a, b in clique + scattered + [(b, a) for a, b in scattered]
    ]
    string = pl.DataFrame(rows)
    unit_genes = pl.DataFrame({"feature": [0] * 8 + [1] * 8, "ensembl_id": genes[:8] + genes[50:58]})
    unit_genes = unit_genes.with_columns(score=pl.lit(1.0), rank=pl.lit(1, dtype=pl.Int64))
    table = enrich(unit_genes, genes, {"string": string}).table.sort("feature")
    assert table["statistic"].to_list() == ["string_network"] * 2
    assert table["overlap"].to_list() == [28, 0]  # edges inside each set, each counted once
    assert table["significant"].to_list() == [True, False]
    assert table["odds_ratio"][0] > 1 and table["odds_ratio"][1] is None  # 0 seen of 0 expected: no ratio


def test_derived_sources_count_once_in_the_feature_summary() -> None:
    import duckdb

    from sae_genomics_core.annotations.base import load_sources
    from sae_genomics_core.warehouse.views import create_feature_summary

    derived_from = {name: source.extra.get("derived_from", []) for name, source in load_sources().items()}
    groups = evidence_sources(derived_from)
    assert (
        groups["monarch"] == groups["hpo"] and groups["string"] == "string"
    )  # as external/sources.yaml says
    assert evidence_sources({"a": ["b"], "c": ["b"], "d": []}) == {"a": "a", "b": "a", "c": "a", "d": "d"}
    # feature 0: HPO and the Monarch snapshot derived from it; feature 1: HPO and STRING
    pairs = [(0, "hpo", "HP:1"), (0, "monarch", "OMIM:1"), (1, "hpo", "HP:2"), (1, "string", "STRING:x")]
    enrichment = pl.DataFrame(pairs, schema=["feature", "database", "term_id"], orient="row").with_columns(
        dataset=pl.lit("d"),
        layer=pl.lit(0),
        term_name=pl.col("term_id"),
        log10_p_value=pl.lit(-5.0),
        q_value=pl.lit(0.01),
        significant=pl.lit(True),
        replicated=pl.lit(True),
        most_specific=pl.lit(None, pl.Boolean),
    )
    with duckdb.connect() as connection:
        connection.execute(
            "create table feature_stats as select 'd' as dataset, 0 as layer, feature, 0.1 as frequency, "
            "1 as fire_count, 1 as n_cells_active, 1.0 as mean_activation, 1.0 as max_activation from range(2) t(feature)"
        )
        connection.execute(
            "create table feature_genes as select 'd' as dataset, 0 as layer, 0 as feature, "
            "'G' as symbol, 'E' as ensembl_id, 1 as rank"
        )
        connection.execute(
            "create table feature_cell_types as select 'd' as dataset, 0 as layer, 0 as feature, 'T' as cell_type, "
            "0.5 as q_value, 0.0 as log2_fold_change, 0.0 as log2_fold_change_lower"
        )
        connection.register("frame", with_evidence_source(enrichment, groups).to_arrow())
        connection.execute("create table enrichment as select * from frame")
        create_feature_summary(connection)
        rows = connection.execute(
            "select feature, n_databases_replicated, replicated_databases from feature_summary order by feature"
        ).fetchall()
    assert rows == [(0, 1, ["hpo", "monarch"]), (1, 2, ["hpo", "string"])]
