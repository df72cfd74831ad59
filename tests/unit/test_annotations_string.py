"""STRING: real v12.0 links + info rows, score threshold, species filter, block-wise parsing, live downloads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations import string_db
from sae_genomics_core.annotations.base import Annotations, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError
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
COMBINED = {"channels": "combined"}  # the plain links file has no channel columns
# real STRING v12 rows with every channel: the API's network answer for CDC37 (../shared/data/string/
# api_json_network_BRAF_9606_20260811.json), laid out as the detailed links file lays them out (× 1000)
API_ROWS = [  # partner protein, name, nscore fscore pscore ascore escore dscore tscore, combined score
    ("9606.ENSP00000302486", "MAP2K1", (0, 0, 0, 98, 161, 0, 338), 456),
    ("9606.ENSP00000262948", "MAP2K2", (0, 0, 0, 199, 199, 0, 241), 471),
    ("9606.ENSP00000407586", "HRAS", (0, 0, 0, 85, 46, 500, 89), 549),
    ("9606.ENSP00000256078", "KRAS", (0, 0, 0, 42, 82, 500, 205), 604),
    ("9606.ENSP00000358548", "NRAS", (0, 0, 0, 49, 46, 500, 304), 642),
]
CDC37 = "9606.ENSP00000222005"
DETAILED_HEADER = (
    "protein1 protein2 neighborhood fusion cooccurence coexpression experimental database textmining"
)
# info rows (real ids, names and sizes) of the two proteins the demo snapshot lacks
API_INFO = "9606.ENSP00000222005\tCDC37\t378\tedited\n9606.ENSP00000262948\tMAP2K2\t400\tedited\n"


def detailed_links(rows: list[tuple[str, str, tuple[int, ...], int]] = API_ROWS) -> str:
    """Both directions of each CDC37 link, as STRING lists them."""
    lines = [f"{DETAILED_HEADER} combined_score\n"]
    for partner, _name, channels, combined in rows:
        values = " ".join(map(str, channels))
        lines += [f"{CDC37} {partner} {values} {combined}\n", f"{partner} {CDC37} {values} {combined}\n"]
    return "".join(lines)


def string_formula(scores: list[int]) -> int:
    """STRING's combination (v12 combine_subscores.py): prior off each channel, 1 − Π(1 − s), prior back."""
    prior, one_minus = 0.041, 1.0
    for score in scores:
        one_minus *= 1 - (max(score / 1000, prior) - prior) / (1 - prior)
    return int(((1 - one_minus) * (1 - prior) + prior) * 1000)


def lck_row(result: Annotations, term_id: str = EGFR_PROTEIN) -> dict[str, object]:
    rows = result.frame.filter((pl.col("ensembl_id") == LCK) & (pl.col("term_id") == term_id))
    assert rows.height == 1, f"no LCK → {term_id} row"
    return rows.row(0, named=True)


def write(path: Path, text: str, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if gz else text.encode())
    return path


def run_file(tmp_path: Path, links: str, info: str, resolver: GeneResolver, **extra: object) -> Annotations:
    files = [write(tmp_path / "links.v12.0.txt.gz", links), write(tmp_path / "info.v12.0.txt.gz", info)]
    values = {"score_threshold": 700, **COMBINED, **extra}
    if values["channels"] is None:  # channels=None: the client's default
        del values["channels"]
    return refresh("string", SourceConfig.from_mapping("string", values), resolver, mode="file", files=files)


