"""Ontologies for enrichment: terms, the transitive is_a closure, the true-path rule, most specific terms.

`read_ontology` parses OBO or OBO-graphs JSON (plain or gzip) with pronto into two tables:

- `terms`: term_id, name, is_obsolete, replaced_by. An alternative id (`alt_id`, a term merged into another)
  that is not a term of its own is listed as an obsolete row with a null name, replaced_by its primary term:
  annotation files still use such ids, and the table round-trips through the warehouse without a third frame.
- `ancestors`: term_id, ancestor_id, distance — every is_a ancestor of every term (self excluded), with the
  length of the shortest is_a path. Only is_a counts: a gene with a part is not a gene with the whole, so
  part_of and other relations do not carry annotations upwards (HPO's hierarchy is is_a only anyway).

`propagate` applies the true-path rule to gene annotations (a gene with a term has every ancestor too);
`most_specific` keeps, per group, only terms with no descendant in the same group; `fetch_ontology`
downloads a release with the annotation layer's HTTP client (conditional GET cache, retries).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl

from sae_genomics_core.annotations.errors import PayloadError
from sae_genomics_core.annotations.files import gunzip_if_needed
from sae_genomics_core.annotations.http import HttpClient

log = logging.getLogger(__name__)

SERVICE = "hpo"
TERMS_SCHEMA: dict[str, pl.DataType] = {
    "term_id": pl.String(),
    "name": pl.String(),
    "is_obsolete": pl.Boolean(),
    "replaced_by": pl.String(),
}
ANCESTORS_SCHEMA: dict[str, pl.DataType] = {
    "term_id": pl.String(),
    "ancestor_id": pl.String(),
    "distance": pl.Int64(),
}
PROPAGATED_SCHEMA: dict[str, pl.DataType] = {
    "ensembl_id": pl.String(),
    "term_id": pl.String(),
    "term_name": pl.String(),
    "direct": pl.Boolean(),
}
_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)")
_MAX_REPLACEMENT_HOPS = 20  # replaced_by chains are short; the bound only guards against cycles
_EXAMPLES = 10


@dataclass(frozen=True)
class OntologyTables:
    ontology: str  # e.g. "hpo"
    version: str  # release from data-version ("hp/releases/2023-01-27" → "2023-01-27"), else sha256[:12]
    terms: pl.DataFrame  # term_id, name, is_obsolete, replaced_by (see the module docstring on alt ids)
    ancestors: pl.DataFrame  # term_id, ancestor_id, distance ≥ 1: transitive is_a closure, self excluded


@dataclass(frozen=True)
class PropagationReport:
    """What `propagate` did with the input's term ids (distinct ids, not rows)."""

    n_input_terms: int
    n_remapped: int  # obsolete (with replaced_by) or alternative ids mapped to their current term
    n_obsolete: int  # obsolete ids without a usable replacement: kept as they are, without ancestors
    n_unknown: int  # ids the ontology does not have (other release, other ontology): kept, without ancestors
    remapped_examples: tuple[str, ...] = ()  # "old→new"
    obsolete_examples: tuple[str, ...] = ()
    unknown_examples: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"{self.n_input_terms} terms: {self.n_remapped} remapped from obsolete/alternative ids, "
            f"{self.n_obsolete} obsolete without replacement, {self.n_unknown} unknown to the ontology"
        )


