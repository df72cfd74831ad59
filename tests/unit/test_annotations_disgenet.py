"""DisGeNET: batched, paginated GDA queries with the raw key header, 429 waits, envelopes, exports (synthetic)."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from sae_genomics_core.annotations.base import Annotations, GeneSet, SourceConfig
from sae_genomics_core.annotations.errors import (
    AnnotationError,
    MissingApiKey,
    PayloadError,
    SchemaError,
    SourceSkipped,
)
from sae_genomics_core.annotations.http import HttpError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.fakes.http_service import Answer, FakeService, Seen

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "disgenet"
ENVELOPE = json.loads((FIXTURES / "gda_summary.synthetic.json").read_text())  # synthetic: no redistribution
TEMPLATE = ENVELOPE["payload"][0]
KEY = "dgnFAKEkey-0b5e2a44"
TP53, BRCA1, CFTR = "ENSG00000141510", "ENSG00000012048", "ENSG00000001626"
PER_GENE = {"7157": 120, "672": 30, "1080": 5}  # associations the fake service holds per NCBI Gene id
PATH = "/api/v1/gda/summary"
FAST = {"backoff_s": 0.01, "min_interval_s": 0.0}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DGN_TEST_KEY", KEY)
    return KEY


def config(service: FakeService | None = None, **extra: object) -> SourceConfig:
    api = (service.url if service else "http://127.0.0.1:9") + "/api/v1/"
    return SourceConfig.from_mapping("disgenet", {"api": api, "key_env": "DGN_TEST_KEY", **extra})


def genes(*entrez: Any) -> GeneSet:
    # refresh() treats a GeneSet without Ensembl ids as empty (len counts them): give each gene one
    return GeneSet([f"ENSG{i:011d}" for i in range(len(entrez))], [], list(entrez))


def record(gene: str, i: int) -> dict[str, Any]:
    return {
        **TEMPLATE,
        "geneNcbiID": int(gene),
        "diseaseUMLSCUI": f"C{int(gene) % 100:02d}{i:05d}",
        "diseaseName": f"Synthetic disease {gene}-{i}",
        "score": round(0.3 + (i % 7) / 10, 2),
        "numPMIDs": i,
    }


def paged(seen: Seen) -> Answer:
    """The API's paging: 100 per page, 0-based page_number, several genes per request."""
    ids = seen.query["gene_ncbi_id"][0].split(",")
    page = int(seen.query["page_number"][0])
    rows = [record(g, i) for g in ids for i in range(PER_GENE.get(g, 0))]
    chunk = rows[page * 100 : (page + 1) * 100]
    paging = {"pageSize": 100, "totalElements": len(rows), "totalElementsInPage": len(chunk)}
    return Answer.json({**ENVELOPE, "paging": {**paging, "currentPageNumber": page}, "payload": chunk})


def live(
    service: FakeService, resolver: GeneResolver, tmp_path: Path, gene_set: GeneSet, **extra: object
) -> Annotations:
    return refresh(
        "disgenet",
        config(service, **extra),
        resolver,
        mode="live",
        genes=gene_set,
        cache_dir=tmp_path,
        http_options=FAST,
    )


