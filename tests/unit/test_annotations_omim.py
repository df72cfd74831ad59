"""OMIM: genemap2 parsing (synthetic fixture), phenotype flags, per-row gene ids, key handling end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations.base import Annotations, SourceConfig
from sae_genomics_core.annotations.errors import MissingApiKey, PayloadError, SchemaError, SourceSkipped
from sae_genomics_core.annotations.http import HttpError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.fakes.http_service import Answer, FakeService

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "omim"
GENEMAP = (FIXTURES / "genemap2.synthetic.txt").read_text()  # synthetic: OMIM data may not be redistributed
KEY = "omimFAKEkey-7d1c9e"
TP53, BRCA1, CFTR = "ENSG00000141510", "ENSG00000012048", "ENSG00000001626"
FAST = {"backoff_s": 0.01}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMIM_TEST_KEY", KEY)
    return KEY


def config(**values: object) -> SourceConfig:
    return SourceConfig.from_mapping("omim", {"key_env": "OMIM_TEST_KEY", **values})


def rows(result: Annotations) -> dict[tuple[str, str], dict[str, object]]:
    return {(r["ensembl_id"], r["term_id"]): r for r in result.frame.iter_rows(named=True)}


def run_file(tmp_path: Path, text: str, resolver: GeneResolver, **values: object) -> Annotations:
    path = tmp_path / "genemap2.txt"
    path.write_text(text)
    return refresh("omim", config(**values), resolver, mode="file", files=[path])


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)


def test_live_download_with_key_in_path(
    tmp_path: Path, gene_resolver: GeneResolver, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeService() as service:
        service.route(f"/downloads/{key}/genemap2.txt", Answer.text(GENEMAP, headers={"ETag": '"g1"'}))
        cfg = config(bulk_url=service.url + "/downloads/{key}/genemap2.txt")
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
            result = refresh("omim", cfg, gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST)
            again = refresh("omim", cfg, gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST)
        assert [r.path for r in service.requests] == [f"/downloads/{key}/genemap2.txt"] * 2
        assert service.requests[1].headers["If-None-Match"] == '"g1"'
    found = rows(result)
    assert set(found) == {
        (TP53, "OMIM:900001"),
        (TP53, "OMIM:900002"),
        (BRCA1, "OMIM:900005"),
        (BRCA1, "OMIM:900006"),
        (CFTR, "OMIM:990004"),
    }
    assert found[(TP53, "OMIM:900001")]["term_name"] == "Synthetic tumour syndrome 1"
    assert found[(TP53, "OMIM:900001")]["source_gene_id"] == TP53
    assert found[(BRCA1, "OMIM:900005")]["source_gene_id"] == "672"  # no Ensembl id: Entrez used
    assert found[(CFTR, "OMIM:990004")]["source_gene_id"] == "CFTR"  # only the symbol
    assert result.source_version == again.source_version == "OMIM genemap2 generated 2026-10-01"
    assert result.origin.endswith("/downloads/***/genemap2.txt")
    assert caplog.records, "urllib3 logs the requests"
    assert_no_key(result.origin, result.source_version, *[r.getMessage() for r in caplog.records])
    assert not any(result.frame.select(pl.all().cast(pl.String).str.contains(KEY).any()).row(0))
    for path in tmp_path.rglob("*"):
        assert_no_key(path.name, path.read_text() if path.name.endswith(".json") else "")


def test_phenotype_flags_in_evidence(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    found = rows(run_file(tmp_path, GENEMAP, gene_resolver))
    assert found[(TP53, "OMIM:900001")]["evidence"] == (
        "mapping key 3 (molecular basis known) | Autosomal dominant"
    )
    assert found[(TP53, "OMIM:900002")]["term_name"] == "Synthetic trait, susceptibility to"
    assert "susceptibility" in str(found[(TP53, "OMIM:900002")]["evidence"])
    provisional = str(found[(BRCA1, "OMIM:900005")]["evidence"])
    assert "provisional (?)" in provisional and "Autosomal recessive, Autosomal dominant" in provisional
    assert found[(BRCA1, "OMIM:900005")]["term_name"] == "Synthetic provisional disorder"
    both = str(found[(BRCA1, "OMIM:900006")]["evidence"])
    assert "susceptibility" in both and "provisional (?)" in both
    assert "described in the gene entry" in str(found[(CFTR, "OMIM:990004")]["evidence"])
    # non-disease [..] never kept; mapping key (2) only when asked for
    assert (TP53, "OMIM:900003") not in found and (TP53, "OMIM:900004") not in found
    wider = rows(run_file(tmp_path, GENEMAP, gene_resolver, mapping_keys=[2, 3]))
    assert (TP53, "OMIM:900004") in wider and (TP53, "OMIM:900003") not in wider


def test_older_layout_and_schema_drift(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    older = GENEMAP.replace(
        "\tMIM Number\tGene Symbols\t", "\tMim Number\tGene/Locus And Other Related Symbols\t"
    )
    older = older.replace("Approved Gene Symbol", "Approved Symbol")
    expected = set(rows(run_file(tmp_path, GENEMAP, gene_resolver)))
    assert set(rows(run_file(tmp_path, older, gene_resolver))) == expected
    extra = "\n".join(
        line + "\textra" if line.startswith(("# Chromosome", "chr")) else line
        for line in GENEMAP.splitlines()
    )
    assert set(rows(run_file(tmp_path, extra + "\n", gene_resolver))) == expected
    with pytest.raises(SchemaError, match="phenotypes"):
        run_file(tmp_path, GENEMAP.replace("\tPhenotypes\t", "\tDisorders\t"), gene_resolver)


def test_malformed_and_truncated(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    cut = GENEMAP[: GENEMAP.index("\tTP53, P53") + 5]  # the TP53 row cut mid-way, no footer
    with pytest.raises(PayloadError, match="cut row"):
        run_file(tmp_path, cut, gene_resolver)
    with pytest.raises(PayloadError, match="not a genemap2"):
        run_file(tmp_path, "<html><body>Not found</body></html>\n", gene_resolver)
    only_header = GENEMAP[: GENEMAP.index("\nchr1") + 1]
    with pytest.raises(PayloadError, match="no gene rows"):
        run_file(tmp_path, only_header, gene_resolver)


def test_key_never_leaks_from_errors(
    tmp_path: Path, gene_resolver: GeneResolver, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeService() as service:
        service.route(f"/refused/{key}/genemap2.txt", Answer.text("Forbidden", status=403))
        # an expired key answers 200 with an HTML page that echoes the URL
        page = f"<html>Invalid download key /downloads/{key}/genemap2.txt</html>"
        service.route(f"/html/{key}/genemap2.txt", Answer.text(page))
        service.route(f"/down/{key}/genemap2.txt", Answer.text("err", status=503))
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
            with pytest.raises(HttpError, match="access refused") as refused:
                refresh(
                    "omim",
                    config(bulk_url=service.url + "/refused/{key}/genemap2.txt"),
                    gene_resolver,
                    cache_dir=tmp_path,
                    http_options=FAST,
                )
            with pytest.raises(PayloadError, match="not a genemap2") as html:
                refresh(
                    "omim",
                    config(bulk_url=service.url + "/html/{key}/genemap2.txt"),
                    gene_resolver,
                    cache_dir=tmp_path,
                    http_options=FAST,
                )
            with pytest.raises(HttpError, match="HTTP 503") as down:
                refresh(
                    "omim",
                    config(bulk_url=service.url + "/down/{key}/genemap2.txt"),
                    gene_resolver,
                    cache_dir=tmp_path,
                    http_options={**FAST, "retries": 1},
                )
    assert "***" in str(refused.value) and "***" in str(html.value)
    assert_no_key(refused.value, html.value, down.value, *[r.getMessage() for r in caplog.records])


def test_skipped_without_key_and_no_snapshot(
    tmp_path: Path, gene_resolver: GeneResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMIM_TEST_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="OMIM_TEST_KEY"):
        refresh(
            "omim",
            config(bulk_url="http://127.0.0.1:9/{key}/genemap2.txt"),
            gene_resolver,
            cache_dir=tmp_path,
        )
    with pytest.raises(SourceSkipped, match="redistribution"):
        refresh("omim", config(licence="JHU OMIM licence; no redistribution"), gene_resolver, mode="snapshot")
