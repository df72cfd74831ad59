"""HPO: gene → phenotype annotations from `genes_to_phenotype.txt` (bulk TSV; CC0 per Open Targets).

Live: conditional GET of `genes_to_phenotype.txt` (config `bulk_url`), so an unchanged release is not
downloaded again. The file carries no version: the release is read from the `#version:` (or older
`#date:`) header of the sibling `phenotype.hpoa`, fetched with a `Range` request for its first bytes only
(URL `extra.hpoa_url`, default: next to `bulk_url`); if that fails the download's Last-Modified/ETag name it.

File: `genes_to_phenotype.txt` (plain or .gz) in the current 6-column layout (`ncbi_gene_id, gene_symbol,
hpo_id, hpo_name, frequency, disease_id`, since 2023-04) or the older 9-column one (header line
`#Format: entrez-gene-id<tab>…<tab>disease-ID for link`); optionally a `phenotype.hpoa` as a second file
whose header gives the version (else a date in the file name, else the file's sha256).

Filters: rows whose frequency says the phenotype is absent (HP:0040285 "Excluded", `0/n`, `0%`) are dropped.
score = the phenotype's frequency in the disease (n/m, k%, or the midpoint of the HPO frequency class);
evidence = disease id (+ frequency, + the old layout's qualifier such as "susceptibility"). Mode-of-inheritance
terms (HP:0000006 …) are kept with term_kind "inheritance" so enrichment can leave them out. Genes are
NCBI Gene ids (entrez).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin

import polars as pl

from sae_genomics_core.annotations.base import AnnotationClient, GeneSet, RawAnnotations, require_columns
from sae_genomics_core.annotations.errors import PayloadError
from sae_genomics_core.annotations.files import open_stream, read_file_bytes
from sae_genomics_core.annotations.http import HttpError

log = logging.getLogger(__name__)

REQUIRED = ("ncbi_gene_id", "hpo_id", "hpo_name", "disease_id")
# pre-2023-04 header names → current ones (parsed by name: the layout changed once already)
OLD_NAMES = {
    "entrez-gene-id": "ncbi_gene_id",
    "entrez-gene-symbol": "gene_symbol",
    "HPO-Term-ID": "hpo_id",
    "HPO-Term-Name": "hpo_name",
    "Frequency-Raw": "frequency_raw",
    "Frequency-HPO": "frequency",
    "Additional Info from G-D source": "qualifier",
    "G-D source": "gd_source",
    "disease-ID for link": "disease_id",
}
# HPO frequency classes (HP:0040279 subtree) → label and a representative fraction (class midpoint)
FREQUENCY_CLASSES = {
    "HP:0040280": ("obligate", 1.0),
    "HP:0040281": ("very frequent", 0.9),
    "HP:0040282": ("frequent", 0.55),
    "HP:0040283": ("occasional", 0.17),
    "HP:0040284": ("very rare", 0.025),
    "HP:0040285": ("excluded", 0.0),
}
# mode-of-inheritance terms (HP:0000005 subtree) that genes_to_phenotype lists like phenotypes
INHERITANCE_TERMS = {
    "HP:0000005",
    "HP:0000006",
    "HP:0000007",
    "HP:0001417",
    "HP:0001419",
    "HP:0001423",
    "HP:0001425",
    "HP:0001426",
    "HP:0001427",
    "HP:0001428",
    "HP:0001442",
    "HP:0001444",
    "HP:0001450",
    "HP:0001452",
    "HP:0001466",
    "HP:0001470",
    "HP:0001475",
    "HP:0003743",
    "HP:0003744",
    "HP:0003745",
    "HP:0010982",
    "HP:0010984",
    "HP:0012274",
    "HP:0012275",
    "HP:0025352",
    "HP:0031362",
    "HP:0032113",
}
_VERSION_LINE = re.compile(rb"^#(?:version|date):\s*(\S+)", re.MULTILINE)
_DATE_IN_NAME = re.compile(r"(?<!\d)(20\d\d-\d\d(?:-\d\d)?)(?!\d)")
HPOA_PROBE_BYTES = 4096


class HpoClient(AnnotationClient):
    name = "hpo"
    title = "HPO"
    term_kind = "phenotype"
    snapshot_files = ("genes_to_phenotype.2023-01-27.txt.gz",)

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.bulk_url:
            raise PayloadError("HPO: external/sources.yaml gives no bulk_url for genes_to_phenotype.txt")
        download = self.http.download(self.config.bulk_url, "genes_to_phenotype.txt")
        frame = self._parse(read_file_bytes(download.path, "HPO"), download.path.name)
        served = download.last_modified or download.etag or f"sha256:{download.sha256[:12]}"
        release = self._live_release()
        version = f"HPO {release} (genes_to_phenotype.txt {served})" if release else f"HPO ({served})"
        return RawAnnotations(frame, "entrez", version, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        paths = [Path(p) for p in paths]
        hpoa = [p for p in paths if ".hpoa" in p.name]
        tables = [p for p in paths if p not in hpoa]
        if len(tables) != 1 or len(hpoa) > 1:
            raise PayloadError(
                "HPO: mode 'file' takes genes_to_phenotype.txt (plain or .gz) and optionally phenotype.hpoa "
                f"for its version; got {', '.join(p.name for p in paths)}"
            )
        content = read_file_bytes(tables[0], "HPO")
        frame = self._parse(content, tables[0].name)
        release = _hpoa_version(_read_head(hpoa[0], HPOA_PROBE_BYTES)) if hpoa else None
        if hpoa and not release:
            raise PayloadError(f"HPO: {hpoa[0].name} has no '#version:' header line; is it phenotype.hpoa?")
        hint = _DATE_IN_NAME.search(tables[0].name)
        if release:
            version = f"HPO {release}"
        elif hint:
            version = f"HPO {hint.group(1)} (from the file name)"
        else:
            version = f"HPO (undated file, sha256:{hashlib.sha256(content).hexdigest()[:12]})"
        return RawAnnotations(frame, "entrez", version, str(tables[0]))

    def _live_release(self) -> str | None:
        """The release named by phenotype.hpoa's header, read from its first few KB (a cheap check)."""
        assert self.http is not None and self.config.bulk_url
        url = self.config.extra.get("hpoa_url") or urljoin(self.config.bulk_url, "phenotype.hpoa")
        try:
            response = self.http.get(url, headers={"Range": f"bytes=0-{HPOA_PROBE_BYTES - 1}"}, stream=True)
            with response:
                head = next(response.iter_content(HPOA_PROBE_BYTES), b"")
        except (HttpError, OSError) as error:  # requests' errors are OSErrors; the version is a bonus
            log.warning("HPO: could not read the release from %s (%s)", self.http.redact(url), error)
            return None
        return _hpoa_version(head[:HPOA_PROBE_BYTES])

    def _parse(self, content: bytes, origin: str) -> pl.DataFrame:
        text = content.decode("utf-8", errors="replace")
        header, _, body = text.partition("\n")
        names = _header_names(header)
        if not body.strip():
            raise PayloadError(f"HPO: {origin} has a header but no rows; download it again")
        lines = body.rstrip("\n").split("\n")
        if len(lines[-1].split("\t")) < len(names):
            raise PayloadError(f"HPO: {origin} ends in a cut row (truncated download?); download it again")
        try:
            frame = pl.read_csv(
                io.StringIO(body),
                separator="\t",
                has_header=False,
                new_columns=names,
                quote_char=None,
                infer_schema=False,
                null_values=[""],
            )
        except pl.exceptions.PolarsError as error:
            raise PayloadError(f"HPO: {origin} is not a readable genes_to_phenotype TSV ({error})") from error
        require_columns(frame, REQUIRED, "HPO", origin)
        frequency = pl.col("frequency") if "frequency" in frame.columns else pl.lit(None, pl.String)
        if "frequency_raw" in frame.columns:  # old layout: the HPO class, else the raw n/m
            frequency = pl.coalesce(frequency, pl.col("frequency_raw"))
        frame = frame.with_columns(
            frequency.str.strip_chars().replace("-", None).alias("frequency"),
            (
                pl.col("qualifier").str.strip_chars().replace("-", None)
                if "qualifier" in frame.columns
                else pl.lit(None, pl.String)
            ).alias("qualifier"),
            pl.col("disease_id").str.strip_chars(),  # also drops the \r of CRLF copies
        ).with_columns(_frequency_fraction(pl.col("frequency")).alias("score"))
        kept = frame.filter(pl.col("score").is_null() | (pl.col("score") > 0))
        labels = {k: label for k, (label, _) in FREQUENCY_CLASSES.items()}
        shown = pl.col("frequency").replace(labels)
        evidence = pl.concat_str(
            [
                pl.col("disease_id"),
                pl.when(shown.is_not_null()).then(pl.lit(" freq ") + shown).otherwise(pl.lit("")),
                pl.when(pl.col("qualifier").is_not_null())
                .then(pl.lit(" (") + pl.col("qualifier") + pl.lit(")"))
                .otherwise(pl.lit("")),
            ]
        )
        out = kept.select(
            pl.col("ncbi_gene_id").str.strip_chars().alias("gene_id"),
            pl.col("hpo_id").str.strip_chars().alias("term_id"),
            pl.col("hpo_name").alias("term_name"),
            pl.when(pl.col("hpo_id").is_in(list(INHERITANCE_TERMS)))
            .then(pl.lit("inheritance"))
            .otherwise(pl.lit("phenotype"))
            .alias("term_kind"),
            pl.col("score"),
            evidence.alias("evidence"),
        )
        if out.height == 0:
            raise PayloadError(f"HPO: {origin} gave no gene–phenotype rows after filtering")
        return out


