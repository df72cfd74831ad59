"""Orphanet: rare disease ↔ gene associations from Orphadata `en_product6.xml` (bulk XML; CC BY 4.0).

Live: conditional GET of `en_product6.xml` (config `bulk_url`; Orphadata releases twice a year, so the
monthly check usually gets a 304). File: the same XML (plain or .gz). The ISO-8859-1 XML is streamed with
`xml.etree.ElementTree.iterparse`, each `<Disorder>` cleared once read (the file is ~23 MB).

Filters: only associations with status "Assessed" and a causal or susceptibility type are kept:
germline disease-causing mutations (incl. loss/gain of function), somatic disease-causing mutations,
"Major susceptibility factor in", "Role in the phenotype of". "Candidate gene tested in", "Biomarker tested
in", "Modifying germline mutation in", "Part of a fusion gene in" and unassessed links are dropped.

Rows: gene → `ORPHA:<OrphaCode>`, the disorder's name, term_kind "disease"; the gene is given by its HGNC
xref (kind hgnc), else its Ensembl xref (kind ensembl), else its symbol (kind symbol), per row.
score by association type (causal 1.0, somatic 0.8, major susceptibility 0.6, role in phenotype 0.5);
evidence = association type + the PMIDs of SourceOfValidation. Version: the `<JDBOR date=… version=…>`
attributes of the file.
"""

from __future__ import annotations

import hashlib
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.files import is_gzip, read_file_bytes

# association type (DisorderGeneAssociationType/Name) → score; anything else is dropped
KEPT_TYPES = {
    "Disease-causing germline mutation(s) in": 1.0,
    "Disease-causing germline mutation(s) (loss of function) in": 1.0,
    "Disease-causing germline mutation(s) (gain of function) in": 1.0,
    "Disease-causing somatic mutation(s) in": 0.8,
    "Major susceptibility factor in": 0.6,
    "Role in the phenotype of": 0.5,
}
KEPT_STATUS = "Assessed"
_PMID = re.compile(r"(\d+)\[PMID\]")
PMIDS_SHOWN = 3


