"""STRING: protein–protein association partners of each human gene (bulk v12 files; CC BY 4.0).

Live: conditional GET of the links file (config `bulk_url`: the detailed links file, gzip,
space-separated `protein1 protein2 neighborhood fusion cooccurence coexpression experimental database
textmining combined_score`) and of the info file (config `extra.info_url`, tab-separated
`#string_protein_id preferred_name protein_size annotation`), so an unchanged release is not downloaded
again; plus `GET {api}/json/version` for the service's `string_version` and `stable_address`. File: the
same two files (plain or .gz, either order); the full links file (direct and `_transferred` columns per
channel) and the plain links file (`combined_score` only) are read too.

Score: STRING's combined score mixes seven evidence channels, two of which (co-expression, text-mining)
would make gene sets built from co-expression look connected whatever the model learned. The score of a
link is therefore recombined from the channels in `extra.channels` (default experiments + database) with
STRING's own formula (v12 `combine_subscores.py`): each channel score s loses the prior 0.041, s' = (max(s,
0.041) − 0.041) / 0.959, a channel's direct and transferred s' combine as 1 − (1 − s'ᵈ)(1 − s'ᵗ), the
channels as 1 − Π(1 − s'ᵢ), and the prior is put back once, × 0.959 + 0.041, truncated to thousandths.
`channels: combined` keeps STRING's combined_score (all seven). What each mode offers: live and file with
the detailed or full links file: every channel; file with the plain links file: combined_score only, an
error unless `channels: combined` (say so, rather than silently test co-expression); the bundled
snapshot: combined_score only (its real source rows carry no channels), used with a warning. The score's
basis ends the source version ("…; score: channels experiments+database"), which enrichment rows carry.

Filters: links whose score (as above) is below `extra.score_threshold` (default 700, STRING's "high
confidence") and rows whose proteins are not of species 9606 are dropped. One row per directed edge as the
file lists it (STRING lists both directions): gene = protein1's preferred name (symbol), term =
"STRING:<protein2 id>" named by protein2's preferred name, score = the score / 1000, evidence = the channel
values used and the combined_score.

Memory: the human links file is ~600 MB uncompressed with 13.7 M rows of which ~3.5 % pass 700. It is
decompressed in 16 MB blocks cut at line ends, each block parsed with polars and filtered at once, so only
the kept links are ever held (about 0.5 M rows) instead of the whole table.

Version: the release in the file names (`….v12.0.txt.gz`), with the API's answer added in live mode;
falls back to the download's Last-Modified/ETag when the names carry none.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from sae_genomics_core.annotations.base import (
    AnnotationClient,
    GeneSet,
    RawAnnotations,
    require_columns,
    snapshots_dir,
)
from sae_genomics_core.annotations.errors import AnnotationError, PayloadError, SchemaError
from sae_genomics_core.annotations.files import open_stream
from sae_genomics_core.annotations.http import HttpError

log = logging.getLogger(__name__)

DEFAULT_INFO_URL = "https://stringdb-downloads.org/download/protein.info.v12.0/9606.protein.info.v12.0.txt.gz"
DEFAULT_SCORE_THRESHOLD = 700
SPECIES = "9606"
LINK_COLUMNS = ("protein1", "protein2", "combined_score")
INFO_COLUMNS = ("string_protein_id", "preferred_name")
# v11 info files named the id column protein_external_id
INFO_ALIASES = {"#string_protein_id": "string_protein_id", "protein_external_id": "string_protein_id"}
BLOCK_BYTES = 16 << 20
# STRING's evidence channels (v12 combine_subscores.py) and the column names each has in the links files
CHANNEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "neighborhood": ("neighborhood",),
    "fusion": ("fusion",),
    "cooccurence": ("cooccurence", "cooccurrence"),
    "coexpression": ("coexpression",),
    "experiments": ("experiments", "experimental"),
    "database": ("database",),
    "textmining": ("textmining",),
}
CHANNEL_ALIASES = {"experimental": "experiments", "cooccurrence": "cooccurence", "databases": "database"}
# independent of co-expression: curated complexes/pathways and physical-interaction experiments
DEFAULT_CHANNELS = ("experiments", "database")
COMBINED = "combined"  # `channels: combined`: STRING's combined_score as it is
PRIOR = 0.041  # STRING's prior probability of a link, removed per channel and put back once
SCORE_MARK = "; score: "  # the score's basis closes the source version
_VERSION_IN_NAME = re.compile(r"\.v(\d+(?:\.\d+)+)\.")


class StringClient(AnnotationClient):
    name = "string"
    title = "STRING"
    term_kind = "interaction"
    snapshot_files = (
        "9606.protein.links.v12.0.demo-subset.txt.gz",
        "9606.protein.info.v12.0.demo-subset.txt.gz",
    )
    min_interval_s = 1.0  # STRING asks for about one request per second

    def fetch_live(self, genes: GeneSet) -> RawAnnotations:
        assert self.http is not None
        if not self.config.bulk_url:
            raise AnnotationError("STRING: sources.yaml gives no bulk_url for the links file")
        self._check_species()
        info_url = str(self.config.extra.get("info_url") or DEFAULT_INFO_URL)
        links = self.http.download(self.config.bulk_url, _file_name(self.config.bulk_url, "links.txt.gz"))
        info = self.http.download(info_url, _file_name(info_url, "info.txt.gz"))
        frame, basis = self._build(links.path, info.path, snapshot=False)
        version = _file_version([self.config.bulk_url, info_url])
        if version is None:
            served = links.last_modified or links.etag or f"sha256:{links.sha256[:12]}"
            version = f"STRING links file of {served}"
        api_version = self._api_version()
        if api_version:
            version = f"{version}; API {api_version}"
        return RawAnnotations(frame, "symbol", version + basis, self.http.redact(self.config.bulk_url))

    def read_files(self, paths: Sequence[Path]) -> RawAnnotations:
        self._check_species()
        links_path, info_path = _sort_files([Path(p) for p in paths])
        snapshot = all(p.resolve().parent == (snapshots_dir() / self.name).resolve() for p in paths)
        frame, basis = self._build(links_path, info_path, snapshot=snapshot)
        version = _file_version([links_path.name, info_path.name]) or "STRING (release not in the file names)"
        return RawAnnotations(frame, "symbol", version + basis, f"{links_path} + {info_path.name}")

    def _check_species(self) -> None:
        species = str(self.config.extra.get("species", SPECIES))
        if species != SPECIES:
            raise AnnotationError(
                f"STRING: only species 9606 (human) is supported, sources.yaml says {species}"
            )

    def _threshold(self) -> int:
        value = self.config.extra.get("score_threshold", DEFAULT_SCORE_THRESHOLD)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise AnnotationError(
                f"STRING: score_threshold must be an integer 0–1000, got {value!r}"
            ) from None

    def _channels(self) -> tuple[str, ...]:
        """The configured channels, canonical names in STRING's order; () for `combined`."""
        value = self.config.extra.get("channels", list(DEFAULT_CHANNELS))
        if value == COMBINED or value == [COMBINED]:
            return ()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise AnnotationError(
                f"STRING: channels must be a list of channel names or 'combined', got {value!r}"
            )
        chosen = {CHANNEL_ALIASES.get(n.strip().lower(), n.strip().lower()) for n in names}
        unknown = sorted(chosen - set(CHANNEL_COLUMNS))
        if unknown:
            raise AnnotationError(
                f"STRING: unknown channels {unknown} in sources.yaml; known: {', '.join(CHANNEL_COLUMNS)} "
                f"(or '{COMBINED}' for STRING's combined_score)"
            )
        return tuple(c for c in CHANNEL_COLUMNS if c in chosen)

    def _api_version(self) -> str | None:
        """The service's own version; only a supplement to the file names, so a failure is logged, not fatal."""
        assert self.http is not None
        if not self.config.api:
            return None
        url = self.config.api.rstrip("/") + "/json/version"
        try:
            answer = self.http.get_json(url, params={"caller_identity": "sae-genomics"})
        except HttpError as error:
            log.warning("STRING: version check failed (%s); using the file names' release only", error)
            return None
        # the answer is a one-element list of objects; some mirrors answer the object itself
        record = answer[0] if isinstance(answer, list) and answer else answer
        if not isinstance(record, dict) or "string_version" not in record:
            log.warning("STRING: unexpected version answer %.100r", answer)
            return None
        address = record.get("stable_address")
        return f"string_version {record['string_version']}" + (f" ({address})" if address else "")

    def _build(self, links_path: Path, info_path: Path, *, snapshot: bool) -> tuple[pl.DataFrame, str]:
        """Annotation rows and the score's basis (the source version's ending)."""
        threshold = self._threshold()
        names = _read_info(info_path)
        score = _score_for(_link_header(links_path), self._channels(), links_path.name, snapshot=snapshot)
        links = _read_links(links_path, threshold, score)
        if links.height == 0:
            raise PayloadError(
                f"STRING: {links_path.name} has no human links with a score ({score.basis}) >= {threshold}; "
                "is it the right file, or is score_threshold too high?"
            )
        joined = links.join(
            names.rename({"string_protein_id": "protein1", "preferred_name": "gene_id"}),
            on="protein1",
            how="left",
        ).join(
            names.rename({"string_protein_id": "protein2", "preferred_name": "term_name"}),
            on="protein2",
            how="left",
        )
        unnamed = joined.filter(pl.col("gene_id").is_null()).height
        if unnamed:
            # the info file is of another release than the links file, or was cut
            log.warning("STRING: %d links name a protein1 absent from %s; dropped", unnamed, info_path.name)
        return joined.filter(pl.col("gene_id").is_not_null()).select(
            "gene_id",
            (pl.lit("STRING:") + pl.col("protein2")).alias("term_id"),
            "term_name",
            pl.lit("interaction").alias("term_kind"),
            (pl.col("score") / 1000.0).alias("score"),
            "evidence",
        ), SCORE_MARK + score.basis