def test_snapshot_gives_demo_genes_their_partners(
    gene_resolver: GeneResolver, caplog: pytest.LogCaptureFixture
) -> None:
    result = refresh("string", load_sources()["string"], gene_resolver, mode="snapshot")
    # the snapshot's real rows carry only combined_score: used, with a warning and said in the version
    assert "no channel columns" in caplog.text
    demo = pl.read_csv(SNAPSHOTS / "demo_genes.tsv", separator="\t")["ensembl_id"].to_list()
    assert result.frame.filter(pl.col("ensembl_id").is_in(demo))["ensembl_id"].n_unique() >= 150
    row = lck_row(result)
    assert (row["symbol"], row["term_name"], row["term_kind"]) == ("LCK", "EGFR", "interaction")
    assert row["score"] == pytest.approx(0.748) and row["evidence"] == "combined_score=748"
    assert result.source_version == (
        "STRING v12.0; score: combined_score (snapshot without channel columns; incl. co-expression)"
    )
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
                **COMBINED,
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
            "STRING v12.0; API string_version 12.0 (https://version-12-0.string-db.org); "
            "score: combined_score (all channels, incl. co-expression and text-mining)"
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
                **COMBINED,
            },
        )
        options = {**FAST, "retries": 1}
        result = refresh(
            "string", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=options
        )
    assert result.source_version.startswith("STRING v12.0; score: combined_score")
    assert lck_row(result)["score"] == pytest.approx(0.748)


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
    config = SourceConfig.from_mapping("string", {"score_threshold": 900, **COMBINED})
    result = refresh("string", config, gene_resolver, mode="file", files=[info, links])
    assert result.frame["score"].min() >= 0.9 and 0 < result.frame.height < 1696
    assert result.frame.filter((pl.col("ensembl_id") == LCK) & (pl.col("term_id") == EGFR_PROTEIN)).is_empty()
    assert result.source_version == (
        "STRING (release not in the file names); score: combined_score (all channels, incl. co-expression "
        "and text-mining)"
    )


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
        config = SourceConfig.from_mapping("string", COMBINED)
        refresh("string", config, gene_resolver, mode="file", files=[links, info])
    with pytest.raises(PayloadError, match="no human links"):
        run_file(tmp_path, LINKS, INFO, gene_resolver, score_threshold=1001)


