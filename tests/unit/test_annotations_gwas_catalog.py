"""GWAS Catalog: bulk zip (conditional GET, streamed TSV), v2 API pages, filters on real rows."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sae_genomics_core.annotations.base import Annotations, GeneSet, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.conftest import SNAPSHOTS
from tests.fakes.http_service import Answer, FakeService, Seen

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "gwas_catalog"
REAL_TSV = (SNAPSHOTS / "gwas_catalog" / "gwas-catalog-associations_ontology-annotated.tsv").read_text()
V2 = json.loads((FIXTURES / "rest_v2_associations_mapped_gene_TCF7L2_20260812.json").read_text())
STATS = {"date": "2026-09-01", "efoversion": "v3.81.0", "ensemblbuild": "114"}  # synthetic, see README
PAX5, TCF7L2 = "ENSG00000196092", "ENSG00000148737"


def real_rows() -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(REAL_TSV), delimiter="\t", quoting=csv.QUOTE_NONE)
    return list(reader.fieldnames or []), list(reader)


def tsv(rows: list[dict[str, str]], header: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, header, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def edited_tsv() -> str:
    """The 3 real rows plus two edited copies covering an in-gene id and a significant intergenic SNP."""
    header, rows = real_rows()
    in_gene = {
        **rows[1],
        "SNP_GENE_IDS": PAX5,
        "PVALUE_MLOG": "9.5",
        "P-VALUE": "3E-10",
    }  # rs1329573, PAX5 intron
    intergenic = {**rows[2], "PVALUE_MLOG": "8.2", "P-VALUE": "6E-9"}  # rs1491921 made significant
    return tsv([*rows, in_gene, intergenic], header)


def zipped(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("gwas-catalog-associations_ontology-annotated.tsv", text)
    return buffer.getvalue()


def run_file(
    tmp_path: Path, resolver: GeneResolver, text: str, name: str = "g.tsv", **extra: Any
) -> Annotations:
    path = tmp_path / name
    path.write_text(text)
    config = SourceConfig.from_mapping("gwas_catalog", {**extra})
    return refresh("gwas_catalog", config, resolver, mode="file", files=[path])


def test_snapshot_has_the_one_significant_mapped_row(gene_resolver: GeneResolver) -> None:
    result = refresh("gwas_catalog", load_sources()["gwas_catalog"], gene_resolver, mode="snapshot")
    assert result.frame.height == 1
    row = result.frame.row(0, named=True)
    assert (row["symbol"], row["term_id"], row["term_name"]) == ("PAX5", "EFO_0004337", "intelligence")
    assert row["score"] == pytest.approx(7.3979400086720375) and row["term_kind"] == "trait"
    assert row["evidence"] == "PMID:22449649 rs1329573-? +3 p=4E-8 (mapped gene symbol)"
    assert result.source_version == "GWAS Catalog associations added up to 2016-02-07"


def test_significance_intergenic_and_multi_trait_rows(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    frame = run_file(tmp_path, gene_resolver, edited_tsv()).frame
    keys = {(r["ensembl_id"], r["term_id"]): r for r in frame.iter_rows(named=True)}
    # the intergenic SNP's two nearest genes × its two traits (MAPPED_TRAIT_URI exploded, not last-wins)
    up, down = "ENSG00000248286", "ENSG00000249359"
    assert {(up, "EFO_0006995"), (up, "EFO_0000270"), (down, "EFO_0006995"), (down, "EFO_0000270")} <= set(
        keys
    )
    assert keys[(up, "EFO_0000270")]["term_name"] == "asthma"
    assert "intergenic" in keys[(up, "EFO_0000270")]["evidence"]
    # PAX5: the symbol-only row (p 4e-8) and the in-gene id row (p 3e-10) collapse, the strongest wins
    pax5 = keys[(PAX5, "EFO_0004337")]
    assert pax5["score"] == pytest.approx(9.5) and pax5["n_evidence"] == 2
    assert frame.height == 5
    dropped = run_file(tmp_path, gene_resolver, edited_tsv(), intergenic="drop").frame
    assert set(dropped["ensembl_id"]) == {PAX5}
    strict = run_file(tmp_path, gene_resolver, edited_tsv(), max_pvalue=1e-9).frame
    assert strict.height == 1 and strict["score"][0] == pytest.approx(9.5)


def test_schema_drift_and_truncation(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    header, rows = real_rows()
    extra = tsv([{**r, "NEW COLUMN": "x"} for r in rows], ["NEW COLUMN", *header])
    assert run_file(tmp_path, gene_resolver, extra).frame.height == 1
    missing = tsv(
        [{k: v for k, v in r.items() if k != "PVALUE_MLOG"} for r in rows],
        [h for h in header if h != "PVALUE_MLOG"],
    )
    with pytest.raises(SchemaError, match="PVALUE_MLOG"):
        run_file(tmp_path, gene_resolver, missing)
    with pytest.raises(PayloadError, match="truncated or malformed"):
        run_file(tmp_path, gene_resolver, REAL_TSV[: len(REAL_TSV) - 300])
    path = tmp_path / "cut.zip"
    path.write_bytes(zipped(REAL_TSV)[:200])
    with pytest.raises(PayloadError, match="not a readable zip"):
        refresh("gwas_catalog", load_sources()["gwas_catalog"], gene_resolver, mode="file", files=[path])


def test_live_bulk_conditional_get_and_release_date(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    body = zipped(edited_tsv())
    with FakeService() as service:
        service.route(
            "/latest/full.zip", Answer(body, headers={"ETag": '"z1"', "Last-Modified": "Mon, 01 Sep 2026"})
        )
        service.route("/stats", Answer.json(STATS))
        config = SourceConfig.from_mapping(
            "gwas_catalog",
            {
                "api": service.url + "/v2",
                "bulk_url": service.url + "/latest/full.zip",
                "stats_url": service.url + "/stats",
            },
        )
        options = {"backoff_s": 0.01}
        first = refresh(
            "gwas_catalog", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=options
        )
        second = refresh(
            "gwas_catalog", config, gene_resolver, mode="live", cache_dir=tmp_path, http_options=options
        )
        zip_requests = [r for r in service.requests if r.path == "/latest/full.zip"]
        assert zip_requests[1].headers["If-None-Match"] == '"z1"'
        assert service.count("/v2/associations") == 0  # bulk access never touches the API
    assert first.frame.height == 5 and second.frame.equals(
        first.frame.with_columns(second.frame["retrieved_at"])
    )
    assert first.source_version == "GWAS Catalog release 2026-09-01 (efoversion v3.81.0, ensemblbuild 114)"
    # stats down: the download's Last-Modified names the version instead of failing the refresh
    with FakeService() as service:
        service.route("/latest/full.zip", Answer(body, headers={"Last-Modified": "Mon, 01 Sep 2026"}))
        service.route("/stats", Answer.text("gone", status=404))
        config = SourceConfig.from_mapping(
            "gwas_catalog",
            {"bulk_url": service.url + "/latest/full.zip", "stats_url": service.url + "/stats"},
        )
        result = refresh("gwas_catalog", config, gene_resolver, mode="live", cache_dir=tmp_path / "b")
    assert result.source_version == "GWAS Catalog download of Mon, 01 Sep 2026"


def v2_pages(seen: Seen) -> Answer:
    """The real TCF7L2 answer served one association per page; other genes have no associations."""
    gene, number, size = seen.query["mapped_gene"][0], int(seen.query["page"][0]), int(seen.query["size"][0])
    assert size == 1
    if gene != "TCF7L2":
        return Answer.json({"page": {"size": 1, "totalElements": 0, "totalPages": 0, "number": 0}})
    items = V2["_embedded"]["associations"]
    page = {"size": 1, "totalElements": len(items), "totalPages": len(items), "number": number}
    return Answer.json({"_embedded": {"associations": items[number : number + 1]}, "page": page})


def test_live_api_follows_pages_and_uses_mantissa_exponent(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    with FakeService() as service:
        service.route_fn("/rest/api/v2/associations", v2_pages)
        service.route("/stats", Answer.json(STATS))
        config = SourceConfig.from_mapping(
            "gwas_catalog",
            {
                "api": service.url + "/rest/api/v2",
                "access": "api",
                "page_size": 1,
                "stats_url": service.url + "/stats",
            },
        )
        genes = GeneSet(["ENSG00000148737", "ENSG00000196092"], ["TCF7L2", "PAX5"], [])
        result = refresh(
            "gwas_catalog",
            config,
            gene_resolver,
            mode="live",
            genes=genes,
            cache_dir=tmp_path,
            http_options={"backoff_s": 0.01},
        )
        asked = [
            (r.query["mapped_gene"][0], r.query["page"][0])
            for r in service.requests
            if r.path.endswith("associations")
        ]
    assert asked == [("TCF7L2", "0"), ("TCF7L2", "1"), ("PAX5", "0")]
    row = result.frame.row(0, named=True)
    assert result.frame.height == 1 and (row["ensembl_id"], row["term_id"]) == (TCF7L2, "MONDO_0005148")
    # p_value is 0.0 in the answer; 3e-1315 from mantissa/exponent gives the true −log10 p
    assert row["score"] == pytest.approx(1315 - 0.47712125, abs=1e-6) and row["n_evidence"] == 2
    assert "PMID:38374256 rs7903146-T p=3E-1315" in row["evidence"]


def test_saved_v2_json_in_file_mode(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    result = run_file(tmp_path, gene_resolver, json.dumps(V2), name="tcf7l2.json")
    assert result.frame.select("symbol", "term_name").row(0) == ("TCF7L2", "type 2 diabetes mellitus")
    with pytest.raises(PayloadError, match="not readable JSON"):
        run_file(tmp_path, gene_resolver, json.dumps(V2)[:100], name="cut.json")
    with pytest.raises(SchemaError, match="_embedded"):
        run_file(tmp_path, gene_resolver, json.dumps({"results": []}), name="other.json")
