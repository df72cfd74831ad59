"""GenCC: the real export rows, newest submission versions, excluded classifications, live conditional GET."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from sae_genomics_core.annotations.base import Annotations, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.conftest import SNAPSHOTS
from tests.fakes.http_service import Answer, FakeService

REAL = (SNAPSHOTS / "gencc" / "gencc-submissions.csv").read_text()


def edited(rows_to_add: list[dict[str, str]]) -> str:
    """The real export with extra rows in its own layout (quoted notes with commas and line breaks)."""
    reader = csv.DictReader(io.StringIO(REAL))
    rows = list(reader) + rows_to_add
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], quoting=csv.QUOTE_MINIMAL)
    writer.writeheader()
    writer.writerows(rows)
    return "\ufeff" + out.getvalue()  # the export carries a BOM


def variant(**changes: str) -> dict[str, str]:
    row = next(csv.DictReader(io.StringIO(REAL)))
    return {**row, **changes}


def run_file(tmp_path: Path, text: str, resolver: GeneResolver) -> Annotations:
    path = tmp_path / "gencc.csv"
    path.write_text(text, encoding="utf-8")
    return refresh("gencc", load_sources()["gencc"], resolver, mode="file", files=[path])


def test_snapshot_maps_odc1(gene_resolver: GeneResolver) -> None:
    result = refresh("gencc", load_sources()["gencc"], gene_resolver, mode="snapshot")
    row = result.frame.row(0, named=True)
    assert result.frame.height == 1 and row["ensembl_id"] == "ENSG00000115758" and row["symbol"] == "ODC1"
    assert row["n_evidence"] == 3 and "PanelApp Australia" in row["evidence"]
    assert result.source_version == "GenCC export of 2026-07-26"


def test_newest_version_wins_and_negative_curations_are_dropped(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    text = edited(
        [
            # a newer version of the first submission downgrades it to Refuted: the submission drops out
            variant(
                version_number="2",
                classification_curie="GENCC:100006",
                classification_title="Refuted Evidence",
            ),
            # TP53, Disputed: excluded; BRCA1 Definitive with a multi-line note: kept
            variant(sgc_id="SGC-1", gene_curie="HGNC:11998", classification_curie="GENCC:100005"),
            variant(
                sgc_id="SGC-2",
                gene_curie="HGNC:1100",
                disease_curie="MONDO:0011450",
                classification_curie="GENCC:100001",
                classification_title="Definitive",
                submitted_as_notes='line one,\nline two, with "quotes"',
            ),
        ]
    )
    frame = run_file(tmp_path, text, gene_resolver).frame
    rows = {(r["symbol"], r["term_id"]): r for r in frame.iter_rows(named=True)}
    assert set(rows) == {("ODC1", "MONDO:0033642"), ("BRCA1", "MONDO:0011450")}
    assert rows[("ODC1", "MONDO:0033642")]["n_evidence"] == 2  # SGC-113621 v2 (Refuted) replaced v1
    assert rows[("BRCA1", "MONDO:0011450")]["score"] == 1.0


def test_schema_drift(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    extra = REAL.replace("sgc_id,", "sgc_id,brand_new_column,", 1).replace("SGC-", "x,SGC-")
    assert run_file(tmp_path, extra, gene_resolver).frame.height == 1
    with pytest.raises(SchemaError, match="gene_curie"):
        run_file(tmp_path, REAL.replace("gene_curie", "gene_id_v2", 1), gene_resolver)
    with pytest.raises(PayloadError, match="no annotation rows"):
        run_file(tmp_path, REAL.splitlines()[0] + "\n", gene_resolver)


def test_live_download_uses_conditional_get(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route(
            "/export", Answer.text(REAL, headers={"ETag": '"e1"', "Last-Modified": "Tue, 24 Nov 2026"})
        )
        config = SourceConfig.from_mapping("gencc", {"bulk_url": service.url + "/export?format=new"})
        first = refresh("gencc", config, gene_resolver, mode="live", cache_dir=tmp_path)
        second = refresh("gencc", config, gene_resolver, mode="live", cache_dir=tmp_path)
        assert first.frame.equals(second.frame.with_columns(first.frame["retrieved_at"]))
        assert service.requests[1].headers["If-None-Match"] == '"e1"'
        assert "Tue, 24 Nov 2026" in first.source_version and first.origin.endswith("/export?format=new")
