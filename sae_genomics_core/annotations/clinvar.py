"""ClinVar: gene → condition links from `gene_condition_source_id` (NCBI FTP, tab-delimited; public domain).

Live: conditional GET of `gene_condition_source_id` (config `bulk_url`; NCBI regenerates it weekly, so an
unchanged copy is not downloaded again). File: the same file (plain or .gz). Columns are read by header
name (`#GeneID, AssociatedGenes, RelatedGenes, ConceptID, DiseaseName, SourceName, SourceID, DiseaseMIM,
LastUpdated`).

Rows: GeneID (NCBI Gene, entrez) → the condition's MedGen concept (`MedGen:C…`), name DiseaseName.
A gene listed under AssociatedGenes has a direct gene–condition assertion (score 1.0); one listed only under
RelatedGenes is linked through a broader condition or a multi-gene region (score 0.5, evidence says
"related"). Rows without a ConceptID (no MedGen concept to join on) are dropped. evidence = SourceName
SourceID (+ MIM). Version: the newest LastUpdated in the file (dates come as "Feb 16 2016" and
"16 Feb 2016"), plus the download's Last-Modified in live mode.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import PayloadError
from sae_genomics_core.annotations.files import read_file_bytes

REQUIRED = ("GeneID", "AssociatedGenes", "ConceptID", "DiseaseName")
SCORE_ASSOCIATED = 1.0
SCORE_RELATED = 0.5
DATE_FORMATS = ("%b %d %Y", "%d %b %Y")  # both occur in the same file


class ClinvarClient(AnnotationClient):
    name = "clinvar"
    title = "ClinVar"
    term_kind = "disease"
    snapshot_files = ("gene_condition_source_id",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.bulk_url:
            raise PayloadError(
                "ClinVar: external/sources.yaml gives no bulk_url for gene_condition_source_id"
            )
        download = self.http.download(self.config.bulk_url, "gene_condition_source_id")
        frame, newest = self._parse(read_file_bytes(download.path, "ClinVar"), download.path.name)
        served = download.last_modified or download.etag or f"sha256:{download.sha256[:12]}"
        version = (
            f"ClinVar gene_condition_source_id (LastUpdated ≤ {newest}; {served})"
            if newest
            else (f"ClinVar gene_condition_source_id ({served})")
        )
        return RawAnnotations(frame, "entrez", version, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        path = Path(paths[0])
        content = read_file_bytes(path, "ClinVar")
        frame, newest = self._parse(content, path.name)
        version = (
            f"ClinVar gene_condition_source_id (LastUpdated ≤ {newest})"
            if newest
            else f"ClinVar gene_condition_source_id (undated, sha256:{hashlib.sha256(content).hexdigest()[:12]})"
        )
        return RawAnnotations(frame, "entrez", version, str(path))

    def _parse(self, content: bytes, origin: str) -> tuple[pl.DataFrame, str | None]:
        text = content.decode("utf-8", errors="replace")
        if not text.startswith("#GeneID") and "\tConceptID\t" not in text.partition("\n")[0]:
            raise PayloadError(
                f"ClinVar: {origin} does not start with the gene_condition_source_id header "
                f"({text[:60]!r}); is it the right file?"
            )
        header, _, body = text.partition("\n")
        n_columns = len(header.split("\t"))
        lines = body.rstrip("\n").split("\n")
        if not body.strip():
            raise PayloadError(f"ClinVar: {origin} has a header but no rows; download it again")
        if len(lines[-1].split("\t")) < n_columns:
            raise PayloadError(
                f"ClinVar: {origin} ends in a cut row (truncated download?); download it again"
            )
        try:
            frame = pl.read_csv(
                io.StringIO(text.removeprefix("#")),
                separator="\t",
                quote_char=None,  # disease names hold bare quotes
                infer_schema=False,
                null_values=[""],
            )
        except pl.exceptions.PolarsError as error:
            raise PayloadError(f"ClinVar: {origin} is not a readable tab-delimited file ({error})") from error
        frame = frame.rename({c: c.strip() for c in frame.columns})
        require_columns(frame, REQUIRED, "ClinVar", origin)
        related = pl.col("RelatedGenes") if "RelatedGenes" in frame.columns else pl.lit(None, pl.String)
        associated = pl.col("AssociatedGenes").is_not_null()
        kept = frame.filter(pl.col("ConceptID").is_not_null() & (associated | related.is_not_null()))
        source = pl.col("SourceName") if "SourceName" in frame.columns else pl.lit(None, pl.String)
        source_id = pl.col("SourceID") if "SourceID" in frame.columns else pl.lit(None, pl.String)
        mim = pl.col("DiseaseMIM") if "DiseaseMIM" in frame.columns else pl.lit(None, pl.String)
        evidence = pl.concat_str(
            [
                pl.when(associated).then(pl.lit("")).otherwise(pl.lit("related; ")),
                source.fill_null("ClinVar"),
                pl.when(source_id.is_not_null()).then(pl.lit(" ") + source_id).otherwise(pl.lit("")),
                pl.when(mim.is_not_null()).then(pl.lit("; MIM:") + mim).otherwise(pl.lit("")),
            ]
        )
        out = kept.select(
            pl.col("GeneID").str.strip_chars().alias("gene_id"),
            (pl.lit("MedGen:") + pl.col("ConceptID").str.strip_chars()).alias("term_id"),
            pl.col("DiseaseName").alias("term_name"),
            pl.when(associated).then(SCORE_ASSOCIATED).otherwise(SCORE_RELATED).alias("score"),
            evidence.alias("evidence"),
        )
        if out.height == 0:
            raise PayloadError(f"ClinVar: {origin} gave no gene–condition rows with a MedGen concept")
        return out, _newest_date(frame)


def _newest_date(frame: pl.DataFrame) -> str | None:
    if "LastUpdated" not in frame.columns:
        return None
    cleaned = pl.col("LastUpdated").str.strip_chars().str.replace_all(r"\s+", " ")
    dates = frame.select(
        pl.coalesce([cleaned.str.to_date(fmt, strict=False) for fmt in DATE_FORMATS]).alias("d")
    )["d"]
    newest = dates.drop_nulls().max()
    return newest.isoformat() if newest is not None else None  # type: ignore[union-attr]
