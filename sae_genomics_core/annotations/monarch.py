"""Monarch Initiative KG: gene → disease and gene → phenotype edges (per-edge upstream licences).

Live: API v3 `GET {api}/association` with the dataset's genes as HGNC CURIEs (`subject=` repeated, batches
of `batch_size`, default 50) and the three gene categories below, paged by `offset` (`limit` ≤ 500) until
`total`. Monarch keys human genes by HGNC id, so the GeneSet must carry `hgnc_ids`.
File: the KGX association TSVs (plain or .gz, parsed by header; several files, e.g. the causal and the
non-causal gene–disease files, since Orphanet edges live only in the latter), or saved API JSON pages.

Kept: human-gene subjects (`HGNC:`), categories CausalGeneToDisease, CorrelatedGeneToDisease and
GeneToPhenotypicFeature; negated edges are dropped. term = object (MONDO disease / HP phenotype);
evidence keeps the edge's primary_knowledge_source (licences differ per source) and its publication count.
score is a ranking weight by category, not a probability: causal 1.0, phenotype 1.0, correlated 0.5.
Version: `metadata.yaml` of the KG release (`bulk_url` + metadata.yaml), else its Last-Modified date.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError, SourceSkipped
from sae_genomics_core.annotations.files import read_json_file
from sae_genomics_core.annotations.http import HttpError

log = logging.getLogger(__name__)

CAUSAL = "biolink:CausalGeneToDiseaseAssociation"
CORRELATED = "biolink:CorrelatedGeneToDiseaseAssociation"
PHENOTYPE = "biolink:GeneToPhenotypicFeatureAssociation"
CATEGORY_SCORE = {CAUSAL: 1.0, PHENOTYPE: 1.0, CORRELATED: 0.5}
REQUIRED = ("subject", "predicate", "object")
OPTIONAL = ("object_label", "negated", "primary_knowledge_source", "category", "publications")
MAX_LIMIT = 500
_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)")


class MonarchClient(AnnotationClient):
    name = "monarch"
    title = "Monarch Initiative"
    term_kind = "disease"
    per_gene = True
    min_interval_s = 0.2  # a shared academic API: at most 5 requests a second
    # the Monarch answers available offline hold no gene edges: the snapshot is HPO-annotation gene → disease
    # edges in Monarch's KGX layout (external/snapshots/monarch/PROVENANCE.md)
    snapshot_files = ("gene_disease.derived-from-hpo-annotations.tsv.gz",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.api:
            raise AnnotationError("Monarch: no `api` URL in sources.yaml for live mode")
        hgnc_ids = list(dict.fromkeys(h for h in getattr(genes, "hgnc_ids", []) if h))
        if not hgnc_ids:
            raise SourceSkipped(
                "Monarch: live mode asks API v3 about the dataset's genes as HGNC ids and got none; register a "
                "dataset (its genes need HGNC ids), or use mode 'file' with the KGX association TSVs"
            )
        extra = self.config.extra
        batch_size = int(extra.get("batch_size", 50))
        limit = min(int(extra.get("page_size", MAX_LIMIT)), MAX_LIMIT)
        url = self.config.api.rstrip("/") + "/association"
        items: list[dict[str, Any]] = []
        for start in range(0, len(hgnc_ids), batch_size):
            batch = hgnc_ids[start : start + batch_size]
            offset = 0
            while True:
                params: list[tuple[str, str | int]] = [("subject", h) for h in batch]
                params += [("category", c) for c in CATEGORY_SCORE]
                params += [("limit", limit), ("offset", offset)]
                answer = self.http.get_json(url, params=params)
                page = _items(answer, f"the answer for offset {offset}")
                items.extend(page)
                offset += len(page)
                if not page or offset >= int(answer.get("total") or 0):
                    break
        frame = _normalise(_items_frame(items), "the API answers")
        return RawAnnotations(frame, "hgnc", self._release(), self.http.redact(url))

    def _release(self) -> str:
        """The KG release from metadata.yaml; a failure here must not fail the refresh."""
        assert self.http is not None
        base = self.config.bulk_url or ""
        url = self.config.extra.get("metadata_url") or (base.rstrip("/") + "/metadata.yaml" if base else "")
        if not url:
            return "Monarch KG (release not known: no bulk_url for metadata.yaml)"
        try:
            response = self.http.get(url)
        except HttpError as error:
            log.warning("Monarch: no release from %s (%s)", self.http.redact(url), error)
            return "Monarch KG (release not reported: metadata.yaml unavailable)"
        version = _metadata_version(response.text)
        if version:
            return f"Monarch KG {version}"
        modified = response.headers.get("Last-Modified")
        return (
            f"Monarch KG (metadata.yaml of {modified})" if modified else "Monarch KG (release not reported)"
        )

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        parts, versions = [], []
        for path in map(Path, paths):
            if path.suffix == ".json":
                parts.append(_normalise(_items_frame(_read_json_items(path)), path.name))
                versions.append(f"Monarch API answer {path.name} (release not recorded)")
            else:
                parts.append(_normalise(_read_tsv(path), path.name))
                versions.append(_file_version(path))
        frame = pl.concat(parts, how="diagonal_relaxed")
        version = "; ".join(dict.fromkeys(versions))
        return RawAnnotations(frame, "hgnc", version, ", ".join(str(p) for p in paths))


def _items(answer: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
        raise SchemaError(f"Monarch: {where} has no `items` list; not an API v3 association answer")
    return answer["items"]


def _read_json_items(path: Path) -> list[dict[str, Any]]:
    answer = read_json_file(path, "Monarch")
    pages = answer if isinstance(answer, list) else [answer]
    return [item for page in pages for item in _items(page, path.name)]


def _items_frame(items: list[dict[str, Any]]) -> pl.DataFrame:
    def text(value: Any) -> str | None:
        if value is None:
            return None
        return "|".join(map(str, value)) if isinstance(value, list) else str(value)

    columns = (*REQUIRED, *OPTIONAL)
    rows = [{c: text(item.get(c)) for c in columns} for item in items]
    frame = pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String))
    if items:
        present = set().union(*(item.keys() for item in items))
        frame = frame.select([c for c in columns if c in present])
    return frame


def _read_tsv(path: Path) -> pl.DataFrame:
    try:
        # KGX TSV: no quoting; labels may hold bare quotes
        return pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False, null_values=[""])
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as error:
        raise PayloadError(
            f"Monarch: {path.name} is not a readable KGX association TSV ({type(error).__name__}: "
            f"{str(error)[:200]}); download it again"
        ) from error


def _normalise(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    require_columns(frame, REQUIRED, "Monarch", where)
    for name in OPTIONAL:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
    category = pl.col("category").fill_null("")
    # KGX may list several categories ("a|b"); take the gene category it names
    named = pl.coalesce(
        [pl.when(category.str.contains(c, literal=True)).then(pl.lit(c)) for c in CATEGORY_SCORE]
    )
    kept = frame.filter(
        pl.col("subject").str.starts_with("HGNC:")
        & ~pl.col("negated").fill_null("").str.to_lowercase().is_in(["true", "1"])
    ).with_columns(
        # without a category column, the object's prefix says disease or phenotype
        pl.when(pl.col("category").is_null())
        .then(
            pl.when(pl.col("object").str.starts_with("HP:")).then(pl.lit(PHENOTYPE)).otherwise(pl.lit(CAUSAL))
        )
        .otherwise(named)
        .alias("gene_category")
    )
    kept = kept.filter(pl.col("gene_category").is_not_null())
    publications = pl.col("publications").str.split("|").list.len().fill_null(0)
    return kept.select(
        pl.col("subject").alias("gene_id"),
        pl.col("object").alias("term_id"),
        pl.col("object_label").alias("term_name"),
        pl.when(pl.col("gene_category") == PHENOTYPE)
        .then(pl.lit("phenotype"))
        .otherwise(pl.lit("disease"))
        .alias("term_kind"),
        pl.col("gene_category").replace_strict(CATEGORY_SCORE, return_dtype=pl.Float64).alias("score"),
        pl.concat_str(
            [
                pl.col("primary_knowledge_source").fill_null("source?"),
                pl.lit(" "),
                pl.col("predicate").str.replace("^biolink:", ""),
                pl.lit(" ("),
                publications.cast(pl.String),
                pl.lit(" publications)"),
            ]
        ).alias("evidence"),
    )


def _metadata_version(text: str) -> str | None:
    try:
        metadata = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(metadata, dict):
        return None
    for key, value in metadata.items():
        if "version" in str(key).lower() and value:
            return str(value)
    for value in metadata.values():  # a bare release date (e.g. under `release:` or `date:`)
        found = None if isinstance(value, dict | list) else _DATE.search(str(value))
        if found:
            return found.group(1)
    return None


def _file_version(path: Path) -> str:
    # a KG release folder (and our snapshot) carries metadata.yaml beside its files
    for folder in (path.parent, path.parent.parent):
        metadata = folder / "metadata.yaml"
        if metadata.exists() and (version := _metadata_version(metadata.read_text())):
            return version
    found = _DATE.search(str(path.resolve()))
    if found:
        return f"Monarch KG {found.group(1)}"
    day = datetime.fromtimestamp(path.stat().st_mtime, UTC).date().isoformat()
    return f"Monarch KG files (release not in the path; {path.name} dated {day})"
