"""GenCC: gene–disease validity curations (bulk CSV export only; CC0).

Live: the new-format submissions export (31 columns), fetched with a conditional GET so an unchanged
export is not downloaded again. File: the same CSV (or the legacy 30-column export). Only the newest
`version_number` of each submission counts; Disputed, Refuted and "No Known Disease Relationship"
curations are dropped (they say the gene is *not* a cause). Genes are HGNC CURIEs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import PayloadError

REQUIRED = ("gene_curie", "disease_curie", "disease_title", "classification_curie", "classification_title")
# classification → score; the absent ones (Disputed 100005, Refuted 100006, No Known 100008) are excluded
CLASSIFICATION_SCORE = {
    "GENCC:100001": 1.0,  # Definitive
    "GENCC:100002": 0.8,  # Strong
    "GENCC:100003": 0.6,  # Moderate
    "GENCC:100009": 0.5,  # Supportive
    "GENCC:100004": 0.4,  # Limited
    "GENCC:100007": 0.3,  # Animal Model Only
}


class GenccClient(AnnotationClient):
    name = "gencc"
    title = "GenCC"
    term_kind = "disease"
    snapshot_files = ("gencc-submissions.csv",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None and self.config.bulk_url
        download = self.http.download(self.config.bulk_url, "gencc-submissions.csv")
        raw = self._parse(download.path.read_bytes(), download.path.name)
        version = raw.source_version
        if download.last_modified:
            version = f"{version} (export {download.last_modified})"
        return RawAnnotations(raw.frame, raw.gene_id_kind, version, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        return self._parse(Path(paths[0]).read_bytes(), str(paths[0]))

    def _parse(self, content: bytes, origin: str) -> RawAnnotations:
        content = content.removeprefix(b"\xef\xbb\xbf")  # the export starts with a UTF-8 BOM
        try:
            # a real CSV parser: submitter notes hold quoted commas and line breaks
            frame = pl.read_csv(io.BytesIO(content), infer_schema=False, quote_char='"')
        except pl.exceptions.PolarsError as error:
            raise PayloadError(
                f"GenCC: {Path(origin).name} is not a readable CSV export ({error})"
            ) from error
        require_columns(frame, REQUIRED, "GenCC", Path(origin).name)
        if "version_number" in frame.columns and "sgc_id" in frame.columns:
            frame = (
                frame.with_columns(pl.col("version_number").cast(pl.Int64, strict=False))
                .sort("version_number", descending=True, nulls_last=True)
                .unique("sgc_id", keep="first")
            )
        kept = frame.filter(pl.col("classification_curie").is_in(list(CLASSIFICATION_SCORE)))
        submitter = pl.col("submitter_title") if "submitter_title" in frame.columns else pl.lit(None)
        moi = pl.col("moi_title") if "moi_title" in frame.columns else pl.lit(None)
        out = kept.select(
            pl.col("gene_curie").alias("gene_id"),
            pl.col("disease_curie").alias("term_id"),
            pl.col("disease_title").alias("term_name"),
            pl.col("classification_curie")
            .replace_strict(CLASSIFICATION_SCORE, return_dtype=pl.Float64)
            .alias("score"),
            pl.concat_str(
                [
                    pl.col("classification_title"),
                    pl.lit(" ("),
                    submitter.fill_null("?"),
                    pl.lit("; "),
                    moi.fill_null("MOI not given"),
                    pl.lit(")"),
                ]
            ).alias("evidence"),
        )
        if "submitted_run_date" in frame.columns and frame["submitted_run_date"].drop_nulls().len():
            version = f"GenCC export of {frame['submitted_run_date'].drop_nulls().str.slice(0, 10).max()}"
        else:
            version = "GenCC export (undated)"
        return RawAnnotations(out, "hgnc", version, origin)
