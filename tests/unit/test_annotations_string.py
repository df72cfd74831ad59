"""STRING: real v12.0 links + info rows, score threshold, species filter, block-wise parsing, live downloads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations import string_db
from sae_genomics_core.annotations.base import Annotations, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.conftest import SNAPSHOTS
from tests.fakes.http_service import Answer, FakeService

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "string"
SNAP = SNAPSHOTS / "string"
LINKS = gzip.decompress((SNAP / string_db.StringClient.snapshot_files[0]).read_bytes()).decode()
INFO = gzip.decompress((SNAP / string_db.StringClient.snapshot_files[1]).read_bytes()).decode()
LCK, EGFR_PROTEIN = "ENSG00000182866", "STRING:9606.ENSP00000275493"
# real rows: LCK–EGFR 748 (kept at 700); an edited weak copy and a mouse row must both be dropped
WEAK = "9606.ENSP00000477713 9606.ENSP00000269571 650\n"  # LCK–ERBB2 below 700
MOUSE = "10090.ENSMUSP00000000001 10090.ENSMUSP00000000002 999\n"
# named like human genes, so only the species filter keeps the mouse link out
MOUSE_INFO = "10090.ENSMUSP00000000001\tLCK\t509\tedited\n10090.ENSMUSP00000000002\tEGFR\t1210\tedited\n"
FAST = {"backoff_s": 0.01, "min_interval_s": 0.0}


def lck_row(result: Annotations, term_id: str = EGFR_PROTEIN) -> dict[str, object]:
    rows = result.frame.filter((pl.col("ensembl_id") == LCK) & (pl.col("term_id") == term_id))
    assert rows.height == 1, f"no LCK → {term_id} row"
    return rows.row(0, named=True)


def write(path: Path, text: str, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if gz else text.encode())
    return path


def run_file(tmp_path: Path, links: str, info: str, resolver: GeneResolver, **extra: object) -> Annotations:
    files = [write(tmp_path / "links.v12.0.txt.gz", links), write(tmp_path / "info.v12.0.txt.gz", info)]
    config = SourceConfig.from_mapping("string", {"score_threshold": 700, **extra})
    return refresh("string", config, resolver, mode="file", files=files)


def test_snapshot_gives_demo_genes_their_partners(gene_resolver: GeneResolver) -> None:
    result = refresh("string", load_sources()["string"], gene_resolver, mode="snapshot")
    demo = pl.read_csv(SNAPSHOTS / "demo_genes.tsv", separator="\t")["ensembl_id"].to_list()
    assert result.frame.filter(pl.col("ensembl_id").is_in(demo))["ensembl_id"].n_unique() >= 150
    row = lck_row(result)
    assert (row["symbol"], row["term_name"], row["term_kind"]) == ("LCK", "EGFR", "interaction")
    assert row["score"] == pytest.approx(0.748) and row["evidence"] == "combined_score=748"
    assert result.source_version == "STRING v12.0"
    assert result.frame["score"].min() >= 0.7


def test_live_downloads_filter_and_version(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    version = json.loads((FIXTURES / "api_json_version.json").read_text())
    with FakeService() as service:
        links = Answer.text(LINKS + WEAK + MOUSE, gzipped=True, headers={"ETag": '"l1"'})
        service.route("/download/9606.protein.links.v12.0.txt.gz", links)
        service.route(
            "/download/9606.protein.info.v12.0.txt.gz", Answer.text(INFO + MOUSE_INFO, gzipped=True)
        )
        service.route("/api/json/version", Answer.json(version), Answer.json(version[0]))
        config = SourceConfig.from_mapping(
            "string",
            {
                "api": service.url + "/api",
                "bulk_url": service.url + "/download/9606.protein.links.v12.0.txt.gz",
                "info_url": service.url + "/download/9606.protein.info.v12.0.txt.gz",
                "score_threshold": 700,
            },
        )
        first = refresh("string", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST)
        # the second answer is the bare object some mirrors send; the links file is unchanged (304)
        second = refresh("string", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST)
        link_requests = [r for r in service.requests if r.path.endswith("links.v12.0.txt.gz")]
        assert link_requests[1].headers["If-None-Match"] == '"l1"'
        assert service.requests[-1].query["caller_identity"] == ["sae-genomics"]
    assert lck_row(first)["score"] == pytest.approx(0.748)
    assert (
        first.frame.filter(pl.col("term_id") == "STRING:9606.ENSP00000269571")
        .filter(pl.col("ensembl_id") == LCK)
        .is_empty()
    )  # the 650 link is below the threshold
    assert not first.frame["term_id"].str.contains("10090").any()
    for result in (first, second):
        assert result.source_version == (
            "STRING v12.0; API string_version 12.0 (https://version-12-0.string-db.org)"
        )
    assert first.frame.height == second.frame.height == 1696


def test_failed_version_check_keeps_the_file_release(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route("/l/9606.protein.links.v12.0.txt.gz", Answer.text(LINKS, gzipped=True))
        service.route("/i/9606.protein.info.v12.0.txt.gz", Answer.text(INFO, gzipped=True))
        service.route("/api/json/version", Answer.text("down", status=503))
        config = SourceConfig.from_mapping(
            "string",
            {
                "api": service.url + "/api",
                "bulk_url": service.url + "/l/9606.protein.links.v12.0.txt.gz",
                "info_url": service.url + "/i/9606.protein.info.v12.0.txt.gz",
            },
        )
        options = {**FAST, "retries": 1}
        result = refresh(
            "string", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=options
        )
    assert result.source_version == "STRING v12.0" and lck_row(result)["score"] == pytest.approx(0.748)


def test_block_wise_parsing_matches_a_whole_read(
    tmp_path: Path, gene_resolver: GeneResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run_file(tmp_path, LINKS, INFO, gene_resolver).frame.drop("retrieved_at")
    monkeypatch.setattr(string_db, "BLOCK_BYTES", 97)  # blocks end mid-line: the carry must stitch them
    blocked = run_file(tmp_path, LINKS, INFO, gene_resolver).frame.drop("retrieved_at")
    assert blocked.equals(whole) and whole.height == 1696


def test_file_mode_any_order_plain_text_and_threshold(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    info = write(tmp_path / "my_info.txt", INFO, gz=False)
    links = write(tmp_path / "my_links.txt", LINKS, gz=False)
    config = SourceConfig.from_mapping("string", {"score_threshold": 900})
    result = refresh("string", config, gene_resolver, mode="file", files=[info, links])
    assert result.frame["score"].min() >= 0.9 and 0 < result.frame.height < 1696
    assert result.frame.filter((pl.col("ensembl_id") == LCK) & (pl.col("term_id") == EGFR_PROTEIN)).is_empty()
    assert result.source_version == "STRING (release not in the file names)"


def test_schema_drift(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    # the detailed links file: channel scores before combined_score
    _header, *rows = LINKS.splitlines()
    detailed = "protein1 protein2 neighborhood experimental combined_score\n" + "".join(
        f"{a} {b} 0 12 {s}\n" for a, b, s in (r.split() for r in rows)
    )
    assert lck_row(run_file(tmp_path, detailed, INFO, gene_resolver))["score"] == pytest.approx(0.748)
    with pytest.raises(SchemaError, match="combined_score"):
        run_file(tmp_path, LINKS.replace("combined_score", "score", 1), INFO, gene_resolver)
    with pytest.raises(SchemaError, match="preferred_name"):
        run_file(tmp_path, LINKS, INFO.replace("preferred_name", "name", 1), gene_resolver)


def test_malformed_and_truncated_files(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with pytest.raises(PayloadError, match="cut line"):
        run_file(tmp_path, LINKS[: LINKS.index("\n", 5000) + 10], INFO, gene_resolver)
    with pytest.raises(PayloadError, match="missing fields"):
        run_file(tmp_path, LINKS + "9606.ENSP00000477713 9606.ENSP00000275493\n", INFO, gene_resolver)
    with pytest.raises(PayloadError, match="malformed"):
        run_file(tmp_path, LINKS + "9606.ENSP00000477713 9606.ENSP00000275493 high\n", INFO, gene_resolver)
    links = tmp_path / "links.v12.0.txt.gz"
    write(links, LINKS)
    links.write_bytes(links.read_bytes()[:-200])  # a cut gzip stream
    info = write(tmp_path / "info.v12.0.txt.gz", INFO)
    with pytest.raises(PayloadError, match="truncated"):
        refresh("string", SourceConfig("string"), gene_resolver, mode="file", files=[links, info])
    with pytest.raises(PayloadError, match="no human links"):
        run_file(tmp_path, LINKS, INFO, gene_resolver, score_threshold=1001)