def _header_names(header: str) -> list[str]:
    header = header.rstrip("\r")
    if header.startswith("#Format:"):  # old layout: names joined by the literal text "<tab>"
        raw = header.removeprefix("#Format:").strip().split("<tab>")
    else:
        raw = header.lstrip("#").split("\t")
    names = [OLD_NAMES.get(name.strip(), name.strip()) for name in raw]
    if len(names) < 2:
        raise PayloadError(
            f"HPO: the first line is not a genes_to_phenotype header ({header[:80]!r}); is this the right file?"
        )
    return names


def _frequency_fraction(frequency: pl.Expr) -> pl.Expr:
    """n/m, k% or an HPO frequency class as a fraction; anything else (e.g. '-') is null."""
    classes = {k: value for k, (_, value) in FREQUENCY_CLASSES.items()}
    ratio = frequency.str.extract_groups(r"^(\d+)\s*/\s*(\d+)$")
    numerator = ratio.struct.field("1").cast(pl.Float64)
    denominator = ratio.struct.field("2").cast(pl.Float64)
    percent = frequency.str.extract(r"^(\d+(?:\.\d+)?)\s*%$", 1).cast(pl.Float64)
    return (
        pl.when(frequency.is_in(list(classes)))
        .then(frequency.replace_strict(classes, default=None, return_dtype=pl.Float64))
        .when(denominator > 0)
        .then(numerator / denominator)
        .when(percent.is_not_null())
        .then(percent / 100.0)
        .otherwise(None)
    )


def _hpoa_version(head: bytes) -> str | None:
    found = _VERSION_LINE.search(head)
    return found.group(1).decode("ascii", errors="replace") if found else None


def _read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a plain or gzipped file (phenotype.hpoa is 35 MB: only its header counts)."""
    try:
        with open_stream(path) as handle:
            return handle.read(size)
    except (EOFError, OSError, zlib.error) as error:
        raise PayloadError(f"HPO: {Path(path).name} is not readable ({error}); download it again") from error
