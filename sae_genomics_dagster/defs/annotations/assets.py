"""Gene identifiers (HGNC), one asset per annotation database and the HPO ontology, each refreshed on
its own schedule. A refresh that fails writes nothing (the previous table stays); OMIM or DisGeNET
without a key is skipped with a message, not failed.

Runners: sae_genomics_core.pipeline.annotations (refresh_gene_identifiers, refresh_annotations,
refresh_hpo_ontology).
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from sae_genomics_core.annotations.base import SourceConfig, load_sources
from sae_genomics_core.annotations.refresh import CLIENTS, client_class
from sae_genomics_core.annotations.store import refresh_gene_annotations_view
from sae_genomics_core.config import ANNOTATION_MODE_ENV
from sae_genomics_core.pipeline.annotations import (
    RefreshSettings,
    refresh_annotations,
    refresh_gene_identifiers,
    refresh_hpo_ontology,
)
from sae_genomics_core.warehouse.writer import write_transaction
from sae_genomics_dagster.common import OWNERS, metadata, user_errors
from sae_genomics_dagster.resources import HomeResource

GROUP = "annotations"
REFRESH = RefreshSettings()  # the core defaults


class AnnotationRefreshConfig(dg.Config):
    mode: str = Field(
        default=REFRESH.mode,
        description="live (the service), file (your own download: set files), snapshot (bundled extract) or "
        f"default (${ANNOTATION_MODE_ENV}, else live)",
    )
    files: list[str] = Field(
        default=list(REFRESH.files), description="mode file: paths of the downloaded file(s)"
    )

    def settings(self) -> RefreshSettings:
        return RefreshSettings(mode=self.mode, files=tuple(self.files))


@dg.asset(
    io_manager_key="warehouse",
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    owners=OWNERS,
    pool="duckdb",
    description="HGNC complete set: one row per HGNC gene with symbol, aliases, previous symbols, Entrez, "
    "Ensembl and UniProt ids. Every id (dataset symbols, each database's genes) maps to Ensembl through it. "
    "Table `gene_identifiers`.",
)
def gene_identifiers(
    context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource
) -> dg.Output[pl.DataFrame]:
    with user_errors("gene_identifiers not refreshed (previous table kept)"):
        result = refresh_gene_identifiers(
            config.settings(), home.home.warehouse, home.home.cache, context.log
        )
    return dg.Output(result.tables["gene_identifiers"], metadata=metadata(result.summary))


@dg.asset(
    io_manager_key="warehouse",
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    owners=OWNERS,
    pool="duckdb",
    description="The Human Phenotype Ontology (hp.obo, URL in external/sources.yaml), parsed with pronto: one "
    "row per term with its is_a ancestors (nearest first). HPO enrichment propagates gene annotations up "
    "it (true-path rule). Table `hpo_ontology`.",
)
def hpo_ontology(
    context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource
) -> dg.Output[pl.DataFrame]:
    with user_errors("hpo_ontology not refreshed (previous table kept)"):
        result = refresh_hpo_ontology(config.settings(), home.home.cache, context.log)
    return dg.Output(result.tables["hpo_ontology"], metadata=metadata(result.summary))


def annotation_asset(database: str, source: SourceConfig) -> dg.AssetsDefinition:
    """The asset of one database (ten alike, from external/sources.yaml)."""
    client = client_class(database)
    key_note = f" Needs ${source.key_env}; skipped without it." if client.needs_key else ""
    name = f"annotations_{database}"

    @dg.asset(
        name=name,
        io_manager_key="warehouse",
        group_name=GROUP,
        kinds={"duckdb", "polars"},
        owners=OWNERS,
        # per-gene sources ask about the datasets' genes: after ingest in a run, and stale when a dataset is added
        deps=["gene_identifiers", *(["genes"] if client.per_gene else [])],
        output_required=False,
        pool="duckdb",
        metadata={"licence": source.licence, "refresh_cron": source.refresh_cron},
        description=f"{client.title} gene annotations ({client.term_kind} terms), ids mapped to Ensembl. "
        f"Licence: {source.licence}. Refreshed on cron `{source.refresh_cron}`.{key_note} "
        f"Table `{name}`; all databases: view `gene_annotations`.",
    )
    def refresh_database(
        context: dg.AssetExecutionContext, config: AnnotationRefreshConfig, home: HomeResource
    ) -> Iterator[dg.Output[pl.DataFrame]]:
        warehouse = home.home.warehouse
        with user_errors(f"{name} not refreshed (previous table kept)"):
            result = refresh_annotations(database, config.settings(), warehouse, home.home.cache, context.log)
        if result.skipped:  # not a failure: nothing is materialised, the old table (if any) stays
            return
        yield dg.Output(result.tables[name], metadata=metadata(result.summary))
        # the table is written as the output is yielded; now the union view can include it
        write_transaction(warehouse, refresh_gene_annotations_view)

    return refresh_database


SOURCES = load_sources()
annotation_assets = [
    annotation_asset(database, SOURCES[database]) for database in CLIENTS if database in SOURCES
]
# A key-gated source without its key ends without output, and Dagster skips whatever depends on it in the
# same run: enrichment reads such tables when they exist but does not wait on them.
always_available = [
    asset.key
    for asset in annotation_assets
    if not client_class(asset.key.path[-1].removeprefix("annotations_")).needs_key
]
