"""GWAS Catalog: genome-wide significant gene–trait associations (EMBL-EBI terms of use).

The legacy REST API v1 answers 410 and is never used.

Live (default, `access: bulk`): a conditional GET of the ontology-annotated associations zip (`bulk_url`);
the TSV inside is streamed row by row (it is ~740 MB unpacked). Live `access: api` (config extra) asks
REST API v2 `/associations?mapped_gene=SYMBOL` for each of the dataset's symbols, page by page
(15 requests/s). File: the TSV (plain, .gz, or the zip) or saved v2 JSON pages.

Filters and mapping (columns by header name):
- only genome-wide significant hits, PVALUE_MLOG ≥ −log10(`max_pvalue`, default 5e-8); in v2 answers the
  p-value comes from pvalue_mantissa/exponent (`p_value` underflows to 0);
- genes: SNP_GENE_IDS (Ensembl) for SNPs inside genes. Intergenic SNPs (INTERGENIC = 1, or no gene ids but
  UPSTREAM/DOWNSTREAM_GENE_ID) give their nearest up- and downstream genes, as the Catalog's own
  MAPPED_GENE does, with "intergenic" in the evidence; `intergenic: drop` (config extra) leaves them out.
  Rows without any gene id (older releases) fall back to the MAPPED_GENE symbols;
- traits: every URI of MAPPED_TRAIT_URI (multi-trait rows are exploded), as the EFO short form
  (`EFO_0001360`, `MONDO_0005148`); score = −log10 p (the strongest hit per gene × trait wins).
Version: the release date from the Catalog's stats endpoint (`stats_url`), else the download's
Last-Modified, else the newest DATE ADDED TO CATALOG in the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError
from sae_genomics_core.annotations.files import read_json_file
from sae_genomics_core.annotations.http import HttpError

log = logging.getLogger(__name__)

DEFAULT_STATS_URL = "https://www.ebi.ac.uk/gwas/api/search/stats"
ZIP_NAME = "gwas-catalog-associations_ontology-annotated-full.zip"
REQUIRED = (
    "MAPPED_GENE",
    "SNP_GENE_IDS",
    "UPSTREAM_GENE_ID",
    "DOWNSTREAM_GENE_ID",
    "MAPPED_TRAIT_URI",
    "PVALUE_MLOG",
    "PUBMEDID",
)
_GENE_SPLIT = re.compile(r"\s*[,;]\s*| - ")
_URI_SPLIT = re.compile(r"\s*,\s*")

csv.field_size_limit(2**31 - 1)  # study titles and sample descriptions can be long


class GwasCatalogClient(AnnotationClient):
    name = "gwas_catalog"
    title = "GWAS Catalog"
    term_kind = "trait"
    snapshot_files = ("gwas-catalog-associations_ontology-annotated.tsv",)
    min_interval_s = 1 / 15  # the v2 API allows 15 requests per second

    @property
    def _min_mlog(self) -> float:
        return -math.log10(float(self.config.extra.get("max_pvalue", 5e-8)))

    @property
    def _keep_intergenic(self) -> bool:
        policy = str(self.config.extra.get("intergenic", "nearest"))
        if policy not in ("nearest", "drop"):
            raise AnnotationError(f"GWAS Catalog: intergenic must be 'nearest' or 'drop', not {policy!r}")
        return policy == "nearest"

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        access = self.config.extra.get("access", "bulk")
        if access == "api":
            return self._fetch_api(genes)
        if access != "bulk":
            raise AnnotationError(f"GWAS Catalog: access must be 'bulk' or 'api', not {access!r}")
        assert self.http is not None
        if not self.config.bulk_url:
            raise AnnotationError("GWAS Catalog: no `bulk_url` in sources.yaml for live mode")
        download = self.http.download(self.config.bulk_url, ZIP_NAME)
        frame, newest = self._read_zip(download.path)
        version = self._stats_version()
        if version is None and download.last_modified:
            version = f"GWAS Catalog download of {download.last_modified}"
        if version is None:
            version = f"GWAS Catalog associations added up to {newest}"
        return RawAnnotations(frame, "ensembl", version, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        parts, dates, versions = [], [], []
        for path in map(Path, paths):
            if path.suffix == ".json":
                parts.append(self._read_api_json(path))
                versions.append(f"GWAS Catalog API v2 answer {path.name} (release not recorded)")
            elif path.suffix == ".zip":
                frame, newest = self._read_zip(path)
                parts.append(frame)
                dates.append(newest)
            else:
                opener = gzip.open if path.suffix == ".gz" else open
                try:
                    with opener(path, "rt", encoding="utf-8", newline="") as handle:
                        frame, newest = self._parse_tsv(handle, path.name)
                except (OSError, EOFError, UnicodeDecodeError) as error:
                    raise PayloadError(
                        f"GWAS Catalog: {path.name} cannot be read ({type(error).__name__}: {error}); "
                        "download it again"
                    ) from error
                parts.append(frame)
                dates.append(newest)
        if dates:
            versions.insert(0, f"GWAS Catalog associations added up to {max(dates) or '(undated)'}")
        frame = pl.concat(parts, how="diagonal_relaxed")
        return RawAnnotations(frame, "ensembl", "; ".join(versions), ", ".join(str(p) for p in paths))

    # bulk TSV ---------------------------------------------------------------------------------------

    def _read_zip(self, path: Path) -> tuple[pl.DataFrame, str]:
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".tsv")]
                if not members:
                    raise PayloadError(
                        f"GWAS Catalog: {path.name} holds no .tsv ({', '.join(archive.namelist()[:5])}); "
                        "the download layout changed"
                    )
                with archive.open(members[0]) as raw:
                    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                    return self._parse_tsv(text, members[0])
        except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as error:
            raise PayloadError(
                f"GWAS Catalog: {path.name} is not a readable zip ({type(error).__name__}: {error}); the download "
                "is incomplete or corrupt: fetch it again"
            ) from error

    def _parse_tsv(self, handle: IO[str], where: str) -> tuple[pl.DataFrame, str]:
        # no quoting in this export: titles hold bare double quotes
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise PayloadError(f"GWAS Catalog: {where} is empty; download it again")
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [name for name in REQUIRED if name not in index]
        if missing:
            raise SchemaError(
                f"GWAS Catalog: {where} lacks the required column(s) {', '.join(missing)} (has: "
                f"{', '.join(header[:20])}); the source format changed: update the client or use an older file"
            )
        optional = (
            "MAPPED_TRAIT",
            "STRONGEST SNP-RISK ALLELE",
            "P-VALUE",
            "INTERGENIC",
            "DATE ADDED TO CATALOG",
        )
        names = list(REQUIRED) + [n for n in optional if n in index]
        picks = [index[n] for n in names]
        min_mlog, keep_intergenic = self._min_mlog, self._keep_intergenic
        rows: list[tuple[str, str, str, str | None, float, str]] = []
        newest = ""
        for line_no, fields in enumerate(reader, start=2):
            if len(fields) != len(header):
                if not any(fields):
                    continue
                raise PayloadError(
                    f"GWAS Catalog: line {line_no} of {where} has {len(fields)} fields, the header {len(header)}; "
                    "the file is truncated or malformed: download it again"
                )
            row = dict(zip(names, (fields[i] for i in picks), strict=True))
            newest = max(newest, row.get("DATE ADDED TO CATALOG", ""))
            try:
                mlog = float(row["PVALUE_MLOG"])
            except ValueError:
                continue
            if mlog < min_mlog:
                continue
            rows.extend(_tsv_rows(row, mlog, keep_intergenic))
        schema = ["gene_id", "gene_id_kind", "term_id", "term_name", "score", "evidence"]
        frame = pl.DataFrame(rows, schema=schema, orient="row").with_columns(
            pl.lit("trait").alias("term_kind")
        )
        return frame, newest

    def _stats_version(self) -> str | None:
        """The Catalog's release date and builds; a failure here must not fail the refresh."""
        assert self.http is not None
        url = self.config.extra.get("stats_url", DEFAULT_STATS_URL)
        try:
            stats = self.http.get_json(url)
        except HttpError as error:
            log.warning("GWAS Catalog: no release date from %s (%s)", self.http.redact(url), error)
            return None
        if not isinstance(stats, dict) or not stats.get("date"):
            return None
        builds = [f"{k} {stats[k]}" for k in ("efoversion", "ensemblbuild") if stats.get(k)]
        return f"GWAS Catalog release {stats['date']}" + (f" ({', '.join(builds)})" if builds else "")

    # REST API v2 ------------------------------------------------------------------------------------

    def _fetch_api(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.api:
            raise AnnotationError("GWAS Catalog: no `api` URL in sources.yaml for access 'api'")
        symbols = list(dict.fromkeys(s for s in genes.symbols if s))
        if not symbols:
            raise AnnotationError(
                "GWAS Catalog: access 'api' asks about the symbols of a registered dataset and got none; "
                "register a dataset first, or use the default bulk access"
            )
        size = int(self.config.extra.get("page_size", 200))
        url = self.config.api.rstrip("/") + "/associations"
        rows: list[dict[str, Any]] = []
        for symbol in symbols:
            for page in self._pages(url, symbol, size):
                rows.extend(self._api_rows(page, symbol, url))
        version = (
            self._stats_version() or "GWAS Catalog REST API v2 (release not reported by the stats endpoint)"
        )
        return RawAnnotations(_api_frame(rows), "symbol", version, self.http.redact(url))

    def _pages(self, url: str, symbol: str, size: int) -> Iterator[dict[str, Any]]:
        assert self.http is not None
        number = 0
        while True:
            answer = self.http.get_json(url, params={"mapped_gene": symbol, "page": number, "size": size})
            if not isinstance(answer, dict):
                raise PayloadError(
                    f"GWAS Catalog: the API answer for {symbol} page {number} is not an object"
                )
            yield answer
            page = answer.get("page") or {}
            if "totalPages" in page:
                more = number + 1 < int(page["totalPages"])
            else:
                more = "next" in (answer.get("_links") or {})
            if not more:
                return
            number += 1

    def _api_rows(self, answer: dict[str, Any], symbol: str | None, where: str) -> list[dict[str, Any]]:
        embedded = answer.get("_embedded")
        if embedded is None:  # an empty result has no _embedded block
            if "page" in answer:
                return []
            raise SchemaError(
                f"GWAS Catalog: {where} has neither _embedded nor page; not a v2 associations answer"
            )
        items = embedded.get("associations")
        if not isinstance(items, list):
            raise SchemaError(f"GWAS Catalog: {where} lacks _embedded.associations")
        rows = []
        for item in items:
            mlog = _api_mlog(item)
            if mlog is None or mlog < self._min_mlog:
                continue
            genes = (
                [symbol] if symbol else [g for m in item.get("mapped_genes") or [] for g in _split_genes(m)]
            )
            alleles = item.get("snp_effect_allele") or [
                f"{a.get('rs_id')}-{a.get('effect_allele')}" for a in item.get("snp_allele") or []
            ]
            evidence = _evidence(
                str(item.get("pubmed_id") or "?"),
                "; ".join(alleles),
                f"{item.get('pvalue_mantissa')}E{item.get('pvalue_exponent')}",
                "",
            )
            for trait in item.get("efo_traits") or []:
                if not trait.get("efo_id"):
                    continue
                for gene in genes:
                    rows.append(
                        {
                            "gene_id": gene,
                            "term_id": trait["efo_id"],
                            "term_name": trait.get("efo_trait"),
                            "score": mlog,
                            "evidence": evidence,
                        }
                    )
        return rows

    def _read_api_json(self, path: Path) -> pl.DataFrame:
        answer = read_json_file(path, "GWAS Catalog")
        pages = answer if isinstance(answer, list) else [answer]
        rows = [r for page in pages for r in self._api_rows(page, None, path.name)]
        return _api_frame(rows).with_columns(pl.lit("symbol").alias("gene_id_kind"))


def _tsv_rows(
    row: dict[str, str], mlog: float, keep_intergenic: bool
) -> Iterator[tuple[str, str, str, str | None, float, str]]:
    uris = [u for u in _URI_SPLIT.split(row["MAPPED_TRAIT_URI"].strip()) if u]
    if not uris:
        return
    in_gene = _split_genes(row["SNP_GENE_IDS"])
    nearby = _split_genes(row["UPSTREAM_GENE_ID"]) + _split_genes(row["DOWNSTREAM_GENE_ID"])
    intergenic = row.get("INTERGENIC", "").strip() in ("1", "1.0", "true", "True")
    if in_gene:
        genes, kind, where = in_gene, "ensembl", "in gene"
    elif nearby:
        genes, kind, where, intergenic = nearby, "ensembl", "intergenic, nearest gene", True
    else:  # older releases: no id columns filled, only the mapped symbols
        mapped = row["MAPPED_GENE"]
        genes, kind = _split_genes(mapped), "symbol"
        intergenic = intergenic or " - " in mapped
        where = "intergenic, nearest gene symbol" if intergenic else "mapped gene symbol"
    if intergenic and not keep_intergenic:
        return
    trait_names = _URI_SPLIT.split(row.get("MAPPED_TRAIT", "").strip())
    # names pair with URIs only when the counts agree (trait names themselves may hold commas)
    names: list[str | None] = trait_names if len(trait_names) == len(uris) else [None] * len(uris)
    if len(uris) == 1 and row.get("MAPPED_TRAIT"):
        names = [row["MAPPED_TRAIT"].strip()]
    alleles = row.get("STRONGEST SNP-RISK ALLELE", "")
    evidence = _evidence(row["PUBMEDID"], alleles, row.get("P-VALUE", "") or f"1E-{mlog:.1f}", where)
    for uri, name in zip(uris, names, strict=True):
        term = uri.rstrip("/").rsplit("/", 1)[-1]
        for gene in genes:
            yield gene, kind, term, name, mlog, evidence


def _split_genes(value: str) -> list[str]:
    return list(dict.fromkeys(g for g in _GENE_SPLIT.split(value.strip()) if g and g != "NR"))


def _evidence(pmid: str, alleles: str, pvalue: str, where: str) -> str:
    snps = [a.strip() for a in re.split(r"[;,]", alleles) if a.strip()]
    snp = snps[0] + (f" +{len(snps) - 1}" if len(snps) > 1 else "") if snps else "?"
    return f"PMID:{pmid} {snp} p={pvalue}" + (f" ({where})" if where else "")


def _api_mlog(item: dict[str, Any]) -> float | None:
    mantissa, exponent = item.get("pvalue_mantissa"), item.get("pvalue_exponent")
    if mantissa is not None and exponent is not None and float(mantissa) > 0:
        return -(math.log10(float(mantissa)) + float(exponent))
    p = item.get("p_value")
    return -math.log10(p) if p else None  # p == 0 without mantissa/exponent: unusable


def _api_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        "gene_id": pl.String,
        "term_id": pl.String,
        "term_name": pl.String,
        "score": pl.Float64,
        "evidence": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).with_columns(pl.lit("trait").alias("term_kind"))
