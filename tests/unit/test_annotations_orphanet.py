"""Orphanet client against a local fake of Orphadata (real en_product6.xml fragments, ISO-8859-1)."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations.base import Annotations, SourceConfig
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.http import HttpError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.fakes.http_service import Answer, FakeService

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "orphanet" / "en_product6.xml"
XML = FIXTURE.read_bytes()
PATH = "/data/xml/en_product6.xml"
LAST_MODIFIED = "Mon, 01 Feb 2021 05:00:00 GMT"
RELEASE = "Orphadata en_product6 2021-02-01 04:40:33 (version 1.3.7 / 4.1.7 [2020-12-03] (orientdb version))"
TSEN54, MID1, SPECC1L = "ENSG00000182173", "ENSG00000101871", "ENSG00000100014"
FAST = {"backoff_s": 0.01, "retries": 1}


def config(base: str) -> SourceConfig:
    return SourceConfig("orphanet", bulk_url=base + PATH, licence="CC-BY-4.0")


def row(table: pl.DataFrame, ensembl_id: str) -> dict[str, object]:
    found = table.filter(pl.col("ensembl_id") == ensembl_id)
    assert found.height == 1, f"{ensembl_id}: {found.height} rows"
    return found.row(0, named=True)


def disorder(xml: bytes, code: str) -> tuple[int, int]:
    """Byte span of the <Disorder> whose OrphaCode is `code` (for targeted edits of the real fragment)."""
    at = xml.index(f"<OrphaCode>{code}</OrphaCode>".encode())
    return xml.rindex(b"<Disorder ", 0, at), xml.index(b"</Disorder>", at)


def edit(xml: bytes, code: str, old: bytes, new: bytes) -> bytes:
    start, end = disorder(xml, code)
    assert old in xml[start:end], old
    return xml[:start] + xml[start:end].replace(old, new) + xml[end:]


def file_refresh(
    tmp_path: Path, content: bytes, resolver: GeneResolver, name: str = "en_product6.xml"
) -> Annotations:
    path = tmp_path / name
    path.write_bytes(content)
    return refresh("orphanet", config("http://unused"), resolver, mode="file", files=[path])


def test_live_streams_the_xml_and_maps_hgnc_xrefs(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route(PATH, Answer(XML, headers={"Content-Type": "text/xml", "Last-Modified": LAST_MODIFIED}))
        result = refresh(
            "orphanet", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        table = result.frame
        assert set(table["ensembl_id"]) == {TSEN54, MID1, SPECC1L}
        pch5 = row(table, TSEN54)
        assert pch5["term_id"] == "ORPHA:166068" and pch5["term_name"] == "Pontocerebellar hypoplasia type 5"
        assert pch5["term_kind"] == "disease" and pch5["score"] == 1.0 and pch5["symbol"] == "TSEN54"
        assert pch5["evidence"] == "Disease-causing germline mutation(s) in [PMID:21368912]"
        assert pch5["source_gene_id"] == "HGNC:27561"
        opitz = row(table, MID1)
        assert opitz["term_id"] == "ORPHA:306597"
        assert (
            opitz["evidence"] == "Disease-causing germline mutation(s) (loss of function) in"
        )  # no PMID given
        assert result.source_version == f"{RELEASE} ({LAST_MODIFIED})"

        again = refresh(
            "orphanet", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        assert service.requests[-1].headers.get("If-Modified-Since") == LAST_MODIFIED
        assert service.count(PATH) == 2
        assert again.frame.drop("retrieved_at").equals(table.drop("retrieved_at"))


def test_candidate_biomarker_and_unassessed_links_are_dropped(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    xml = edit(XML, "306588", b"Disease-causing germline mutation(s) in", b"Candidate gene tested in")
    xml = edit(xml, "166068", b'<Name lang="en">Assessed</Name>', b'<Name lang="en">Not yet assessed</Name>')
    table = file_refresh(tmp_path, xml, gene_resolver).frame
    assert set(table["ensembl_id"]) == {MID1}
    xml = edit(XML, "306597", b"(loss of function) in", b"(gain of function) in")
    xml = edit(xml, "306588", b"Disease-causing germline mutation(s) in", b"Major susceptibility factor in")
    xml = edit(xml, "166068", b"Disease-causing germline mutation(s) in", b"Biomarker tested in")
    table = file_refresh(tmp_path, xml, gene_resolver).frame
    assert set(table["ensembl_id"]) == {MID1, SPECC1L}
    assert row(table, SPECC1L)["score"] == pytest.approx(0.6)
    assert row(table, MID1)["score"] == 1.0


def test_gene_id_falls_back_from_hgnc_to_ensembl_to_symbol(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    without_hgnc = b"<Source>HGNC</Source>\n                <Reference>7095</Reference>"
    xml = edit(
        XML, "306597", without_hgnc, b"<Source>Other</Source>\n                <Reference>7095</Reference>"
    )
    xml = edit(xml, "306588", b"<Source>HGNC</Source>", b"<Source>Other</Source>")
    xml = edit(xml, "306588", b"<Source>Ensembl</Source>", b"<Source>Other</Source>")
    result = file_refresh(tmp_path, xml, gene_resolver)
    assert row(result.frame, MID1)["source_gene_id"] == MID1
    assert row(result.frame, SPECC1L)["source_gene_id"] == "SPECC1L"
    assert row(result.frame, TSEN54)["source_gene_id"] == "HGNC:27561"
    assert result.resolution.n_mapped == 3 and result.resolution.n_unmapped == 0


def test_latin1_names_pmid_lists_and_old_orphanumber(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    name = "Syndrome de Gougerot-Sjögren".encode("latin-1")
    xml = edit(XML, "166068", b"Pontocerebellar hypoplasia type 5", name)
    xml = edit(xml, "166068", b"21368912[PMID]", b"21368912[PMID]_2[PMID]_3[PMID]_4[PMID]")
    xml = edit(xml, "306588", b"<OrphaCode>306588</OrphaCode>", b"<OrphaNumber>306588</OrphaNumber>")
    table = file_refresh(tmp_path, xml, gene_resolver).frame
    pch5 = row(table, TSEN54)
    assert pch5["term_name"] == "Syndrome de Gougerot-Sjögren"
    assert pch5["evidence"] == "Disease-causing germline mutation(s) in [PMID:21368912, PMID:2, PMID:3, +1]"
    assert row(table, SPECC1L)["term_id"] == "ORPHA:306588"


def test_file_gzip_and_snapshot(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    packed = file_refresh(tmp_path, gzip.compress(XML), gene_resolver, name="en_product6.xml.gz")
    assert packed.source_version == RELEASE and packed.frame.height == 3
    snapshot = refresh("orphanet", config("http://unused"), gene_resolver, mode="snapshot")
    assert snapshot.source_version == RELEASE
    assert set(snapshot.frame["term_id"]) == {"ORPHA:166068", "ORPHA:306597", "ORPHA:306588"}


def test_extra_elements_tolerated_missing_ones_named(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    extra = edit(
        XML, "166068", b"<DisorderGroup ", b"<Prevalence>1-9 / 1 000 000</Prevalence>\n<DisorderGroup "
    )
    extra = extra.replace(b"<SourceOfValidation/>", b"<SourceOfValidation/><Curator>x</Curator>")
    assert file_refresh(tmp_path, extra, gene_resolver).frame.height == 3
    no_code = edit(XML, "306597", b"<OrphaCode>306597</OrphaCode>", b"")
    with pytest.raises(SchemaError, match="OrphaCode"):
        file_refresh(tmp_path, no_code, gene_resolver)
    start, end = disorder(XML, "306588")
    chunk = XML[start:end]
    cut_from, cut_to = (
        chunk.index(b"<DisorderGeneAssociationType"),
        chunk.index(b"<DisorderGeneAssociationStatus"),
    )
    no_type = XML[:start] + chunk[:cut_from] + chunk[cut_to:] + XML[end:]
    with pytest.raises(SchemaError, match="DisorderGeneAssociationType"):
        file_refresh(tmp_path, no_type, gene_resolver)


def test_truncated_or_foreign_payloads_fail_clearly(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with pytest.raises(PayloadError, match="not well-formed"):
        file_refresh(tmp_path, XML[: len(XML) // 2], gene_resolver)
    with pytest.raises(PayloadError, match="truncated gzip"):
        file_refresh(tmp_path, gzip.compress(XML)[:400], gene_resolver, name="en_product6.xml.gz")
    with pytest.raises(PayloadError, match="not an Orphadata JDBOR"):
        file_refresh(tmp_path, b"<?xml version='1.0'?><html><body>Maintenance</body></html>", gene_resolver)
    undated = XML.replace(b'date="2021-02-01 04:40:33" ', b"")
    assert file_refresh(tmp_path, undated, gene_resolver).source_version.startswith(
        "Orphadata en_product6 (undated file, sha256:"
    )
    with pytest.raises(PayloadError, match="no <Disorder>"):
        file_refresh(tmp_path, b'<JDBOR date="2021-02-01"><DisorderList count="0"/></JDBOR>', gene_resolver)
    with FakeService() as service:
        service.route(PATH, Answer(XML, truncate_to=2000))
        with pytest.raises(HttpError, match=r"truncated|broke off"):
            refresh(
                "orphanet",
                config(service.url),
                gene_resolver,
                mode="live",
                cache_dir=tmp_path,
                http_options=FAST,
            )
