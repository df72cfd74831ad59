"""DisGeNET: gene–disease associations (GDA) from the REST v1 API (key required; no redistribution).

Live: `GET {api}gda/summary?gene_ncbi_id=<id,id,…>&page_number=N` with the raw key in `Authorization`
(no "Bearer") and `accept: application/json`. The GeneSet's NCBI Gene ids go in batches of
`extra.batch_size` (default 100; trial keys allow 10); every page of each batch is read, following the
envelope's `paging` (`totalElements`, `pageSize` 100, 0-based `currentPageNumber`). A 429 with
`x-rate-limit-retry-after-seconds` is waited out by the HTTP layer. An envelope whose `status` is not "OK"
is an error. DisGeNET is queried per gene, so an empty GeneSet is an error, not a bulk download.
Optional `extra.min_score` (sent as `min_score` and applied here too) and `extra.source` (CURATED, ALL, …).

File: a TSV/CSV export with the API's field names, or saved JSON answers (envelopes, a list of them, or a
bare payload list), one or several files.

Rows: `geneNcbiID` (entrez) → `UMLS:<diseaseUMLSCUI>` named `diseaseName`, score = the GDA score,
evidence = evidence index (ei), evidence level (el) and the number of PMIDs. There is no bundled snapshot
(licence) and test fixtures are synthetic. Version: the API has no version endpoint, so
"DisGeNET API v1 (retrieved <date of the answer's Date header>)"; for files, a date in the file name, else
the file's modification date.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SourceSkipped

DEFAULT_BATCH_SIZE = 100
MAX_PAGES = 5000  # 500,000 associations per batch: far above any real gene set, stops a looping server
REQUIRED = ("geneNcbiID", "diseaseUMLSCUI", "score")
_DATE_IN_NAME = re.compile(r"(\d{4}-?\d{2}-?\d{2})")


class DisgenetClient(AnnotationClient):
    name = "disgenet"
    title = "DisGeNET"
    term_kind = "disease"
    per_gene = True
    needs_key = True
    min_interval_s = 0.25  # be gentle: quotas are per key

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.api:
            raise AnnotationError("DisGeNET: sources.yaml gives no api base URL")
        ids = _entrez_ids(genes.entrez_ids)
        if not ids:
            raise SourceSkipped(
                "DisGeNET: it is queried per gene and the registered datasets gave no NCBI Gene ids; register a "
                "dataset first, or use mode 'file' with a downloaded association file"
            )
        batch_size = max(1, int(self.config.extra.get("batch_size", DEFAULT_BATCH_SIZE)))
        url = self.config.api.rstrip("/") + "/gda/summary"
        headers = {"Authorization": self.api_key or "", "accept": "application/json"}
        base: dict[str, Any] = {}
        if self.config.extra.get("min_score") is not None:
            base["min_score"] = self.config.extra["min_score"]
        if self.config.extra.get("source"):
            base["source"] = self.config.extra["source"]
        records: list[dict[str, Any]] = []
        answered: str | None = None
        for start in range(0, len(ids), batch_size):
            batch = ",".join(ids[start : start + batch_size])
            page = 0
            while True:
                response = self.http.get(
                    url, params={**base, "gene_ncbi_id": batch, "page_number": page}, headers=headers
                )
                answered = answered or response.headers.get("Date")
                envelope = self._envelope(response.content, self.http.redact(url))
                payload = envelope["payload"]
                records.extend(payload)
                paging = envelope.get("paging") or {}
                total = int(paging.get("totalElements") or 0)
                size = int(paging.get("pageSize") or 100)
                page += 1  # our own count: a server echoing a stale currentPageNumber cannot loop us
                if not payload or page * size >= total:
                    break
                if page >= MAX_PAGES:
                    raise PayloadError(f"DisGeNET: more than {MAX_PAGES} pages for one batch; stopped")
        frame = self._rows(records, "the API answers")
        return RawAnnotations(
            frame, "entrez", f"DisGeNET API v1 (retrieved {_day(answered)})", self.http.redact(url)
        )

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        records: list[dict[str, Any]] = []
        for path in map(Path, paths):
            content = path.read_bytes()
            if content.lstrip()[:1] in (b"{", b"["):
                records.extend(_json_records(content, path.name))
            else:
                records.extend(_table_records(content, path.name))
        first = Path(paths[0])
        found = _DATE_IN_NAME.search(first.name)
        day = (
            found.group(1) if found else datetime.fromtimestamp(first.stat().st_mtime, UTC).date().isoformat()
        )
        frame = self._rows(records, ", ".join(Path(p).name for p in paths))
        return RawAnnotations(frame, "entrez", f"DisGeNET API v1 export (file of {day})", str(first))

    def _envelope(self, content: bytes, where: str) -> dict[str, Any]:
        try:
            envelope = json.loads(content)
        except ValueError:
            raise PayloadError(
                f"DisGeNET: the answer from {where} is not JSON; the service may be failing: try again later"
            ) from None
        if not isinstance(envelope, dict):
            raise PayloadError(f"DisGeNET: the answer from {where} is not a response envelope")
        if envelope.get("status") != "OK":
            detail = envelope.get("error") or envelope.get("message") or envelope.get("payload") or ""
            raise PayloadError(
                f"DisGeNET: the service answered status {envelope.get('status')!r} "
                f"(httpStatus {envelope.get('httpStatus')}): {self._redact(str(detail)[:200])}; check the query "
                "and the key's plan (trial keys allow 10 genes per request: set batch_size: 10)"
            )
        if not isinstance(envelope.get("payload"), list):
            raise PayloadError(f"DisGeNET: the answer from {where} has no payload list")
        return envelope

    def _redact(self, text: str) -> str:
        return self.http.redact(text) if self.http else text

    def _rows(self, records: list[dict[str, Any]], where: str) -> pl.DataFrame:
        if records:  # no records at all is not drift: finalise refuses the empty table with its own error
            fields = sorted({k for r in records for k in r})
            require_columns(
                pl.DataFrame(schema=dict.fromkeys(fields, pl.String)), REQUIRED, "DisGeNET", where
            )
        min_score = self.config.extra.get("min_score")
        out: dict[str, list[Any]] = {k: [] for k in ("gene_id", "term_id", "term_name", "score", "evidence")}
        for record in records:
            gene, cui = _gene(record.get("geneNcbiID")), _cui(record.get("diseaseUMLSCUI"))
            score = _float(record.get("score"))
            if gene is None or cui is None:
                continue
            if min_score is not None and (score is None or score < float(min_score)):
                continue
            out["gene_id"].append(gene)
            out["term_id"].append(cui)
            out["term_name"].append(record.get("diseaseName") or None)
            out["score"].append(score)
            out["evidence"].append(_evidence(record))
        return pl.DataFrame(
            out,
            schema={
                "gene_id": pl.String,
                "term_id": pl.String,
                "term_name": pl.String,
                "score": pl.Float64,
                "evidence": pl.String,
            },
        ).with_columns(pl.lit("disease").alias("term_kind"))


def _entrez_ids(values: Iterable[object]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        gene = _gene(value)
        if gene:
            seen.setdefault(gene, None)
    return list(seen)


def _gene(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    text = text.removesuffix(".0")
    return text if text.isdigit() else None


def _cui(value: object) -> str | None:
    text = str(value).strip() if value else ""
    text = text.removeprefix("UMLS_").removeprefix("UMLS:")
    return f"UMLS:{text}" if re.fullmatch(r"C\d{7}", text) else None


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _evidence(record: dict[str, Any]) -> str:
    parts = [
        f"{name}={record[name]}" for name in ("ei", "el", "numPMIDs") if record.get(name) not in (None, "")
    ]
    return ", ".join(parts) or "DisGeNET GDA"


def _day(http_date: str | None) -> str:
    try:
        return parsedate_to_datetime(http_date).date().isoformat() if http_date else _today()
    except (TypeError, ValueError):
        return _today()


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _json_records(content: bytes, name: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(content)
    except ValueError:
        raise PayloadError(
            f"DisGeNET: {name} is not valid JSON (cut or damaged?); save the answers again"
        ) from None
    pages = (
        data
        if isinstance(data, list) and data and isinstance(data[0], dict) and "payload" in data[0]
        else [data]
    )
    records: list[dict[str, Any]] = []
    for page in pages:
        if isinstance(page, dict):
            if page.get("status", "OK") != "OK" or not isinstance(page.get("payload"), list):
                raise PayloadError(f"DisGeNET: {name} holds an answer with status {page.get('status')!r}")
            records.extend(page["payload"])
        elif isinstance(page, list):
            records.extend(r for r in page if isinstance(r, dict))
    return records


def _table_records(content: bytes, name: str) -> list[dict[str, Any]]:
    lines = content.splitlines()
    separator = "\t" if lines and b"\t" in lines[0] else ","
    if (
        len(lines) > 1
        and not content.endswith(b"\n")
        and lines[-1].count(separator.encode()) < lines[0].count(separator.encode())
    ):
        raise PayloadError(f"DisGeNET: {name} ends in a cut row (truncated?); export it again")
    try:
        # TSV exports carry names with bare quotes; CSV exports quote names that hold commas
        frame = pl.read_csv(
            io.BytesIO(content),
            separator=separator,
            infer_schema=False,
            null_values=[""],
            quote_char='"' if separator == "," else None,
        )
    except pl.exceptions.PolarsError as error:
        raise PayloadError(
            f"DisGeNET: {name} is not a readable TSV/CSV export ({str(error)[:200]}); export it again"
        ) from None
    require_columns(frame, REQUIRED, "DisGeNET", name)
    return frame.to_dicts()
