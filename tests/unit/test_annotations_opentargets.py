"""Open Targets: batched, paged GraphQL against a fake server serving real rows; parquet and JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from sae_genomics_core.annotations.base import GeneSet, SourceConfig, load_sources
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.opentargets import ASSOCIATIONS_QUERY
from sae_genomics_core.annotations.refresh import refresh
from tests.conftest import SNAPSHOTS
from tests.fakes.http_service import Answer, FakeService, Seen

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "opentargets"
SNAPSHOT = json.loads((SNAPSHOTS / "opentargets" / "graphql_associated_diseases.json").read_text())
REAL_ROWS: dict[str, list[dict[str, Any]]] = {
    t["id"]: t["associatedDiseases"]["rows"] for t in SNAPSHOT["data"]["targets"]
}
SYMBOLS = {t["id"]: t["approvedSymbol"] for t in SNAPSHOT["data"]["targets"]}
META = json.loads((FIXTURES / "meta_26.03.1.json").read_text())
UNKNOWN = "ENSG00000000000"


def graphql(seen: Seen) -> Answer:
    """A strict fake of the GraphQL endpoint: checks the query and variables, pages the real rows."""
    body = json.loads(seen.body)
    if "meta" in body["query"] and body.get("variables") is None:
        return Answer.json(META)
    variables = body.get("variables") or {}
    index, size = variables.get("index"), variables.get("size")
    if (
        "targets(ensemblIds: $ids)" not in body["query"]
        or "associatedDiseases(page: {index: $index, size: $size})" not in body["query"]
        or not isinstance(index, int)
        or not isinstance(size, int)
        or not 0 < size <= 3000
        or not variables.get("ids")
    ):  # what the real API would refuse: the client's test then fails on a GraphQL error
        return Answer.json({"errors": [{"message": f"fake: unexpected query or variables {variables}"}]})
    targets = []
    for target_id in variables["ids"]:
        rows = REAL_ROWS.get(target_id)
        if rows is None:
            targets.append(None)  # the API's answer for an id it does not know
            continue
        page = rows[index * size : (index + 1) * size]
        block = {"count": len(rows), "rows": page}
        targets.append({"id": target_id, "approvedSymbol": SYMBOLS[target_id], "associatedDiseases": block})
    return Answer.json({"data": {"targets": targets}})


def config(service: FakeService, **extra: Any) -> SourceConfig:
    return SourceConfig.from_mapping("opentargets", {"api": service.url + "/api/v4/graphql", **extra})


def genes(*ensembl: str) -> GeneSet:
    return GeneSet(list(ensembl), [], [])


def posts(service: FakeService) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in service.requests if r.method == "POST"]


def test_live_batches_pages_and_keeps_every_row(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    ids = [*REAL_ROWS, UNKNOWN]
    with FakeService() as service:
        service.route_fn("/api/v4/graphql", graphql, method="POST")
        result = refresh(
            "opentargets",
            config(service, batch_size=2, page_size=2),
            gene_resolver,
            mode="live",
            genes=genes(*ids),
            cache_dir=tmp_path,
            http_options={"backoff_s": 0.01},
        )
        sent = posts(service)
    # meta, then page 0 for 5 ids in batches of 2 (3 POSTs), pages 1 and 2 for the 4 known targets (2 + 2)
    assert len(sent) == 8
    pages = [(p["variables"]["index"], len(p["variables"]["ids"])) for p in sent[1:]]
    assert pages == [(0, 2), (0, 2), (0, 1), (1, 2), (1, 2), (2, 2), (2, 2)]
    assert UNKNOWN not in [i for p in sent[1:] if p["variables"]["index"] > 0 for i in p["variables"]["ids"]]
    frame = result.frame
    assert frame.height == 20 and frame["ensembl_id"].n_unique() == 4
    row = frame.filter(
        (pl.col("ensembl_id") == "ENSG00000012048") & (pl.col("term_id") == "MONDO_0007254")
    ).row(0, named=True)
    assert row["symbol"] == "BRCA1" and row["term_name"] == "breast cancer" and row["term_kind"] == "disease"
    assert row["score"] == pytest.approx(0.8390422150884005)
    assert result.source_version == "Open Targets Platform 26.03 (API 26.03.1)"
    assert "graphql" in result.origin


def test_min_score_stops_paging_once_scores_fall_below(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route_fn("/api/v4/graphql", graphql, method="POST")
        result = refresh(
            "opentargets",
            config(service, batch_size=10, page_size=2, min_score=0.8),
            gene_resolver,
            mode="live",
            genes=genes("ENSG00000012048", "ENSG00000157764"),
            cache_dir=tmp_path,
        )
        sent = posts(service)
    assert result.frame["score"].min() >= 0.8
    # BRCA1: .84 .83 | .82 .81 | .80 (<.8, dropped); BRAF: .88 .84 | .82 .76 → no third page for BRAF
    assert [p["variables"]["ids"] for p in sent[1:]] == [
        ["ENSG00000012048", "ENSG00000157764"],
        ["ENSG00000012048", "ENSG00000157764"],
        ["ENSG00000012048"],
    ]
    assert result.frame.height == 7


def test_graphql_errors_in_a_200_answer_are_reported(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    errors = json.loads((FIXTURES / "errors_cannot_query_field.json").read_text())
    with FakeService() as service:
        service.route("/api/v4/graphql", Answer.json(META), Answer.json(errors), method="POST")
        with pytest.raises(PayloadError, match="Cannot query field 'nonExistentField'"):
            refresh(
                "opentargets",
                config(service),
                gene_resolver,
                mode="live",
                genes=genes("ENSG00000012048"),
                cache_dir=tmp_path,
            )
        # a body that is not JSON at all is an HTTP-layer error, not a crash
        service.route("/api/v4/graphql", Answer.json(META), Answer.text("<html>bad gateway"), method="POST")
        with pytest.raises(AnnotationError, match="not valid JSON"):
            refresh(
                "opentargets",
                config(service),
                gene_resolver,
                mode="live",
                genes=genes("ENSG00000012048"),
                cache_dir=tmp_path,
            )


def test_live_needs_genes_and_only_unknown_genes_is_an_error(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    with FakeService() as service:
        service.route_fn("/api/v4/graphql", graphql, method="POST")
        with pytest.raises(AnnotationError, match="registered dataset"):
            refresh("opentargets", config(service), gene_resolver, mode="live", cache_dir=tmp_path)
        assert service.requests == []
        with pytest.raises(PayloadError, match="no annotation rows"):
            refresh(
                "opentargets",
                config(service),
                gene_resolver,
                mode="live",
                genes=genes(UNKNOWN),
                cache_dir=tmp_path,
            )


def test_snapshot_reads_the_real_rows(gene_resolver: GeneResolver) -> None:
    result = refresh("opentargets", load_sources()["opentargets"], gene_resolver, mode="snapshot")
    assert result.frame.height == 20
    assert set(result.frame["symbol"]) == {"BRAF", "BRCA1", "EGFR", "ERBB2"}
    assert "captured 2026-08-11" in result.source_version


def write_release(root: Path, extra_column: bool = False, drop: str | None = None) -> tuple[Path, Path]:
    """A parquet release laid out like the FTP (…/26.06/output/<dataset>/part-*.parquet) from real rows."""
    rows = [
        {"diseaseId": r["disease"]["id"], "targetId": t, "score": r["score"], "evidenceCount": 10 + i}
        for t, rs in REAL_ROWS.items()
        for i, r in enumerate(rs)
    ]
    frame = pl.DataFrame(rows)
    if extra_column:
        frame = frame.with_columns(pl.lit("direct").alias("associationKind"))
    if drop:
        frame = frame.drop(drop)
    associations = root / "26.06" / "output" / "association_overall_direct"
    associations.mkdir(parents=True)
    frame.head(12).write_parquet(associations / "part-00000.parquet")
    frame.slice(12).write_parquet(associations / "part-00001.parquet")
    names = {r["disease"]["id"]: r["disease"]["name"] for rs in REAL_ROWS.values() for r in rs}
    disease = root / "26.06" / "output" / "disease"
    disease.mkdir(parents=True)
    pl.DataFrame(
        {"id": list(names), "name": list(names.values()), "therapeuticAreas": [["x"]] * len(names)}
    ).write_parquet(disease / "part-00000.parquet")
    return associations, disease


def test_parquet_release_with_disease_names(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    associations, disease = write_release(tmp_path, extra_column=True)
    result = refresh(
        "opentargets",
        load_sources()["opentargets"],
        gene_resolver,
        mode="file",
        files=[associations, disease],
    )
    row = result.frame.filter(pl.col("term_id") == "Orphanet_145").row(0, named=True)
    assert row["symbol"] == "BRCA1" and row["term_name"] == "Hereditary breast and ovarian cancer syndrome"
    assert row["evidence"] == "evidenceCount=11" and result.frame.height == 20
    assert result.source_version == "Open Targets Platform 26.06 (parquet)"


def test_parquet_schema_drift_and_corruption(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    associations, _ = write_release(tmp_path / "a", drop="targetId")
    with pytest.raises(SchemaError, match="targetId"):
        refresh(
            "opentargets", load_sources()["opentargets"], gene_resolver, mode="file", files=[associations]
        )
    good, _ = write_release(tmp_path / "b")
    part = good / "part-00000.parquet"
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(PayloadError, match="incomplete or corrupt"):
        refresh("opentargets", load_sources()["opentargets"], gene_resolver, mode="file", files=[truncated])


def test_saved_graphql_answers(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    single = {"data": {"target": SNAPSHOT["data"]["targets"][1], "meta": META["data"]["meta"]}}
    path = tmp_path / "brca1.json"
    path.write_text(json.dumps(single))
    result = refresh("opentargets", load_sources()["opentargets"], gene_resolver, mode="file", files=[path])
    assert set(result.frame["symbol"]) == {"BRCA1"} and result.frame.height == 5
    assert result.source_version.startswith("Open Targets Platform 26.03")
    # a saved single-target answer without the target's id cannot be attributed to a gene
    raw = {"data": {"target": {"associatedDiseases": SNAPSHOT["data"]["targets"][1]["associatedDiseases"]}}}
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match="no `id`"):
        refresh("opentargets", load_sources()["opentargets"], gene_resolver, mode="file", files=[path])
    path.write_text(json.dumps(single)[:-40])
    with pytest.raises(PayloadError, match="not a readable GraphQL JSON"):
        refresh("opentargets", load_sources()["opentargets"], gene_resolver, mode="file", files=[path])


def test_query_text_is_what_the_fake_checks() -> None:
    # the fake's assertions guard the real query; keep them in step
    assert "targets(ensemblIds: $ids)" in ASSOCIATIONS_QUERY
    assert "associatedDiseases(page: {index: $index, size: $size})" in ASSOCIATIONS_QUERY


def test_request_spacing_defaults_per_service_and_sources_yaml_overrides_it() -> None:
    from sae_genomics_core.annotations.opentargets import OpenTargetsClient

    default = OpenTargetsClient.make(
        SourceConfig.from_mapping("opentargets", {"api": "http://127.0.0.1:9"}), None
    )
    assert default.http is not None and default.http.limiter.min_interval_s == pytest.approx(0.1)
    settings = {"api": "http://127.0.0.1:9", "min_interval_s": 0.5}
    configured = OpenTargetsClient.make(SourceConfig.from_mapping("opentargets", settings), None)
    assert configured.http is not None and configured.http.limiter.min_interval_s == pytest.approx(0.5)
