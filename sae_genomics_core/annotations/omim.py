"""OMIM: gene → phenotype (disorder) links from `genemap2.txt` (key required; JHU licence, no redistribution).

Live: the bulk `genemap2.txt` (config `bulk_url`, whose path holds `{key}`: the key from `OMIM_API_KEY` is
formatted in), fetched with a conditional GET. Chosen over the API's `geneMap` endpoint because one file
holds the whole gene map, whereas the API pages 100 entries per request (~170 requests with a daily quota);
the key only ever appears redacted (`…/downloads/***/genemap2.txt`) in errors, logs, origin and version.
There is no bundled snapshot (no redistribution); test fixtures are synthetic.

File: a `genemap2.txt` the user downloaded. Columns are read by the header line that starts with
`# Chromosome` (comment lines come before and after the data); the newer (`MIM Number`, `Gene Symbols`,
`Approved Gene Symbol`) and older (`Mim Number`, `Gene/Locus And Other Related Symbols`, `Approved Symbol`)
names are both understood.

Each `Phenotypes` cell is split on "; " into `name, phenotype MIM (mapping key), inheritance`. Kept: mapping
key (3) only by default (`extra.mapping_keys`, the molecular basis is known); `[…]` non-disease traits are
dropped; `{…}` susceptibility and `?` provisional links are kept and say so in the evidence. A phenotype
without its own MIM number is described in the gene's entry: its term is the gene's MIM number.
Gene id per row: Ensembl Gene ID if present, else Entrez Gene ID, else the approved symbol.
Version: the `# Generated: YYYY-MM-DD` comment (else the download's Last-Modified).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError

# header names across layouts → ours (matched case-insensitively)
COLUMN_ALIASES = {
    "mim number": "mim_number",
    "approved gene symbol": "approved_symbol",
    "approved symbol": "approved_symbol",
    "entrez gene id": "entrez_id",
    "ensembl gene id": "ensembl_id",
    "phenotypes": "phenotypes",
}
REQUIRED = ("mim_number", "phenotypes", "approved_symbol", "entrez_id", "ensembl_id")
MAPPING_KEYS = {
    "1": "the disorder was positioned by association",
    "2": "the disorder was mapped by linkage",
    "3": "molecular basis known",
    "4": "contiguous gene deletion or duplication syndrome",
}
# "Name, 123456 (3), Inheritance, Inheritance" — the MIM number and the inheritance are optional
_PHENOTYPE = re.compile(
    r"^(?P<name>.+?)(?:,\s*(?P<mim>\d{6}))?\s*\((?P<key>[1-4])\)(?:\s*,\s*(?P<inheritance>.*))?$"
)
_GENERATED = re.compile(r"^#\s*Generated:\s*(\d{4}-\d{2}-\d{2})", re.MULTILINE)


class OmimClient(AnnotationClient):
    name = "omim"
    title = "OMIM"
    term_kind = "disease"
    needs_key = True

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        key = self.api_key
        if not self.config.bulk_url or not key:
            raise AnnotationError(
                "OMIM: sources.yaml needs bulk_url (with {key}) and the key in OMIM_API_KEY"
            )
        url = self.config.bulk_url.replace("{key}", key)
        shown = self.http.redact(url)
        download = self.http.download(url, "genemap2.txt")
        content = download.path.read_bytes()
        frame, generated = self._parse(content, shown)
        if generated:
            version = f"OMIM genemap2 generated {generated}"
        else:
            served = download.last_modified or download.etag or f"sha256:{download.sha256[:12]}"
            version = f"OMIM genemap2 of {served}"
        return RawAnnotations(frame, "ensembl", version, shown)

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        path = Path(paths[0])
        frame, generated = self._parse(path.read_bytes(), path.name)
        version = f"OMIM genemap2 generated {generated}" if generated else "OMIM genemap2 (undated)"
        return RawAnnotations(frame, "ensembl", version, str(path))

    def _mapping_keys(self) -> set[str]:
        keys = self.config.extra.get("mapping_keys", [3])
        return {str(k) for k in (keys if isinstance(keys, list | tuple) else [keys])}

    def _parse(self, content: bytes, origin: str) -> tuple[pl.DataFrame, str | None]:
        text = content.decode("utf-8", "replace")
        lines = text.splitlines()
        header_at = next((i for i, line in enumerate(lines) if line.startswith("# Chromosome")), None)
        if header_at is None:
            # a wrong or expired key answers with an HTML page instead of the file
            start = self.http.redact(text[:80]) if self.http else text[:80]
            raise PayloadError(
                f"OMIM: {origin} is not a genemap2.txt (no '# Chromosome' header line; starts {start!r}); check "
                "that the key in OMIM_API_KEY has download access and download it again"
            )
        header = lines[header_at].removeprefix("#").strip().split("\t")
        data = [line for line in lines[header_at + 1 :] if line and not line.startswith("#")]
        # a last data row without its newline and short of fields was cut off in transfer
        if (
            data
            and data[-1] == lines[-1]
            and not text.endswith("\n")
            and lines[-1].count("\t") < len(header) - 1
        ):
            raise PayloadError(f"OMIM: {origin} ends in a cut row (truncated download?); download it again")
        try:
            frame = pl.read_csv(
                io.StringIO("\n".join(["\t".join(header), *data]) + "\n"),
                separator="\t",
                infer_schema=False,
                quote_char=None,
                null_values=[""],
            )
        except pl.exceptions.PolarsError as error:
            raise PayloadError(
                f"OMIM: {origin} has malformed rows ({str(error)[:200]}); download it again"
            ) from None
        frame = frame.rename(
            {c: COLUMN_ALIASES[c.lower()] for c in frame.columns if c.lower() in COLUMN_ALIASES}
        )
        require_columns(frame, REQUIRED, "OMIM", f"{origin} (genemap2 header)")
        generated = m.group(1) if (m := _GENERATED.search(text)) else None
        if frame.height == 0:
            raise PayloadError(f"OMIM: {origin} has a header but no gene rows; download it again")
        return self._phenotype_rows(frame), generated

    def _phenotype_rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        keys = self._mapping_keys()
        rows: dict[str, list[str | None]] = {
            k: [] for k in ("gene_id", "gene_id_kind", "term_id", "term_name")
        }
        rows["evidence"] = []
        for gene in frame.filter(pl.col("phenotypes").is_not_null()).iter_rows(named=True):
            gene_id, kind = _gene_id(gene)
            if gene_id is None:
                continue
            for entry in gene["phenotypes"].split("; "):
                parsed = _phenotype(entry.strip(), gene["mim_number"])
                if parsed is None or parsed["key"] not in keys or parsed["nondisease"]:
                    continue
                rows["gene_id"].append(gene_id)
                rows["gene_id_kind"].append(kind)
                rows["term_id"].append(f"OMIM:{parsed['mim']}")
                rows["term_name"].append(parsed["name"])
                rows["evidence"].append(parsed["evidence"])
        return pl.DataFrame(rows, schema=dict.fromkeys(rows, pl.String)).with_columns(
            pl.lit("disease").alias("term_kind")
        )


def _gene_id(gene: dict[str, str | None]) -> tuple[str | None, str]:
    for column, kind in (("ensembl_id", "ensembl"), ("entrez_id", "entrez"), ("approved_symbol", "symbol")):
        value = (gene.get(column) or "").strip()
        if value:
            # a few rows list two Ensembl ids; the first is the gene's own
            return value.split(",")[0].strip(), kind
    return None, "symbol"


def _phenotype(entry: str, gene_mim: str | None) -> dict[str, object] | None:
    match = _PHENOTYPE.match(entry)
    if not match:
        return None
    raw = match.group("name").strip()
    susceptibility = "{" in raw
    nondisease = raw.lstrip("?{").startswith("[")
    provisional = raw.lstrip("{[").startswith("?")
    name = raw.strip("{}[]? ").replace("{", "").replace("}", "")
    own_mim = match.group("mim")
    mim = own_mim or gene_mim
    if not mim:
        return None
    key = match.group("key")
    notes = [f"mapping key {key} ({MAPPING_KEYS[key]})"]
    if match.group("inheritance"):
        notes.append(match.group("inheritance").strip())
    if susceptibility:
        notes.append("susceptibility")
    if provisional:
        notes.append("provisional (?)")
    if not own_mim:
        notes.append("phenotype described in the gene entry")
    # " | " inside one evidence string: finalise joins several evidence strings with "; "
    return {"name": name, "mim": mim, "key": key, "nondisease": nondisease, "evidence": " | ".join(notes)}