class OrphanetClient(AnnotationClient):
    name = "orphanet"
    title = "Orphanet"
    term_kind = "disease"
    snapshot_files = ("en_product6.2021-02.excerpt.xml",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.bulk_url:
            raise PayloadError("Orphanet: external/sources.yaml gives no bulk_url for en_product6.xml")
        download = self.http.download(self.config.bulk_url, "en_product6.xml")
        frame, release = self._parse(download.path)
        served = download.last_modified or download.etag or f"sha256:{download.sha256[:12]}"
        version = f"{release} ({served})"
        return RawAnnotations(frame, "hgnc", version, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        path = Path(paths[0])
        frame, release = self._parse(path)
        if release.endswith("(undated)"):  # no <JDBOR date=…>: the content itself names the version
            release = f"Orphadata en_product6 (undated file, sha256:{_sha256(path)[:12]})"
        return RawAnnotations(frame, "hgnc", release, str(path))

    def _parse(self, path: Path) -> tuple[pl.DataFrame, str]:
        rows: list[dict[str, object]] = []
        release: str | None = None
        n_disorders = 0
        # gzipped: read whole, so a damaged download is one clear error before parsing starts
        with io.BytesIO(read_file_bytes(path, "Orphanet")) if is_gzip(path) else open(path, "rb") as handle:
            try:
                for event, element in ET.iterparse(handle, events=("start", "end")):
                    if event == "start":
                        if release is None and n_disorders == 0 and element.tag != "JDBOR":
                            raise PayloadError(
                                f"Orphanet: {path.name} is XML but not an Orphadata JDBOR file "
                                f"(<{element.tag}>); is it en_product6.xml?"
                            )
                        if element.tag == "JDBOR":
                            release = _release(element) or "Orphadata en_product6 (undated)"
                    elif element.tag == "Disorder":
                        n_disorders += 1
                        rows.extend(_disorder_rows(element, path.name))
                        element.clear()  # streaming: keep memory flat over ~4,000 disorders
            except ET.ParseError as error:
                raise PayloadError(
                    f"Orphanet: {path.name} is not well-formed XML ({error}); the download was probably cut "
                    "short: download it again"
                ) from error
        if n_disorders == 0:
            raise PayloadError(f"Orphanet: {path.name} holds no <Disorder> elements; is it en_product6.xml?")
        if not rows:
            raise PayloadError(
                f"Orphanet: none of the {n_disorders} disorders in {path.name} has an assessed causal gene"
            )
        assert release is not None  # the root was JDBOR, else we raised above
        return pl.DataFrame(rows, schema=_ROW_SCHEMA), release


_ROW_SCHEMA = {
    "gene_id": pl.String,
    "gene_id_kind": pl.String,
    "term_id": pl.String,
    "term_name": pl.String,
    "score": pl.Float64,
    "evidence": pl.String,
}


def _release(root: ET.Element) -> str | None:
    date, version = root.get("date"), root.get("version")
    if not date:
        return None
    return f"Orphadata en_product6 {date}" + (f" (version {version})" if version else "")


def _text(element: ET.Element | None, path: str) -> str | None:
    found = element.find(path) if element is not None else None
    value = found.text.strip() if found is not None and found.text else None
    return value or None


def _disorder_rows(disorder: ET.Element, origin: str) -> list[dict[str, object]]:
    # OrphaCode since 2020; older files numbered disorders with OrphaNumber
    code = _text(disorder, "OrphaCode") or _text(disorder, "OrphaNumber")
    if code is None:
        raise SchemaError(
            f"Orphanet: a <Disorder id={disorder.get('id')!r}> in {origin} has no <OrphaCode>; the format "
            "changed: update the client or use an older file"
        )
    name = _text(disorder, "Name")
    rows = []
    for association in disorder.iterfind("DisorderGeneAssociationList/DisorderGeneAssociation"):
        kind = _text(association, "DisorderGeneAssociationType/Name")
        status = _text(association, "DisorderGeneAssociationStatus/Name")
        gene = association.find("Gene")
        if kind is None or status is None or gene is None:
            missing = [
                tag
                for tag, value in (
                    ("DisorderGeneAssociationType", kind),
                    ("DisorderGeneAssociationStatus", status),
                    ("Gene", gene),
                )
                if value is None
            ]
            raise SchemaError(
                f"Orphanet: an association of ORPHA:{code} in {origin} lacks {', '.join(missing)}; the format "
                "changed: update the client or use an older file"
            )
        if status != KEPT_STATUS or kind not in KEPT_TYPES:
            continue
        gene_id, gene_kind = _gene_id(gene)
        if gene_id is None:
            continue  # neither an xref nor a symbol: nothing to map
        rows.append(
            {
                "gene_id": gene_id,
                "gene_id_kind": gene_kind,
                "term_id": f"ORPHA:{code}",
                "term_name": name,
                "score": KEPT_TYPES[kind],
                "evidence": _evidence(kind, _text(association, "SourceOfValidation")),
            }
        )
    return rows


def _gene_id(gene: ET.Element) -> tuple[str | None, str]:
    xrefs: dict[str, str] = {}
    for xref in gene.iterfind("ExternalReferenceList/ExternalReference"):
        source, reference = _text(xref, "Source"), _text(xref, "Reference")
        if source and reference:
            xrefs.setdefault(source, reference)
    if "HGNC" in xrefs:
        return f"HGNC:{xrefs['HGNC'].removeprefix('HGNC:')}", "hgnc"
    if "Ensembl" in xrefs:
        return xrefs["Ensembl"], "ensembl"
    return _text(gene, "Symbol"), "symbol"


def _evidence(kind: str, validation: str | None) -> str:
    pmids = _PMID.findall(validation or "")
    if not pmids:
        return kind
    shown = ", ".join(f"PMID:{p}" for p in pmids[:PMIDS_SHOWN])
    more = f", +{len(pmids) - PMIDS_SHOWN}" if len(pmids) > PMIDS_SHOWN else ""
    return f"{kind} [{shown}{more}]"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