@dataclass(frozen=True)
class _Score:
    """How a link's score is made: STRING's formula over chosen channel columns, or the combined_score."""

    columns: tuple[tuple[str, str | None], ...]  # (direct, transferred or None) per channel; () = combined
    basis: str  # what the score is, for the source version

    @property
    def read(self) -> list[str]:
        extra = [c for pair in self.columns for c in pair if c]
        return [*LINK_COLUMNS, *extra]

    def expression(self) -> pl.Expr:
        """The integer score (0–1000) of each link."""
        if not self.columns:
            return pl.col("combined_score")
        return combine_channels([(pl.col(d), None if t is None else pl.col(t)) for d, t in self.columns])

    def evidence(self) -> pl.Expr:
        """The values the score came from, e.g. "experimental=161; database=0; combined_score=456"."""
        names = [*self.read[3:], "combined_score"]
        return pl.concat_str([pl.format(f"{name}={{}}", pl.col(name)) for name in names], separator="; ")


def combine_channels(channels: Sequence[tuple[pl.Expr, pl.Expr | None]]) -> pl.Expr:
    """STRING's combined score (0–1000) of channel scores (0–1000 each, direct and transferred or None)."""

    def prior_away(score: pl.Expr) -> pl.Expr:
        return (pl.max_horizontal(score / 1000.0, pl.lit(PRIOR)) - PRIOR) / (1 - PRIOR)

    one_minus: pl.Expr = pl.lit(1.0)
    for direct, transferred in channels:
        both = prior_away(direct)
        if transferred is not None:
            both = 1.0 - (1.0 - both) * (1.0 - prior_away(transferred))
        one_minus = one_minus * (1.0 - both)
    combined = (1.0 - one_minus) * (1.0 - PRIOR) + PRIOR
    return (combined * 1000).floor().cast(pl.Int64)  # STRING truncates: int(score * 1000)


