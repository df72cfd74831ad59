"""The HGNC resolver on the real complete set, and the common annotation shape built on it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from sae_genomics_core.annotations.base import RawAnnotations, diff_annotations, finalise
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.gencc import GenccClient
from sae_genomics_core.annotations.identifiers import GeneResolver, read_hgnc
from sae_genomics_core.annotations.store import gene_annotations_view
from tests.conftest import SNAPSHOTS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_hgnc_columns_and_lists(gene_resolver: GeneResolver) -> None:
    ids = gene_resolver.identifiers
    tp53 = ids.filter(pl.col("symbol") == "TP53").row(0, named=True)
    assert tp53["hgnc_id"] == "HGNC:11998" and tp53["ensembl_id"] == "ENSG00000141510"
    assert tp53["entrez_id"] == "7157" and "P04637" in tp53["uniprot_ids"]
    a1bg_as1 = ids.filter(pl.col("symbol") == "A1BG-AS1").row(0, named=True)
    assert a1bg_as1["prev_symbols"] == ["NCRNA00181", "A1BGAS", "A1BG-AS"]
    assert ids["hgnc_id"].is_unique().all()


@pytest.mark.skipif(not (SHARED / "hgnc").exists(), reason="needs ../shared/data")
def test_newest_layout_without_location_sortable_parses() -> None:
    frame = read_hgnc(SHARED / "hgnc" / "hgnc_complete_set.newest-layout.head.txt")
    assert frame.height == 15 and "A1BG" in frame["symbol"].to_list()


def test_resolution_statuses(gene_resolver: GeneResolver) -> None:
    resolution = gene_resolver.resolve(
        ["TP53", "A1BGAS", "FLJ23569", "c21orf58", "NOT_A_GENE", "TP53", None], "symbol"
    )
    frame = resolution.frame
    assert frame["query"].to_list() == ["TP53", "A1BGAS", "FLJ23569", "c21orf58", "NOT_A_GENE"]
    status = dict(zip(frame["query"], frame["status"], strict=True))
    matched = dict(zip(frame["query"], frame["matched_by"], strict=True))
    assert status == {
        "TP53": "mapped",
        "A1BGAS": "mapped",
        "FLJ23569": "mapped",
        "c21orf58": "mapped",
        "NOT_A_GENE": "unmapped",
    }
    assert matched["A1BGAS"] == "prev_symbol" and matched["FLJ23569"] == "alias_symbol"
    assert matched["c21orf58"] == "symbol_upper"
    report = resolution.report
    assert (report.n_queries, report.n_mapped, report.n_unmapped) == (5, 4, 1)
    assert report.unmapped_examples == ["NOT_A_GENE"] and "NOT_A_GENE" in report.summary()


def test_ambiguous_alias_is_reported_not_guessed(gene_resolver: GeneResolver) -> None:
    aliases = gene_resolver.identifiers.select("hgnc_id", "alias_symbols").explode("alias_symbols")
    symbols = set(gene_resolver.identifiers["symbol"].to_list())
    shared = (
        aliases.group_by("alias_symbols")
        .len()
        .filter((pl.col("len") > 1) & pl.col("alias_symbols").is_not_null())
    )
    alias = next(a for a in shared["alias_symbols"].to_list() if a not in symbols)
    resolution = gene_resolver.resolve([alias], "symbol")
    row = resolution.frame.row(0, named=True)
    assert row["status"] == "ambiguous" and row["ensembl_id"] is None and len(row["candidates"]) > 1
    assert resolution.report.n_ambiguous == 1 and alias in resolution.report.summary()


def test_other_id_kinds(gene_resolver: GeneResolver) -> None:
    def mapped(ids: list[str], kind: str) -> dict[str, str | None]:
        frame = gene_resolver.resolve(ids, kind).frame  # type: ignore[arg-type]
        return dict(zip(frame["query"], frame["ensembl_id"], strict=True))

    assert mapped(["7157", "NCBIGene:672", "999999999"], "entrez") == {
        "7157": "ENSG00000141510",
        "NCBIGene:672": "ENSG00000012048",
        "999999999": None,
    }
    assert mapped(["HGNC:5", "5"], "hgnc") == {"HGNC:5": "ENSG00000121410", "5": "ENSG00000121410"}
    assert mapped(["P04637", "P04217-2"], "uniprot") == {
        "P04637": "ENSG00000141510",
        "P04217-2": "ENSG00000121410",
    }
    ensembl = gene_resolver.resolve(["ENSG00000141510.16", "ENSG00000999999", "notanid"], "ensembl").frame
    assert ensembl["ensembl_id"].to_list() == ["ENSG00000141510", "ENSG00000999999", None]
    assert ensembl["matched_by"].to_list()[:2] == ["ensembl", "ensembl_not_in_hgnc"]
    with pytest.raises(ValueError, match="unknown id kind"):
        gene_resolver.resolve(["x"], "refseq")  # type: ignore[arg-type]


def test_genes_without_ensembl_are_reported(gene_resolver: GeneResolver) -> None:
    no_ensembl = gene_resolver.identifiers.filter(pl.col("ensembl_id").is_null())["hgnc_id"].head(2).to_list()
    resolution = gene_resolver.resolve(no_ensembl, "hgnc")
    assert resolution.frame["status"].to_list() == ["no_ensembl", "no_ensembl"]
    assert resolution.report.n_without_ensembl == 2 and resolution.mapping() == {}


def test_hgnc_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "hgnc.tsv"
    bad.write_text("hgnc_id\tsymbol\tentrez_id\nHGNC:5\tA1BG\t1\n")
    with pytest.raises(SchemaError, match="ensembl_gene_id"):
        read_hgnc(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(PayloadError):
        read_hgnc(empty)


def test_finalise_maps_collapses_and_reports(gene_resolver: GeneResolver) -> None:
    raw = pl.DataFrame(
        {
            "gene_id": ["7157", "7157", "672", "424242424", "7157"],
            "term_id": ["T:1", "T:1", "T:2", "T:1", None],
            "term_name": ["one", "one", "two", "one", "none"],
            "score": [0.2, 0.9, 0.5, 1.0, 1.0],
            "evidence": ["a", "b", "c", "d", "e"],
            "extra_column": [1, 2, 3, 4, 5],
        }
    )
    table = finalise(RawAnnotations(raw, "entrez", "v1", "test"), "testdb", gene_resolver).frame
    assert table.columns[:3] == ["database", "ensembl_id", "term_id"]
    rows = {(r["ensembl_id"], r["term_id"]): r for r in table.iter_rows(named=True)}
    assert set(rows) == {("ENSG00000141510", "T:1"), ("ENSG00000012048", "T:2")}
    tp53 = rows[("ENSG00000141510", "T:1")]
    assert tp53["score"] == 0.9 and tp53["evidence"] == "a; b" and tp53["n_evidence"] == 2
    assert tp53["symbol"] == "TP53" and tp53["source_version"] == "v1" and tp53["database"] == "testdb"
    with pytest.raises(SchemaError, match="term_id"):
        finalise(RawAnnotations(raw.drop("term_id"), "entrez", "v1", "t"), "testdb", gene_resolver)
    with pytest.raises(PayloadError, match="none of the source's genes mapped"):
        finalise(
            RawAnnotations(raw.with_columns(pl.lit("nope").alias("gene_id")), "symbol", "v1", "t"),
            "x",
            gene_resolver,
        )


def test_diff_counts_rows_and_genes() -> None:
    old = pl.DataFrame(
        {"ensembl_id": ["A", "A", "B"], "term_id": ["1", "2", "1"], "source_version": ["r1"] * 3}
    )
    new = pl.DataFrame({"ensembl_id": ["A", "C"], "term_id": ["1", "9"], "source_version": ["r2"] * 2})
    diff = diff_annotations(old, new)
    assert (diff.rows_added, diff.rows_removed, diff.rows_kept) == (1, 2, 1)
    assert (diff.genes_added, diff.genes_removed, diff.previous_version) == (1, 1, "r1")
    assert diff_annotations(None, new).rows_added == 2


def test_gene_annotations_view_unions_by_name(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    table = GenccClient.__new__(GenccClient)._parse(
        (SNAPSHOTS / "gencc" / "gencc-submissions.csv").read_bytes(), "x"
    )
    frame = finalise(table, "gencc", gene_resolver).frame
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        connection.register("f", frame.to_arrow())
        connection.execute("create table annotations_gencc as select * from f")
        connection.execute("create table annotations_other as select * exclude (evidence) from f")
        connection.execute(gene_annotations_view(["annotations_gencc", "annotations_other", "cells"]))
        assert connection.execute("select count(*), count(evidence) from gene_annotations").fetchone() == (
            2,
            1,
        )