def read_ontology(path: Path, ontology: str = "hpo") -> OntologyTables:
    """Parse an OBO / OBO-graphs JSON file (plain or .gz) into terms and the is_a closure.

    PayloadError when the file is missing, unreadable or holds no terms."""
    import pronto  # a heavy import (fastobo): only when an ontology is actually read

    path = Path(path)
    hint = (
        f"download the {ontology} ontology again (OBO, e.g. hp.obo, or OBO-graphs JSON, e.g. hp.json; "
        "plain or gzip)"
    )
    if not path.is_file():
        raise PayloadError(f"{ontology}: ontology file {path} does not exist; {hint}")
    raw = path.read_bytes()
    content = gunzip_if_needed(raw, ontology, str(path), hint)
    # fastobo panics (a BaseException, with a Rust backtrace on stderr) on JSON that is not OBO-graphs
    if content.lstrip()[:1] == b"{" and b'"graphs"' not in content:
        raise PayloadError(f"{ontology}: {path} is JSON but not OBO-graphs JSON (no 'graphs'); {hint}")
    try:
        with warnings.catch_warnings():
            # pronto warns about every OWL annotation it does not model; none of them matter here
            warnings.simplefilter("ignore")
            # import_depth=0: never follow `import:` lines over the network
            parsed = pronto.Ontology(io.BytesIO(content), import_depth=0)
            terms = list(parsed.terms())
            edges = [
                (term.id, parent.id)
                for term in terms
                for parent in term.superclasses(distance=1, with_self=False)
            ]
            data_version = parsed.metadata.data_version
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # pronto, fastobo (incl. its Rust panics: BaseException) raise many kinds
        detail = f"{type(error).__name__}: {str(error)[:200]}"
        if "could not find a parser" in str(error):  # pronto's message names only an in-memory buffer
            detail = "neither OBO, OBO-graphs JSON nor OWL"
        elif isinstance(error, KeyError):  # pronto refuses an is_a to a term the file does not declare
            detail = f"it refers to the undeclared term {error}"
        raise PayloadError(f"{ontology}: {path} is not a readable ontology ({detail}); {hint}") from error
    if not terms:
        raise PayloadError(f"{ontology}: {path} parsed but holds no terms; is it an ontology? {hint}")

    rows = []
    primary_ids = {term.id for term in terms}
    for term in terms:
        replacements = sorted(term.replaced_by.ids)  # ids, not terms: a dangling one must not raise
        # more than one replacement is ambiguous: leave the choice to a curator, not to us
        replaced_by = replacements[0] if len(replacements) == 1 else None
        rows.append((term.id, term.name, bool(term.obsolete), replaced_by))
    alternates = {alt: term.id for term in terms for alt in term.alternate_ids if alt not in primary_ids}
    rows.extend((alt, None, True, primary) for alt, primary in sorted(alternates.items()))
    terms_frame = pl.DataFrame(rows, schema=TERMS_SCHEMA, orient="row")
    direct = pl.DataFrame(edges, schema=["term_id", "ancestor_id"], orient="row")
    return OntologyTables(
        ontology=ontology,
        version=_version(data_version, raw),
        terms=terms_frame,
        ancestors=is_a_closure(direct),
    )


def is_a_closure(direct: pl.DataFrame) -> pl.DataFrame:
    """Transitive closure of direct (term_id, ancestor_id) edges with shortest-path distances.

    Breadth-first over the whole graph at once: step d extends the pairs first reached at d − 1 by one edge
    and keeps those not reached before, so each pair gets its shortest distance; one join per level of the
    DAG (≈ 20 for HPO) instead of a graph walk per term. Cycles end because no pair is reached twice."""
    edges = (
        direct.select(pl.col("term_id").cast(pl.String), pl.col("ancestor_id").cast(pl.String))
        .drop_nulls()
        .filter(pl.col("term_id") != pl.col("ancestor_id"))
        .unique()
    )
    up = edges.rename({"term_id": "via", "ancestor_id": "next"})
    frontier = edges
    levels = [edges.with_columns(distance=pl.lit(1, pl.Int64))]
    reached = edges
    distance = 1
    while frontier.height:
        distance += 1
        frontier = (
            frontier.join(up, left_on="ancestor_id", right_on="via")
            .select("term_id", pl.col("next").alias("ancestor_id"))
            .filter(pl.col("term_id") != pl.col("ancestor_id"))
            .unique()
            .join(reached, on=["term_id", "ancestor_id"], how="anti")
        )
        reached = pl.concat([reached, frontier])
        levels.append(frontier.with_columns(distance=pl.lit(distance, pl.Int64)))
    closure = pl.concat(levels).sort("term_id", "distance", "ancestor_id")
    return closure.select([pl.col(name).cast(dtype) for name, dtype in ANCESTORS_SCHEMA.items()])


def propagate(annotations: pl.DataFrame, ontology: OntologyTables) -> tuple[pl.DataFrame, PropagationReport]:
    """The true-path rule: each gene annotated to a term is annotated to all of its is_a ancestors.

    In: ensembl_id, term_id (other columns ignored; null ids dropped). Obsolete and alternative ids are first
    mapped to their current term (following replaced_by chains); ids without a current term are kept as they
    are, without ancestors. Out: (frame, report) — the frame holds distinct (ensembl_id, term_id, term_name,
    direct), direct being True when the gene had the term itself (after remapping), sorted by gene and term;
    term_name comes from the ontology (null for unknown ids)."""
    missing = [name for name in ("ensembl_id", "term_id") if name not in annotations.columns]
    if missing:
        raise ValueError(f"propagate: the annotations lack the column(s) {', '.join(missing)}")
    pairs = (
        annotations.select(pl.col("ensembl_id").cast(pl.String), pl.col("term_id").cast(pl.String))
        .drop_nulls()
        .unique()
    )
    current, report = _remap(pairs.get_column("term_id").unique().sort().to_list(), ontology)
    lookup = pl.DataFrame(
        {"term_id": list(current), "current_id": list(current.values())},
        schema={"term_id": pl.String, "current_id": pl.String},
    )
    direct = (
        pairs.join(lookup, on="term_id", how="left")
        .select("ensembl_id", pl.coalesce("current_id", "term_id").alias("term_id"))
        .unique()
    )
    inherited = direct.join(ontology.ancestors.select("term_id", "ancestor_id"), on="term_id").select(
        "ensembl_id", pl.col("ancestor_id").alias("term_id")
    )
    names = ontology.terms.select("term_id", pl.col("name").alias("term_name")).unique("term_id")
    frame = (
        pl.concat([direct.with_columns(direct=pl.lit(True)), inherited.with_columns(direct=pl.lit(False))])
        .group_by("ensembl_id", "term_id")
        .agg(pl.col("direct").any())
        .join(names, on="term_id", how="left")
        .select([pl.col(name).cast(dtype) for name, dtype in PROPAGATED_SCHEMA.items()])
        .sort("ensembl_id", "term_id")
    )
    return frame, report