def test_batches_pages_and_key_header(
    tmp_path: Path, gene_resolver: GeneResolver, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeService() as service:
        service.route_fn(PATH, paged)
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
            result = live(
                service,
                gene_resolver,
                tmp_path,
                genes(7157, "672", None, "7157", "1080.0", "x"),
                batch_size=2,
            )
        queries = [(r.query["gene_ncbi_id"][0], r.query["page_number"][0]) for r in service.requests]
        assert queries == [("7157,672", "0"), ("7157,672", "1"), ("1080", "0")]
        for seen in service.requests:
            assert seen.headers["Authorization"] == key  # raw key, no "Bearer"
            assert seen.headers["accept"] == "application/json"
    frame = result.frame
    assert frame.height == sum(PER_GENE.values())  # every page of every batch kept
    counts = dict(frame.group_by("ensembl_id").len().iter_rows())
    assert counts == {TP53: 120, BRCA1: 30, CFTR: 5}
    row = frame.filter((pl.col("ensembl_id") == TP53) & (pl.col("term_id") == "UMLS:C5700119")).row(
        0, named=True
    )
    assert (row["term_name"], row["term_kind"], row["source_gene_id"]) == (
        "Synthetic disease 7157-119",
        "disease",
        "7157",
    )
    assert row["score"] == pytest.approx(0.3) and row["evidence"] == "ei=0.98, el=Definitive, numPMIDs=119"
    today = datetime.now(UTC).date().isoformat()
    assert result.source_version == f"DisGeNET API v1 (retrieved {today})"
    assert caplog.records
    for text in (result.origin, result.source_version, *[r.getMessage() for r in caplog.records]):
        assert KEY not in text
    assert not any(frame.select(pl.all().cast(pl.String).str.contains(KEY).any()).row(0))


def test_429_retry_header_is_waited_out(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    limited = Answer.json(
        {"message": "Too many requests"}, status=429, headers={"x-rate-limit-retry-after-seconds": "1"}
    )
    with FakeService() as service:
        service.route(PATH, limited, Answer.json(ENVELOPE))
        started = time.monotonic()
        result = live(service, gene_resolver, tmp_path, genes(7157, 672))
        assert time.monotonic() - started >= 0.9 and service.count(PATH) == 2
    assert set(result.frame["ensembl_id"]) == {TP53, BRCA1}


def test_min_score_is_sent_and_applied(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    with FakeService() as service:
        service.route(PATH, Answer.json(ENVELOPE))
        result = live(service, gene_resolver, tmp_path, genes(7157, 672), min_score=0.5, source="CURATED")
        assert service.requests[0].query["min_score"] == ["0.5"]
        assert service.requests[0].query["source"] == ["CURATED"]
    assert result.frame["score"].min() >= 0.5 and result.frame.height == 2  # the 0.35 row is gone


def test_error_answers(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    with FakeService() as service:
        service.route(
            PATH,
            Answer.json({"status": "ERROR", "httpStatus": 400, "error": f"bad key {KEY}", "payload": []}),
        )
        with pytest.raises(PayloadError, match="status 'ERROR'") as status:
            live(service, gene_resolver, tmp_path, genes(7157))
        service.route(PATH, Answer.text("<html>gateway</html>"))
        with pytest.raises(PayloadError, match="not JSON"):
            live(service, gene_resolver, tmp_path, genes(7157))
        service.route(PATH, Answer.json({"message": "Unauthorized"}, status=401))
        with pytest.raises(HttpError, match="access refused") as refused:
            live(service, gene_resolver, tmp_path, genes(7157))
        drifted = {**ENVELOPE, "payload": [{k: v for k, v in TEMPLATE.items() if k != "diseaseUMLSCUI"}]}
        service.route(PATH, Answer.json(drifted))
        with pytest.raises(SchemaError, match="diseaseUMLSCUI"):
            live(service, gene_resolver, tmp_path, genes(7157))
        service.route(PATH, Answer.json({**ENVELOPE, "paging": {"totalElements": 0}, "payload": []}))
        with pytest.raises(PayloadError, match="no annotation rows"):
            live(service, gene_resolver, tmp_path, genes(7157))
    assert KEY not in str(status.value) and "***" in str(status.value) and KEY not in str(refused.value)


def test_needs_genes_and_key(
    tmp_path: Path, gene_resolver: GeneResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DGN_TEST_KEY", KEY)
    with pytest.raises(AnnotationError, match="queried per gene"):
        refresh("disgenet", config(), gene_resolver, mode="live", cache_dir=tmp_path)
    with pytest.raises(SourceSkipped, match="redistribution"):
        refresh("disgenet", config(licence="academic; no redistribution"), gene_resolver, mode="snapshot")
    monkeypatch.delenv("DGN_TEST_KEY")
    with pytest.raises(MissingApiKey, match="DGN_TEST_KEY"):
        refresh("disgenet", config(), gene_resolver, mode="live", genes=genes(7157), cache_dir=tmp_path)


def test_file_exports(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    tsv = FIXTURES / "gda_summary.synthetic.tsv"
    csv = tmp_path / "disgenet_gda_2026-09-30.csv"
    pl.read_csv(tsv, separator="\t", infer_schema=False).with_columns(brand_new=pl.lit("x")).write_csv(csv)
    pages = tmp_path / "pages.json"
    pages.write_text(json.dumps([ENVELOPE, {**ENVELOPE, "payload": [record("1080", 1)]}]))
    expected = {(TP53, "UMLS:C9990001"), (TP53, "UMLS:C9990002"), (BRCA1, "UMLS:C9990001")}
    for files in ([tsv], [csv], [FIXTURES / "gda_summary.synthetic.json"]):
        result = refresh("disgenet", config(), gene_resolver, mode="file", files=files)
        assert set(result.frame.select("ensembl_id", "term_id").iter_rows()) == expected
        row = result.frame.filter(pl.col("term_id") == "UMLS:C9990002").row(0, named=True)
        assert row["score"] == pytest.approx(0.35) and row["evidence"] == "ei=1.0, numPMIDs=3"
    assert refresh("disgenet", config(), gene_resolver, mode="file", files=[csv]).source_version == (
        "DisGeNET API v1 export (file of 2026-09-30)"
    )
    both = refresh("disgenet", config(), gene_resolver, mode="file", files=[pages, tsv])
    assert both.frame.height == 4 and CFTR in both.frame["ensembl_id"].to_list()
    assert re.fullmatch(r"DisGeNET API v1 export \(file of \d{4}-\d{2}-\d{2}\)", both.source_version)


def test_file_drift_and_damage(tmp_path: Path, gene_resolver: GeneResolver, key: str) -> None:
    text = (FIXTURES / "gda_summary.synthetic.tsv").read_text()
    path = tmp_path / "gda.tsv"
    path.write_text(text.replace("diseaseUMLSCUI", "diseaseId", 1))
    with pytest.raises(SchemaError, match="diseaseUMLSCUI"):
        refresh("disgenet", config(), gene_resolver, mode="file", files=[path])
    path.write_text(text[: text.rindex("\t", 0, len(text) - 20)])  # the last row cut off
    with pytest.raises(PayloadError, match="cut row"):
        refresh("disgenet", config(), gene_resolver, mode="file", files=[path])
    cut = tmp_path / "gda.json"
    cut.write_text((FIXTURES / "gda_summary.synthetic.json").read_text()[:500])
    with pytest.raises(PayloadError, match="not valid JSON"):
        refresh("disgenet", config(), gene_resolver, mode="file", files=[cut])
