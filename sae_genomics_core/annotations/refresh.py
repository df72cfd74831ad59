"""One refresh of one database: pick the client, fetch in the chosen mode, map ids, build the table.

Dagster's annotation assets call `refresh` and write what it returns; nothing is written on error, so
the previous table stays (the warehouse write is one transaction).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_genomics_core.annotations.base import (
    MODES,
    AnnotationClient,
    Annotations,
    GeneSet,
    Mode,
    SourceConfig,
    finalise,
)
from sae_genomics_core.annotations.errors import AnnotationError, SourceSkipped
from sae_genomics_core.annotations.identifiers import GeneResolver

# the most one refresh may spend on the network (retries, waits, downloads), unless its entry in
# sources.yaml sets `max_refresh_s` (0 = no bound): a dead service fails the run instead of holding it
DEFAULT_MAX_REFRESH_S = 3600.0

# database name (sources.yaml key) → "module:Class" under sae_genomics_core.annotations
CLIENTS: dict[str, str] = {
    "opentargets": "opentargets:OpenTargetsClient",
    "hpo": "hpo:HpoClient",
    "gwas_catalog": "gwas_catalog:GwasCatalogClient",
    "disgenet": "disgenet:DisgenetClient",
    "monarch": "monarch:MonarchClient",
    "string": "string_db:StringClient",
    "omim": "omim:OmimClient",
    "orphanet": "orphanet:OrphanetClient",
    "clinvar": "clinvar:ClinvarClient",
    "gencc": "gencc:GenccClient",
}


def client_class(database: str) -> type[AnnotationClient]:
    if database not in CLIENTS:
        raise AnnotationError(f"unknown database {database!r}; known: {', '.join(CLIENTS)}")
    module_name, class_name = CLIENTS[database].split(":")
    module = importlib.import_module(f"sae_genomics_core.annotations.{module_name}")
    return getattr(module, class_name)


def max_refresh_s(config: SourceConfig) -> float:
    """The source's bound on one refresh: `max_refresh_s` in sources.yaml, else the default."""
    value = config.extra.get("max_refresh_s", DEFAULT_MAX_REFRESH_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise AnnotationError(
            f"{config.name}: max_refresh_s in external/sources.yaml is {value!r}; set it to the seconds one "
            "refresh may take (a number ≥ 0; 0 = no bound)"
        )
    return float(value)


def refresh(
    database: str,
    config: SourceConfig,
    resolver: GeneResolver,
    *,
    mode: Mode = "live",
    files: Sequence[Path] = (),
    genes: GeneSet | None = None,
    cache_dir: Path | None = None,
    http_options: dict[str, Any] | None = None,
) -> Annotations:
    """Fetch and normalise one database; raises MissingApiKey (skip) or AnnotationError (fail)."""
    if mode not in MODES:
        raise AnnotationError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    cls = client_class(database)
    if mode == "snapshot" and not cls.snapshot_files:
        raise SourceSkipped(
            f"{cls.title}: no bundled snapshot (its licence forbids redistribution: {config.licence}); "
            "refresh it in mode 'live' with a key or in mode 'file' with your own download"
        )
    options = {"max_total_s": max_refresh_s(config), **(http_options or {})}
    client = cls.make(config, cache_dir, require_key=mode == "live", **options)
    if mode == "live":
        raw = client.fetch_live(genes if genes is not None else GeneSet.empty())
    else:
        paths = list(files) if mode == "file" else client.snapshot_paths()
        if not paths:
            raise AnnotationError(
                f"{cls.title}: mode 'file' needs the path of the downloaded file(s): "
                f"{', '.join(cls.snapshot_files) or 'see the client docs'}"
            )
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise AnnotationError(f"{cls.title}: file(s) not found: {', '.join(missing)}")
        raw = client.read_files([Path(p) for p in paths])
    return finalise(raw, database, resolver, default_term_kind=cls.term_kind)