def most_specific(rows: pl.DataFrame, ontology: OntologyTables, by: Sequence[str]) -> pl.DataFrame:
    """Drop each row whose term is an is_a ancestor of another row's term in the same `by` group.

    All columns are kept, in their order; rows keep their order. Terms unknown to the ontology have no
    ancestors or descendants and are always kept. Null `by` values form a group of their own."""
    keys = [*by, "term_id"]
    missing = [name for name in keys if name not in rows.columns]
    if missing:
        raise ValueError(f"most_specific: the rows lack the column(s) {', '.join(missing)}")
    if rows.height == 0:
        return rows
    # every (group, term) that is an ancestor of some term of its group: those rows are not most specific
    covered = (
        rows.select(keys)
        .unique()
        .join(ontology.ancestors.select("term_id", "ancestor_id"), on="term_id")
        .select(*by, pl.col("ancestor_id").alias("term_id"))
        .unique()
    )
    return rows.join(covered, on=keys, how="anti", nulls_equal=True, maintain_order="left")


def fetch_ontology(url: str, cache_dir: Path, **http_options: Any) -> Path:
    """Download an ontology release (e.g. https://purl.obolibrary.org/obo/hp.obo) into the HTTP cache.

    A conditional GET: an unchanged release is not downloaded again. `http_options` go to HttpClient
    (timeout_s, retries, backoff_s, …). Returns the cached file; parse it with `read_ontology`."""
    name = Path(urlparse(url).path).name or f"{SERVICE}-ontology"
    client = HttpClient(SERVICE, Path(cache_dir), **http_options)
    download = client.download(url, name)
    log.info(
        "%s ontology %s: %s (%d bytes, sha256 %s…)",
        SERVICE,
        "unchanged, served from the cache" if download.from_cache else "downloaded",
        download.path,
        download.size,
        download.sha256[:12],
    )
    return download.path


def _remap(term_ids: list[str], ontology: OntologyTables) -> tuple[dict[str, str], PropagationReport]:
    """{input id → current id} for the ids that need it, and the report on all input ids."""
    table = ontology.terms.select("term_id", "is_obsolete", "replaced_by")
    obsolete = dict(zip(table["term_id"].to_list(), table["is_obsolete"].to_list(), strict=True))
    replaced = dict(zip(table["term_id"].to_list(), table["replaced_by"].to_list(), strict=True))
    current: dict[str, str] = {}
    stuck, unknown = [], []
    for term_id in term_ids:
        if term_id not in obsolete:
            unknown.append(term_id)
            continue
        if not obsolete[term_id]:
            continue
        target: str | None = term_id
        for _ in range(_MAX_REPLACEMENT_HOPS):
            if target is None or target not in obsolete or not obsolete[target]:
                break
            target = replaced[target]
        if target is not None and target in obsolete and not obsolete[target]:
            current[term_id] = target
        else:  # no replacement, a dangling one, or a cycle: keep the id as the file gave it
            stuck.append(term_id)
    report = PropagationReport(
        n_input_terms=len(term_ids),
        n_remapped=len(current),
        n_obsolete=len(stuck),
        n_unknown=len(unknown),
        remapped_examples=tuple(f"{old}→{new}" for old, new in list(current.items())[:_EXAMPLES]),
        obsolete_examples=tuple(stuck[:_EXAMPLES]),
        unknown_examples=tuple(unknown[:_EXAMPLES]),
    )
    return current, report


def _version(data_version: str | None, raw: bytes) -> str:
    """The release date in data-version ("hp/releases/2023-01-27"), else its last part, else the sha256."""
    if data_version:
        found = _DATE.search(data_version)
        if found:
            return found.group(1)
        last = data_version.rstrip("/").rsplit("/", 1)[-1]
        if last:
            return last
    return hashlib.sha256(raw).hexdigest()[:12]
