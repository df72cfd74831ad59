"""Ontology tables, the true-path rule and most-specific terms, on a tiny OBO DAG and on the real HPO snapshot."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations.base import SourceConfig
from sae_genomics_core.annotations.errors import PayloadError
from sae_genomics_core.annotations.hpo import HpoClient
from sae_genomics_core.annotations.http import HttpError
from sae_genomics_core.enrichment.ontology import (
    OntologyTables,
    fetch_ontology,
    is_a_closure,
    most_specific,
    propagate,
    read_ontology,
)
from tests.fakes.http_service import Answer, FakeService

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "ontology" / "tiny.obo"
HPO_DIR = ROOT / "external" / "snapshots" / "hpo"
HPO_ONTOLOGY = HPO_DIR / "hp.2023-01-27.json.gz"
HPO_SHA256 = "749fb5c6e0b2dfff811356a9f2b80f63867e96bb15bf366778ef4193bb196707"  # PROVENANCE.md
# the fixture's is_a graph (see its header): 4 closes a diamond over 2 and 3; 5 is_a 4 and 2 directly
ROOT_T, A, B, C, D, E = (f"TST:000000{i}" for i in range(1, 7))
OBSOLETE_D, OBSOLETE_F, ALT_D = "TST:0000007", "TST:0000008", "TST:0000009"


@pytest.fixture(scope="module")
def tiny() -> OntologyTables:
    return read_ontology(TINY, "tiny")


@pytest.fixture(scope="module")
def hpo() -> OntologyTables:
    return read_ontology(HPO_ONTOLOGY)


def closure(tables: OntologyTables) -> set[tuple[str, str, int]]:
    return set(tables.ancestors.iter_rows())


def test_closure_is_exact_with_shortest_distances(tiny: OntologyTables) -> None:
    assert closure(tiny) == {
        (A, ROOT_T, 1),
        (B, ROOT_T, 1),
        (C, A, 1),
        (C, B, 1),
        (C, ROOT_T, 2),  # the diamond reaches the root twice: one row
        (D, C, 1),
        (D, A, 1),  # also C → A at 2: the shortest path wins
        (D, B, 2),
        (D, ROOT_T, 2),
        (E, A, 1),  # E part_of B: not an ancestor
        (E, ROOT_T, 2),
    }
    assert tiny.ancestors.schema == pl.Schema(
        {"term_id": pl.String, "ancestor_id": pl.String, "distance": pl.Int64}
    )


def test_terms_table_marks_obsolete_replacements_and_alternative_ids(tiny: OntologyTables) -> None:
    assert tiny.ontology == "tiny" and tiny.version == "2024-05-01"  # from tiny/releases/2024-05-01
    rows = {row[0]: row[1:] for row in tiny.terms.iter_rows()}
    assert rows[D] == ("D", False, None)
    assert rows[OBSOLETE_D] == ("obsolete D", True, D)
    assert rows[OBSOLETE_F] == ("obsolete F", True, None)  # `consider` is no replacement
    assert rows[ALT_D] == (None, True, D)  # an alt_id: a retired id merged into D
    assert len(rows) == 9
    assert tiny.terms.schema == pl.Schema(
        {"term_id": pl.String, "name": pl.String, "is_obsolete": pl.Boolean, "replaced_by": pl.String}
    )


def test_gzip_and_a_file_without_data_version(tiny: OntologyTables, tmp_path: Path) -> None:
    gz = tmp_path / "tiny.obo.gz"
    gz.write_bytes(gzip.compress(TINY.read_bytes()))
    again = read_ontology(gz, "tiny")
    assert again.version == "2024-05-01" and closure(again) == closure(tiny)

    undated = tmp_path / "undated.obo"
    undated.write_text("".join(line for line in TINY.open() if not line.startswith("data-version")))
    assert read_ontology(undated).version == hashlib.sha256(undated.read_bytes()).hexdigest()[:12]


def test_propagate_applies_the_true_path_rule(tiny: OntologyTables) -> None:
    annotations = pl.DataFrame(
        {
            "ensembl_id": ["g1", "g1", "g2", "g2", "g3", "g4", "g5", "g6", None, "g7"],
            "term_id": [D, D, E, A, OBSOLETE_D, ALT_D, OBSOLETE_F, "XYZ:1", A, None],
            "score": [1.0] * 10,  # ignored
        }
    )
    frame, report = propagate(annotations, tiny)
    got = {(g, t): (name, direct) for g, t, name, direct in frame.iter_rows()}
    from_d = {(D, "D", True), (C, "C", False), (A, "A", False), (B, "B", False), (ROOT_T, "root", False)}
    expected = {
        **{("g1", t): (n, d) for t, n, d in from_d},
        # g2 had A itself and through E: direct; part_of E → B does not reach B
        ("g2", E): ("E", True),
        ("g2", A): ("A", True),
        ("g2", ROOT_T): ("root", False),
        **{("g3", t): (n, d) for t, n, d in from_d},  # obsolete → replaced_by D
        **{("g4", t): (n, d) for t, n, d in from_d},  # alt id → D
        ("g5", OBSOLETE_F): ("obsolete F", True),  # no replacement: kept, no ancestors
        ("g6", "XYZ:1"): (None, True),  # unknown: kept, no ancestors
    }
    assert got == expected
    assert frame.height == len(expected)  # distinct
    assert frame.columns == ["ensembl_id", "term_id", "term_name", "direct"]
    assert frame.schema["direct"] == pl.Boolean
    assert (report.n_input_terms, report.n_remapped, report.n_obsolete, report.n_unknown) == (7, 2, 1, 1)
    assert set(report.remapped_examples) == {f"{OBSOLETE_D}→{D}", f"{ALT_D}→{D}"}
    assert report.unknown_examples == ("XYZ:1",) and report.obsolete_examples == (OBSOLETE_F,)


def test_broken_replacements_and_cycles_do_not_hang_or_raise(tmp_path: Path) -> None:
    path = tmp_path / "odd.obo"
    path.write_text(
        "format-version: 1.2\n\n[Term]\nid: X:1\nname: lone\n\n"
        "[Term]\nid: X:2\nis_obsolete: true\nreplaced_by: X:99\n\n"  # replacement not in the file
        "[Term]\nid: X:3\nis_obsolete: true\nreplaced_by: X:4\n\n"
        "[Term]\nid: X:4\nis_obsolete: true\nreplaced_by: X:3\n"  # a replacement cycle
    )
    tables = read_ontology(path)
    assert tables.ancestors.height == 0 and tables.ancestors.schema["distance"] == pl.Int64
    frame, report = propagate(
        pl.DataFrame({"ensembl_id": ["g"] * 3, "term_id": ["X:2", "X:3", "X:1"]}), tables
    )
    assert sorted(frame["term_id"]) == ["X:1", "X:2", "X:3"] and frame["direct"].all()
    assert (report.n_remapped, report.n_obsolete) == (0, 2)
    # an is_a cycle (invalid, but seen in drafts): pairs once each, never a term as its own ancestor
    edges = pl.DataFrame({"term_id": ["a", "b", "b"], "ancestor_id": ["b", "a", "c"]})
    assert set(is_a_closure(edges).iter_rows()) == {
        ("a", "b", 1),
        ("b", "a", 1),
        ("b", "c", 1),
        ("a", "c", 2),
    }


def test_propagate_needs_genes_and_terms(tiny: OntologyTables) -> None:
    with pytest.raises(ValueError, match="ensembl_id"):
        propagate(pl.DataFrame({"gene": ["g"], "term_id": [A]}), tiny)


def test_most_specific_drops_ancestors_within_a_group_only(tiny: OntologyTables) -> None:
    rows = pl.DataFrame(
        {
            "feature": [1, 1, 1, 1, 1, 1, 2, 2, 3, 1],
            "term_id": [ROOT_T, A, D, C, E, B, A, B, ROOT_T, "XYZ:1"],
            "q_value": [0.01 * i for i in range(10)],
        }
    )
    kept = most_specific(rows, tiny, by=["feature"])
    # feature 1: D covers C, A, B and the root; E covers A; the unknown term has no relatives
    # feature 2: siblings A and B both stay; feature 3: the root alone stays, whatever other groups hold
    assert kept.rows() == [
        (1, D, 0.02),
        (1, E, 0.04),
        (2, A, 0.06),
        (2, B, 0.07),
        (3, ROOT_T, 0.08),
        (1, "XYZ:1", 0.09),
    ]
    assert kept.columns == rows.columns
    # no grouping: one group over all rows
    assert set(most_specific(rows, tiny, by=[])["term_id"]) == {D, E, "XYZ:1"}
    assert most_specific(rows.clear(), tiny, by=["feature"]).height == 0
    with pytest.raises(ValueError, match="unit"):
        most_specific(rows, tiny, by=["unit"])


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"hello, not an ontology\n"),
        ("empty.obo", b""),
        ("other.json", b'{"foo": 1}'),  # JSON, not OBO-graphs (fastobo would panic on it)
        ("bad-graph.json", b'{"graphs": 3}'),
        ("broken.obo", b"format-version: 1.2\n\n[Term]\nid TST broken\n"),
        ("no-terms.obo", b"format-version: 1.2\nontology: x\n"),
        ("dangling.obo", b"format-version: 1.2\n\n[Term]\nid: X:3\nis_a: X:98\n"),
        ("cut.json.gz", gzip.compress(b'{"graphs": [{"nodes": []}]}' * 50)[:40]),
    ],
)
def test_unreadable_files_raise_payload_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PayloadError, match=rf"hpo: .*{name}.*download the hpo ontology again"):
        read_ontology(path)


def test_missing_file_raises_payload_error(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="does not exist"):
        read_ontology(tmp_path / "hp.obo")


def test_snapshot_is_the_unaltered_release() -> None:
    assert hashlib.sha256(HPO_ONTOLOGY.read_bytes()).hexdigest() == HPO_SHA256


def test_real_hpo_snapshot(hpo: OntologyTables) -> None:
    assert hpo.ontology == "hpo" and hpo.version == "2023-01-27"
    current = hpo.terms.filter(~pl.col("is_obsolete"))
    assert current.height > 15_000
    seizure = dict(
        hpo.ancestors.filter(pl.col("term_id") == "HP:0001250").select("ancestor_id", "distance").iter_rows()
    )
    # Seizure is_a Abnormality of nervous system physiology is_a … Phenotypic abnormality is_a All
    assert seizure["HP:0000118"] == 3 and seizure["HP:0000001"] == 4
    assert hpo.ancestors.filter(pl.col("term_id") == "HP:0000001").height == 0  # the root
    # every current term but the root reaches the root
    reach_root = hpo.ancestors.filter(pl.col("ancestor_id") == "HP:0000001")["term_id"].n_unique()
    assert reach_root == current.height - 1


def test_real_annotations_follow_the_true_path_rule(hpo: OntologyTables) -> None:
    raw = HpoClient(SourceConfig(name="hpo")).read_files([HPO_DIR / "genes_to_phenotype.2023-01-27.txt.gz"])
    annotations = raw.frame.rename({"gene_id": "ensembl_id"})  # entrez ids stand in for Ensembl here
    frame, report = propagate(annotations, hpo)
    assert report.n_input_terms > 2_000 and report.n_unknown == 0 and report.n_remapped == 0
    direct = frame.filter(pl.col("direct")).select("ensembl_id", "term_id")
    assert direct.sort(pl.all()).equals(annotations.select("ensembl_id", "term_id").unique().sort(pl.all()))
    # closed upwards: each gene × term's ancestors are there too
    implied = frame.join(hpo.ancestors, on="term_id").select(
        "ensembl_id", pl.col("ancestor_id").alias("term_id")
    )
    assert implied.join(frame, on=["ensembl_id", "term_id"], how="anti").height == 0
    assert frame.height > 2 * direct.height
    assert frame["term_name"].null_count() == 0
    # the most specific terms of each gene are its own (direct) ones
    leaves = most_specific(frame, hpo, by=["ensembl_id"])
    assert leaves["direct"].all() and 0 < leaves.height <= direct.height


def test_fetch_ontology_uses_the_conditional_get_cache(tmp_path: Path) -> None:
    body = TINY.read_bytes()
    with FakeService() as service:
        service.route("/obo/tiny.obo", Answer.text(body, headers={"ETag": '"r1"'}))
        first = fetch_ontology(service.url + "/obo/tiny.obo", tmp_path / "cache", backoff_s=0.01)
        assert first == tmp_path / "cache" / "hpo" / "tiny.obo" and first.read_bytes() == body
        assert read_ontology(first, "tiny").version == "2024-05-01"
        inode = first.stat().st_ino
        second = fetch_ontology(service.url + "/obo/tiny.obo", tmp_path / "cache", backoff_s=0.01)
        assert second == first and second.read_bytes() == body
        assert second.stat().st_ino == inode  # not rewritten: a fresh download replaces the file
        assert service.requests[1].headers.get("If-None-Match") == '"r1"'  # answered 304 from the cache
        assert service.count("/obo/tiny.obo") == 2

        service.route("/obo/gone.obo", Answer.text("not found", status=404))
        with pytest.raises(HttpError, match="hpo: HTTP 404"):
            fetch_ontology(service.url + "/obo/gone.obo", tmp_path / "cache", retries=0)


def test_hpo_enrichment_tests_phenotypic_abnormalities_only(hpo: OntologyTables) -> None:
    from sae_genomics_core.enrichment.enrich import EnrichmentSettings, enrich

    raw = HpoClient(SourceConfig(name="hpo")).read_files([HPO_DIR / "genes_to_phenotype.2023-01-27.txt.gz"])
    annotations = raw.frame.rename({"gene_id": "ensembl_id"}).with_columns(
        pl.col("ensembl_id").cast(pl.String)
    )
    genes = annotations["ensembl_id"].unique().sort().to_list()[:200]  # the snapshot: 215 demo genes
    # every unit takes 20 genes: the root, Onset and Clinical course branches would be large terms
    units = pl.DataFrame({"feature": [u for u in range(10) for _ in range(20)], "ensembl_id": genes})
    units = units.with_columns(score=pl.lit(1.0), rank=pl.lit(1, dtype=pl.Int64))
    settings = EnrichmentSettings(min_overlap=1, max_term_size=10_000)
    tested = enrich(units, genes, {"hpo": annotations}, settings, {"hpo": hpo}).table["term_id"].unique()
    below = hpo.ancestors.filter(pl.col("ancestor_id") == "HP:0000118")["term_id"]
    assert tested.len() > 100 and tested.is_in(below.implode()).all()
    assert not tested.is_in(["HP:0000001", "HP:0000118", "HP:0012823", "HP:0003674"]).any()
    unrestricted = EnrichmentSettings(min_overlap=1, max_term_size=10_000, term_roots=())
    every = enrich(units, genes, {"hpo": annotations}, unrestricted, {"hpo": hpo}).table["term_id"].unique()
    assert pl.Series(["HP:0000001", "HP:0012823"]).is_in(every.implode()).all()  # the setting keeps them out


def test_enrichment_flags_and_can_keep_only_the_most_specific_terms(tiny: OntologyTables) -> None:
    from dataclasses import replace

    from sae_genomics_core.enrichment.enrich import EnrichmentSettings, enrich

    genes = [f"ENSG{i:011d}" for i in range(300)]
    direct = [(g, D) for g in genes[:10]] + [(g, E) for g in genes[10:60]] + [(g, B) for g in genes[60:300]]
    annotations = pl.DataFrame(direct, schema=["ensembl_id", "term_id"], orient="row").with_columns(
        term_name=pl.lit("t"), term_kind=pl.lit("phenotype")
    )
    # unit 0 holds D's ten genes (so D, and through propagation C, A and B, are enriched); unit 1 is random
    units = pl.DataFrame({"feature": [0] * 10 + [1] * 10, "ensembl_id": genes[:10] + genes[100:300:20]})
    units = units.with_columns(score=pl.lit(1.0), rank=pl.lit(1, dtype=pl.Int64))
    settings = EnrichmentSettings(min_term_size=5, max_term_size=1_000)
    table = enrich(units, genes, {"toy": annotations}, settings, {"toy": tiny}).table
    significant = table.filter("significant")
    assert set(significant.filter(pl.col("feature") == 0)["term_id"]) >= {D, C, A}
    flags = dict(significant.filter(pl.col("feature") == 0).select("term_id", "most_specific").iter_rows())
    assert flags[D] is True and flags[C] is False and flags[A] is False  # D's ancestors are implied by D
    assert table.filter(~pl.col("significant"))["most_specific"].is_null().all()
    kept = enrich(
        units, genes, {"toy": annotations}, replace(settings, only_most_specific=True), {"toy": tiny}
    )
    assert kept.table.filter("significant")["term_id"].to_list() == [D]
    assert kept.table.filter(~pl.col("significant")).height == table.filter(~pl.col("significant")).height