def test_channels_recombine_with_string_formula_and_exclude_coexpression_by_default(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    """All seven channels of the real rows give back STRING's own combined scores (±1: the channel scores
    are rounded); the default keeps experiments + database only, so co-expression and text-mining, however
    strong, change nothing."""
    info = INFO + API_INFO
    every = ["neighborhood", "fusion", "cooccurence", "coexpression", "experiments", "database", "textmining"]
    full = run_file(tmp_path, detailed_links(), info, gene_resolver, score_threshold=0, channels=every).frame
    default = run_file(tmp_path, detailed_links(), info, gene_resolver, score_threshold=0, channels=None)
    for partner, name, channels, combined in API_ROWS:
        term = "STRING:" + partner
        recombined = full.filter(pl.col("symbol").eq("CDC37") & pl.col("term_id").eq(term))["score"].item()
        assert abs(recombined * 1000 - combined) <= 1, (name, recombined, combined)
        row = default.frame.filter(pl.col("symbol").eq("CDC37") & pl.col("term_id").eq(term)).row(
            0, named=True
        )
        assert round(row["score"] * 1000) == string_formula([channels[4], channels[5]])
        assert (
            row["evidence"]
            == f"experimental={channels[4]}; database={channels[5]}; combined_score={combined}"
        )
    hras = default.frame.filter(pl.col("symbol").eq("CDC37") & pl.col("term_name").eq("HRAS"))
    assert hras["score"].item() == pytest.approx(0.502)  # (0.046, 0.5) → 1 − (1 − 0.0052)(1 − 0.4786) → 0.502
    assert default.source_version == "STRING v12.0; score: channels experiments+database"
    # co-expression and text-mining at 999 on every row: the default scores do not move, the full ones do
    loud = [(p, n, (*c[:3], 999, *c[4:6], 999), s) for p, n, c, s in API_ROWS]
    same = run_file(tmp_path, detailed_links(loud), info, gene_resolver, score_threshold=0, channels=None)
    assert same.frame.sort("ensembl_id", "term_id")["score"].equals(
        default.frame.sort("ensembl_id", "term_id")["score"]
    )
    louder = run_file(tmp_path, detailed_links(loud), info, gene_resolver, score_threshold=0, channels=every)
    key = ["ensembl_id", "term_id"]
    assert (louder.frame.sort(key)["score"] > full.sort(key)["score"]).all()
    # the threshold applies to the recombined score: at 700 no CDC37 link is left by experiments + database
    with pytest.raises(PayloadError, match="channels experiments"):
        run_file(tmp_path, detailed_links(), info, gene_resolver, channels=None)


def test_full_file_combines_direct_and_transferred_evidence(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    header = "protein1 protein2 homology experiments experiments_transferred database database_transferred"
    partner = API_ROWS[2][0]  # HRAS; edited channel values
    rows = [f"{a} {b} 300 400 250 0 600 777\n" for a, b in ((CDC37, partner), (partner, CDC37))]
    result = run_file(
        tmp_path, f"{header} combined_score\n" + "".join(rows), INFO + API_INFO, gene_resolver, channels=None
    )
    row = result.frame.filter(pl.col("symbol").eq("HRAS")).row(0, named=True)
    # one channel: direct and transferred combine like two channels; homology plays no part in v12
    assert round(row["score"] * 1000) == string_formula([400, 250, 0, 600]) == 804
    assert row["evidence"] == (
        "experiments=400; experiments_transferred=250; database=0; database_transferred=600; combined_score=777"
    )


def test_channel_configuration_errors(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    # the plain links file cannot give channels: say what to download or how to accept the combined score
    with pytest.raises(AnnotationError, match=r"detailed links file.*channels: combined"):
        run_file(tmp_path, LINKS, INFO, gene_resolver, channels=None)
    with pytest.raises(AnnotationError, match="unknown channels"):
        run_file(tmp_path, detailed_links(), INFO + API_INFO, gene_resolver, channels=["experiments", "psi"])
    with pytest.raises(SchemaError, match="fusion"):
        header = "protein1 protein2 experimental combined_score\n"
        run_file(
            tmp_path, header + f"{CDC37} {API_ROWS[0][0]} 900 900\n", INFO, gene_resolver, channels=["fusion"]
        )
    aliases = run_file(
        tmp_path,
        detailed_links(),
        INFO + API_INFO,
        gene_resolver,
        score_threshold=0,
        channels=["experimental", "databases"],
    )
    assert aliases.source_version.endswith("score: channels experiments+database")


def test_live_detailed_file_scores_by_channels(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    """The default live set-up (sources.yaml: the detailed links file, channels experiments + database)."""
    configured = load_sources()["string"]
    assert "protein.links.detailed" in str(configured.bulk_url)
    assert configured.extra["channels"] == ["experiments", "database"]
    with FakeService() as service:
        service.route(
            "/d/9606.protein.links.detailed.v12.0.txt.gz", Answer.text(detailed_links(), gzipped=True)
        )
        service.route("/i/9606.protein.info.v12.0.txt.gz", Answer.text(INFO + API_INFO, gzipped=True))
        config = SourceConfig.from_mapping(
            "string",
            {
                "bulk_url": service.url + "/d/9606.protein.links.detailed.v12.0.txt.gz",
                "info_url": service.url + "/i/9606.protein.info.v12.0.txt.gz",
                "score_threshold": 500,
                "channels": configured.extra["channels"],
            },
        )
        result = refresh("string", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST)
    # experiments + database: HRAS 502, KRAS 521, NRAS 502 pass 500; MAP2K1/2 (161, 199) do not, although
    # their combined scores (456, 471) lie close to HRAS's (549)
    partners = result.frame.filter(pl.col("symbol") == "CDC37")["term_name"].sort().to_list()
    assert partners == ["HRAS", "KRAS", "NRAS"]
    assert result.source_version == "STRING v12.0; score: channels experiments+database"
