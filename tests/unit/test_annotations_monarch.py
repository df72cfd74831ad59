"""Monarch: API v3 batched and paged by offset, negated edges dropped, KGX TSVs and saved JSON pages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from sae_genomics_core.annotations.base import Annotations, GeneSet, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.monarch import CATEGORY_SCORE
from sae_genomics_core.annotations.refresh import refresh
from tests.fakes.http_service import Answer, FakeService, Seen

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "monarch"
ITEMS: list[dict[str, Any]] = json.loads((FIXTURES / "gene_associations.synthetic.json").read_text())["items"]
TSV = (FIXTURES / "causal_gene_to_disease_association.synthetic.tsv").read_text()
HTT, IL2RG, TNFRSF4 = "ENSG00000197386", "ENSG00000147168", "ENSG00000186827"


def association(seen: Seen) -> Answer:
    """A fake of /v3/api/association: repeated subject/category params, limit ≤ 500, offset paging."""
    subjects, categories = seen.query.get("subject", []), seen.query.get("category", [])
    limit, offset = int(seen.query["limit"][0]), int(seen.query["offset"][0])
    if sorted(categories) != sorted(CATEGORY_SCORE) or not 0 < limit <= 500:
        return Answer.json({"detail": "fake: unexpected parameters"}, status=422)
    matching = [i for i in ITEMS if i["subject"] in subjects and i["category"] in categories]
    page = matching[offset : offset + limit]
    return Answer.json({"limit": limit, "offset": offset, "total": len(matching), "items": page})


def config(service: FakeService, **extra: Any) -> SourceConfig:
    return SourceConfig.from_mapping(
        "monarch",
        {"api": service.url + "/v3/api", "bulk_url": service.url + "/monarch-kg/latest/", **extra},
    )


def live(
    service: FakeService, tmp_path: Path, resolver: GeneResolver, genes: GeneSet, **extra: Any
) -> Annotations:
    return refresh(
        "monarch",
        config(service, **extra),
        resolver,
        mode="live",
        genes=genes,
        cache_dir=tmp_path,
        http_options={"backoff_s": 0.01},
    )


GENES = GeneSet(
    [HTT, IL2RG, TNFRSF4], ["HTT", "IL2RG", "TNFRSF4"], [], ["HGNC:4851", "HGNC:6010", "HGNC:11918"]
)


def test_live_batches_pages_and_drops_negated(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route_fn("/v3/api/association", association)
        service.route(
            "/monarch-kg/latest/metadata.yaml", Answer.text("kg-version: 2026-09-02\nkg-source: x\n")
        )
        result = live(service, tmp_path, gene_resolver, GENES, batch_size=2, page_size=2)
        asked = [
            (tuple(r.query["subject"]), r.query["offset"][0])
            for r in service.requests
            if r.path == "/v3/api/association"
        ]
    # batch 1 has 5 edges (HTT ×4 incl. one negated, IL2RG ×1): offsets 0, 2, 4; batch 2 one page
    assert asked == [
        (("HGNC:4851", "HGNC:6010"), "0"),
        (("HGNC:4851", "HGNC:6010"), "2"),
        (("HGNC:4851", "HGNC:6010"), "4"),
        (("HGNC:11918",), "0"),
    ]
    frame = result.frame
    assert frame.height == 5 and "HP:0001250" not in frame["term_id"].to_list()  # the negated edge
    rows = {(r["symbol"], r["term_id"]): r for r in frame.iter_rows(named=True)}
    chorea = rows[("HTT", "HP:0002072")]
    assert chorea["term_kind"] == "phenotype" and chorea["term_name"] == "Chorea" and chorea["score"] == 1.0
    assert chorea["evidence"] == "infores:hpo-annotations has_phenotype (2 publications)"
    juvenile = rows[("HTT", "MONDO:0016621")]
    assert juvenile["term_kind"] == "disease" and juvenile["score"] == 0.5
    assert juvenile["evidence"].startswith("infores:orphanet")
    assert rows[("TNFRSF4", "MONDO:0005148")]["ensembl_id"] == TNFRSF4
    assert result.source_version == "Monarch KG 2026-09-02"


def test_live_needs_hgnc_ids_and_survives_missing_metadata(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    with FakeService() as service:
        service.route_fn("/v3/api/association", association)
        service.route("/monarch-kg/latest/metadata.yaml", Answer.text("not found", status=404))
        with pytest.raises(AnnotationError, match="HGNC ids"):
            live(service, tmp_path, gene_resolver, GeneSet([HTT], ["HTT"], []))
        assert service.requests == []
        result = live(service, tmp_path, gene_resolver, GENES)
    assert result.frame.height == 5 and "metadata.yaml unavailable" in result.source_version


def test_live_malformed_answer_is_a_clear_error(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route("/v3/api/association", Answer.json({"detail": "Not Found"}))
        with pytest.raises(SchemaError, match="no `items` list"):
            live(service, tmp_path, gene_resolver, GENES)


def test_kgx_tsv_files_plain_and_gzip(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    release = tmp_path / "monarch-kg" / "2026-09-02"
    release.mkdir(parents=True)
    plain = release / "causal_gene_to_disease_association.all.tsv"
    plain.write_text(TSV)
    json_page = release / "page.json"
    json_page.write_text(json.dumps({"items": ITEMS[:3]}))
    result = refresh(
        "monarch", load_sources()["monarch"], gene_resolver, mode="file", files=[plain, json_page]
    )
    rows = {(r["symbol"], r["term_id"]): r for r in result.frame.iter_rows(named=True)}
    # the mouse edge and the negated IL2RG edge are dropped; HTT–HD is in both files and collapses
    assert set(rows) == {
        ("HTT", "MONDO:0007739"),
        ("IL2RG", "MONDO:0010315"),
        ("HTT", "MONDO:0016621"),
        ("HTT", "HP:0002072"),
    }
    assert rows[("HTT", "MONDO:0007739")]["n_evidence"] == 1
    assert rows[("IL2RG", "MONDO:0010315")]["evidence"] == "infores:clingen causes (2 publications)"
    assert result.source_version.startswith("Monarch KG 2026-09-02")
    gz = tmp_path / "edges.tsv.gz"
    gz.write_bytes(gzip.compress(TSV.encode()))
    assert (
        refresh("monarch", load_sources()["monarch"], gene_resolver, mode="file", files=[gz]).frame.height
        == 2
    )


def test_schema_drift_and_broken_files(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    def run(name: str, content: bytes) -> Annotations:
        path = tmp_path / name
        path.write_bytes(content)
        return refresh("monarch", load_sources()["monarch"], gene_resolver, mode="file", files=[path])

    header, *rows = TSV.splitlines()
    extra = "\n".join([header + "\tbrand_new"] + [r + "\tx" for r in rows]) + "\n"
    assert run("extra.tsv", extra.encode()).frame.height == 2
    no_object = pl.read_csv(TSV.encode(), separator="\t", infer_schema=False).drop("object")
    with pytest.raises(SchemaError, match="object"):
        run("no_object.tsv", no_object.write_csv(separator="\t").encode())
    with pytest.raises(PayloadError, match="not a readable KGX"):
        run("cut.tsv.gz", gzip.compress(TSV.encode())[:60])
    with pytest.raises(PayloadError, match="not readable JSON"):
        run("cut.json", json.dumps({"items": ITEMS})[:300].encode())


def test_snapshot_reads_as_a_kg_release_folder(gene_resolver: GeneResolver) -> None:
    result = refresh("monarch", load_sources()["monarch"], gene_resolver, mode="snapshot")
    frame = result.frame
    assert frame.height > 500 and frame["ensembl_id"].n_unique() > 200
    assert result.resolution.n_unmapped == 0  # HGNC CURIEs of demo genes
    assert set(frame["term_id"].str.extract(r"^(\w+):")) <= {"OMIM", "ORPHA"}
    assert frame.filter(pl.col("score") == 1.0).height > 0 and frame.filter(pl.col("score") == 0.5).height > 0
    # the version comes from the folder's metadata.yaml, as for a real KG release folder
    assert "HPO-annotation" in result.source_version and "snapshot" in result.source_version
