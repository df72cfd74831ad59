"""Open Targets Platform: target–disease association scores (CC0).

Live: the GraphQL API (POST to `api`). One `meta` query names the release; then `targets(ensemblIds:)` with
`associatedDiseases(page:)` in batches of `batch_size` genes (default 25) and pages of `page_size` rows
(default 500, the API allows 3000 but complexity grows with batch × page). A target whose `count`
exceeds what it got is asked again for its next page, batched with the other unfinished targets. Only
the dataset's genes are asked (GraphQL is for entities; the whole release is the parquet download,
which mode 'file' reads). Unknown ids (null or absent targets) are skipped and counted in the log.

File: the `association_overall_direct` parquet dataset (a directory of parts or single files; columns
`diseaseId, targetId, score, evidenceCount`), optionally with the `disease` dataset (`id, name`) for
names; or saved GraphQL answers (`data.targets` or `data.target`, each target with its `id`).

Filter: rows with `score < min_score` (config extra, default 0: keep everything OT publishes) are
dropped; with a threshold, paging stops once a target's rows (sorted by score) fall below it.
Terms: the disease id as OT writes it (`MONDO_0007254`, `EFO_0000270`, `Orphanet_145`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError, SourceSkipped

log = logging.getLogger(__name__)

META_QUERY = "query Meta { meta { apiVersion { x y z } dataVersion { year month iteration } } }"
ASSOCIATIONS_QUERY = """query AssociatedDiseases($ids: [String!]!, $index: Int!, $size: Int!) {
  targets(ensemblIds: $ids) {
    id
    approvedSymbol
    associatedDiseases(page: {index: $index, size: $size}) {
      count
      rows { score disease { id name } datatypeScores { id score } }
    }
  }
}"""
ASSOCIATION_COLUMNS = ("diseaseId", "targetId", "score")
TOP_DATATYPES = 3  # datatypes named in the evidence string
_RELEASE = re.compile(r"(?<![\d.])(\d{2}\.\d{2})(?![\d.])")  # "25.03" in .../platform/25.03/output/...


class OpenTargetsClient(AnnotationClient):
    name = "opentargets"
    title = "Open Targets Platform"
    term_kind = "disease"
    per_gene = True
    min_interval_s = 0.1  # no published quota: at most 10 requests a second
    snapshot_files = ("graphql_associated_diseases.json",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.api:
            raise AnnotationError("Open Targets: no `api` URL in sources.yaml for live mode")
        ids = list(dict.fromkeys(g for g in genes.ensembl_ids if g))
        if not ids:
            raise SourceSkipped(
                "Open Targets: live mode asks the GraphQL API about the genes of a registered dataset and got "
                "none; register a dataset first, or use mode 'file' with a parquet release "
                "(association_overall_direct)"
            )
        extra = self.config.extra
        batch_size = int(extra.get("batch_size", 25))
        page_size = min(int(extra.get("page_size", 500)), 3000)
        min_score = float(extra.get("min_score", 0.0))
        version = self._release()

        rows: list[dict[str, Any]] = []
        pending = {i: 0 for i in ids}  # target id → next page index
        seen: set[str] = set()
        while pending:
            by_page: dict[int, list[str]] = {}
            for target, index in pending.items():
                by_page.setdefault(index, []).append(target)
            pending = {}
            for index, targets in sorted(by_page.items()):
                for start in range(0, len(targets), batch_size):
                    batch = targets[start : start + batch_size]
                    answer = self._post(ASSOCIATIONS_QUERY, {"ids": batch, "index": index, "size": page_size})
                    for target in _targets_of(answer, "the GraphQL answer"):
                        seen.add(target["id"])
                        got = _target_rows(target, min_score)
                        rows.extend(got)
                        block = target["associatedDiseases"]
                        fetched = (index + 1) * page_size
                        below = min_score > 0 and len(got) < len(block.get("rows") or [])
                        if (block.get("count") or 0) > fetched and block.get("rows") and not below:
                            pending[target["id"]] = index + 1
        skipped = len(set(ids) - seen)
        if skipped:
            log.info("Open Targets: %d of %d genes are not Open Targets targets (skipped)", skipped, len(ids))
        frame = _frame(rows)
        return RawAnnotations(frame, "ensembl", version, self.http.redact(self.config.api))

    def _post(self, query: str, variables: dict[str, Any] | None) -> dict[str, Any]:
        assert self.http is not None and self.config.api
        answer = self.http.post_json(self.config.api, {"query": query, "variables": variables})
        _raise_errors(answer, "the GraphQL API")
        return answer

    def _release(self) -> str:
        meta = (self._post(META_QUERY, None).get("data") or {}).get("meta") or {}
        version = _meta_version(meta)
        if version is None:
            raise PayloadError(
                "Open Targets: the `meta` answer names no release (apiVersion/dataVersion missing); the API "
                "changed: update the client"
            )
        return version

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        json_rows: list[dict[str, Any]] = []
        json_versions: list[str] = []
        association_files: list[Path] = []
        disease_files: list[Path] = []
        for path in paths:
            path = Path(path)
            if path.suffix == ".json":
                rows, version = self._read_json(path)
                json_rows.extend(rows)
                json_versions.append(version)
                continue
            files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
            if not files:
                raise PayloadError(f"Open Targets: {path} holds no .parquet files")
            columns = _parquet_columns(files[0])
            if "targetId" in columns or "diseaseId" in columns:
                association_files.extend(files)
            elif {"id", "name"} <= set(columns):
                disease_files.extend(files)
            else:
                raise SchemaError(
                    f"Open Targets: {files[0].name} lacks the required column(s) "
                    f"{', '.join(ASSOCIATION_COLUMNS)} (has: {', '.join(columns[:20])}); expected the "
                    "association_overall_direct dataset (or the disease dataset for names)"
                )
        parts, versions = [], list(json_versions)
        if json_rows:
            parts.append(_frame(json_rows))
        if association_files:
            parts.append(self._read_parquet(association_files, disease_files))
            versions.append(_parquet_version(association_files))
        elif disease_files:
            raise PayloadError(
                "Open Targets: only the disease dataset was given; add association_overall_direct"
            )
        frame = pl.concat(parts, how="diagonal_relaxed")
        origin = ", ".join(str(p) for p in paths)
        return RawAnnotations(frame, "ensembl", "; ".join(dict.fromkeys(versions)), origin)

    def _read_json(self, path: Path) -> tuple[list[dict[str, Any]], str]:
        try:
            answer = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise PayloadError(
                f"Open Targets: {path.name} is not a readable GraphQL JSON answer ({error}); save it again"
            ) from error
        if not isinstance(answer, dict):
            raise PayloadError(f"Open Targets: {path.name} is not a GraphQL answer object")
        _raise_errors(answer, path.name)
        min_score = float(self.config.extra.get("min_score", 0.0))
        rows = [r for t in _targets_of(answer, path.name) for r in _target_rows(t, min_score)]
        data = answer.get("data") or {}
        version = _meta_version(data.get("meta") or {})
        if version is None:
            captured = (answer.get("extensions") or {}).get("captured_at")
            version = (
                f"Open Targets GraphQL answer captured {captured} (release not recorded)"
                if captured
                else f"Open Targets GraphQL answer {path.name} (release not recorded)"
            )
        return rows, version

    def _read_parquet(self, association_files: list[Path], disease_files: list[Path]) -> pl.DataFrame:
        where = association_files[0].parent.name if len(association_files) > 1 else association_files[0].name
        try:
            scan = pl.scan_parquet(association_files)
            require_columns(
                pl.DataFrame(schema=scan.collect_schema()), ASSOCIATION_COLUMNS, "Open Targets", where
            )
            has_count = "evidenceCount" in scan.collect_schema().names()
            min_score = float(self.config.extra.get("min_score", 0.0))
            frame = (
                scan.filter(pl.col("score") >= min_score)
                .select(
                    pl.col("targetId").alias("gene_id"),
                    pl.col("diseaseId").alias("term_id"),
                    pl.col("score").cast(pl.Float64),
                    (
                        pl.lit("evidenceCount=") + pl.col("evidenceCount").cast(pl.String)
                        if has_count
                        else pl.lit(None, dtype=pl.String)
                    ).alias("evidence"),
                )
                .collect()
            )
            if disease_files:
                names = pl.scan_parquet(disease_files).select(
                    pl.col("id").alias("term_id"), pl.col("name").alias("term_name")
                )
                frame = frame.join(names.collect(), on="term_id", how="left")
        except SchemaError:
            raise
        except (pl.exceptions.PolarsError, OSError) as error:
            raise PayloadError(
                f"Open Targets: cannot read the parquet files in {where} ({type(error).__name__}: "
                f"{str(error)[:200]}); the download is incomplete or corrupt: fetch it again"
            ) from error
        return frame.with_columns(pl.lit("disease").alias("term_kind"))


def _raise_errors(answer: Any, where: str) -> None:
    if not isinstance(answer, dict):
        raise PayloadError(f"Open Targets: {where} is not a GraphQL answer object")
    errors = answer.get("errors")
    if errors:
        messages = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
        raise PayloadError(
            f"Open Targets: {where} reported GraphQL error(s): {messages[:500]}; the schema may have changed: "
            "update the client's query"
        )


def _targets_of(answer: dict[str, Any], where: str) -> list[dict[str, Any]]:
    data = answer.get("data")
    if not isinstance(data, dict) or not ({"targets", "target"} & set(data)):
        raise SchemaError(
            f"Open Targets: {where} has no data.targets (or data.target); not an association answer"
        )
    targets = data.get("targets") if "targets" in data else [data.get("target")]
    found = [t for t in (targets or []) if t is not None]  # null targets: unknown ids
    for target in found:
        if not target.get("id"):
            raise SchemaError(
                f"Open Targets: a target in {where} has no `id`; ask for `id` alongside associatedDiseases"
            )
        block = target.get("associatedDiseases")
        if not isinstance(block, dict) or not isinstance(block.get("rows"), list):
            raise SchemaError(f"Open Targets: target {target['id']} in {where} lacks associatedDiseases.rows")
    return found


def _target_rows(target: dict[str, Any], min_score: float) -> list[dict[str, Any]]:
    rows = []
    for row in target["associatedDiseases"]["rows"]:
        disease, score = row.get("disease") or {}, row.get("score")
        if not disease.get("id") or score is None:
            raise SchemaError(
                f"Open Targets: an association of {target['id']} lacks disease.id or score; the schema changed"
            )
        if score < min_score:
            continue
        datatypes = sorted(row.get("datatypeScores") or [], key=lambda d: -(d.get("score") or 0))
        evidence = ", ".join(f"{d['id']}={d['score']:.2f}" for d in datatypes[:TOP_DATATYPES] if d.get("id"))
        rows.append(
            {
                "gene_id": target["id"],
                "term_id": disease["id"],
                "term_name": disease.get("name"),
                "score": float(score),
                "evidence": evidence or None,
            }
        )
    return rows


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        "gene_id": pl.String,
        "term_id": pl.String,
        "term_name": pl.String,
        "score": pl.Float64,
        "evidence": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).with_columns(pl.lit("disease").alias("term_kind"))


def _meta_version(meta: dict[str, Any]) -> str | None:
    data, api = meta.get("dataVersion") or {}, meta.get("apiVersion") or {}
    release = f"{data['year']}.{data.get('month') or '?'}" if data.get("year") else None
    if release and data.get("iteration"):
        release += f".{data['iteration']}"
    api_version = f"{api['x']}.{api.get('y')}.{api.get('z')}" if api.get("x") else None
    if release and api_version:
        return f"Open Targets Platform {release} (API {api_version})"
    if release or api_version:
        return f"Open Targets Platform {release}" if release else f"Open Targets Platform API {api_version}"
    return None


def _parquet_columns(path: Path) -> list[str]:
    try:
        return list(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise PayloadError(
            f"Open Targets: {path.name} is not a readable parquet file ({type(error).__name__}); the download "
            "is incomplete or corrupt: fetch it again"
        ) from error


def _parquet_version(files: list[Path]) -> str:
    for part in reversed(files[0].resolve().parts):
        found = _RELEASE.search(part)
        if found:
            return f"Open Targets Platform {found.group(1)} (parquet)"
    newest = max(f.stat().st_mtime for f in files)
    day = datetime.fromtimestamp(newest, UTC).date().isoformat()
    return f"Open Targets Platform parquet (release not in the path; files dated {day})"