def _score_for(header: list[str], channels: tuple[str, ...], name: str, *, snapshot: bool) -> _Score:
    """Which columns give the chosen channels, or what to do when the file has none."""
    if not channels:
        return _Score((), "combined_score (all channels, incl. co-expression and text-mining)")
    available = {c: next((a for a in CHANNEL_COLUMNS[c] if a in header), None) for c in CHANNEL_COLUMNS}
    if not any(available.values()):
        if snapshot:  # the bundled snapshot's real rows carry only combined_score
            log.warning(
                "STRING: the bundled snapshot has no channel columns; its scores are combined_score, which "
                "includes co-expression and text-mining (channels %s need live or file mode with the "
                "detailed links file)",
                "+".join(channels),
            )
            return _Score((), "combined_score (snapshot without channel columns; incl. co-expression)")
        raise AnnotationError(
            f"STRING: {name} has only combined_score, which includes co-expression and text-mining; use the "
            "detailed links file (9606.protein.links.detailed.v12.0.txt.gz) for channels "
            f"{'+'.join(channels)}, or set channels: {COMBINED} for string in sources.yaml to accept them"
        )
    missing = [c for c in channels if available[c] is None]
    if missing:
        raise SchemaError(
            f"STRING: {name} has no column for channels {missing} (columns: {' '.join(header)}); choose "
            "channels it has or use the detailed links file"
        )
    columns = tuple(
        (
            str(available[c]),
            f"{available[c]}_transferred" if f"{available[c]}_transferred" in header else None,
        )
        for c in channels
    )
    return _Score(columns, "channels " + "+".join(channels))


def score_basis(source_versions: Iterable[str]) -> str:
    """What the STRING scores of a table were made from, read back from its source versions."""
    found = sorted({v.split(SCORE_MARK, 1)[1] for v in source_versions if v and SCORE_MARK in v})
    return " / ".join(found) if found else "combined_score"


def _file_name(url: str, fallback: str) -> str:
    name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return name or fallback


def _file_version(names: Sequence[str]) -> str | None:
    found = sorted({m.group(1) for n in names if (m := _VERSION_IN_NAME.search(Path(n.split("?")[0]).name))})
    return f"STRING v{' / v'.join(found)}" if found else None


def _first_line(path: Path) -> str:
    try:
        with open_stream(path) as handle:
            return handle.readline(4096).decode("utf-8", "replace")
    except (OSError, EOFError, zlib.error) as error:
        raise PayloadError(f"STRING: {path.name} is not readable ({error}); download it again") from None


def _sort_files(paths: list[Path]) -> tuple[Path, Path]:
    """The links and the info file, told apart by their header lines (users name files as they like)."""
    links = [p for p in paths if _first_line(p).split()[:1] == ["protein1"]]
    info = [p for p in paths if p not in links]
    if len(links) != 1 or len(info) != 1:
        raise AnnotationError(
            "STRING: mode 'file' needs two files: 9606.protein.links.v12.0.txt.gz (header 'protein1 protein2 "
            f"combined_score') and 9606.protein.info.v12.0.txt.gz; got {', '.join(p.name for p in paths)}"
        )
    return links[0], info[0]


def _blocks(handle: BinaryIO, path: Path) -> Iterator[bytes]:
    """Whole lines in blocks of about BLOCK_BYTES; a last line without its newline means a cut file."""
    carry = b""
    try:
        while block := handle.read(BLOCK_BYTES):
            block = carry + block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]
    except (OSError, EOFError, zlib.error) as error:
        raise PayloadError(
            f"STRING: {path.name} is a damaged or truncated gzip ({error}); download it again"
        ) from None
    if carry.strip():
        raise PayloadError(f"STRING: {path.name} ends in a cut line (truncated download?); download it again")


def _link_header(path: Path) -> list[str]:
    """The links file's column names (the required ones checked)."""
    columns = _first_line(path).split()
    if not columns:
        raise PayloadError(f"STRING: {path.name} is empty; download it again")
    require_columns(pl.DataFrame(schema=dict.fromkeys(columns, pl.String)), LINK_COLUMNS, "STRING", path.name)
    return columns


def _read_links(path: Path, threshold: int, score: _Score) -> pl.DataFrame:
    kept: list[pl.DataFrame] = []
    with open_stream(path) as handle:
        header = b""
        for block in _blocks(handle, path):
            if not header:
                header, _, block = block.partition(b"\n")
                header += b"\n"
            if block:
                kept.append(_parse_links_block(header + block, path, threshold, score))
    if not header:
        raise PayloadError(f"STRING: {path.name} is empty; download it again")
    schema = {"protein1": pl.String, "protein2": pl.String, "score": pl.Int64, "evidence": pl.String}
    return pl.concat(kept) if kept else pl.DataFrame(schema=schema)


def _parse_links_block(content: bytes, path: Path, threshold: int, score: _Score) -> pl.DataFrame:
    try:
        block = pl.read_csv(
            io.BytesIO(content),
            separator=" ",
            columns=score.read,
            schema_overrides=dict.fromkeys(score.read[2:], pl.Int64),
            infer_schema=False,
            quote_char=None,
        )
    except pl.exceptions.PolarsError as error:
        raise PayloadError(
            f"STRING: {path.name} has malformed link rows ({str(error)[:200]}); download it again"
        ) from None
    if block.null_count().sum_horizontal().item():
        raise PayloadError(f"STRING: {path.name} has link rows with missing fields; download it again")
    prefix = SPECIES + "."
    return (
        block.filter(pl.col("protein1").str.starts_with(prefix) & pl.col("protein2").str.starts_with(prefix))
        .with_columns(score=score.expression(), evidence=score.evidence())
        .filter(pl.col("score") >= threshold)
        .select("protein1", "protein2", "score", "evidence")
    )


def _read_info(path: Path) -> pl.DataFrame:
    try:
        with open_stream(path) as handle:
            content = handle.read()
        if content and not content.endswith(b"\n"):
            raise PayloadError(
                f"STRING: {path.name} ends in a cut line (truncated download?); download it again"
            )
        frame = pl.read_csv(io.BytesIO(content), separator="\t", infer_schema=False, quote_char=None)
    except (OSError, EOFError, zlib.error) as error:
        raise PayloadError(
            f"STRING: {path.name} is a damaged or truncated gzip ({error}); download it again"
        ) from None
    except pl.exceptions.PolarsError as error:
        raise PayloadError(
            f"STRING: {path.name} is not a readable protein.info TSV ({str(error)[:200]}); download it again"
        ) from None
    frame = frame.rename({k: v for k, v in INFO_ALIASES.items() if k in frame.columns})
    require_columns(frame, INFO_COLUMNS, "STRING", path.name)
    if frame.height == 0:
        raise PayloadError(f"STRING: {path.name} has a header but no proteins; download it again")
    return frame.select(INFO_COLUMNS).unique("string_protein_id", keep="first")
