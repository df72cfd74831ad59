"""Feature pages [dataset × layer]: a self-contained HTML explorer built from the warehouse.

Runner: sae_genomics_core.pipeline.pages.run_pages.
"""

import dagster as dg

from sae_genomics_core.pipeline.pages import run_pages
from sae_genomics_core.viz.pages import PAGE_TABLES
from sae_genomics_dagster.common import OWNERS, dataset_layer, metadata, user_errors
from sae_genomics_dagster.partitions import dataset_layer as partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource

GROUP = "reports"


@dg.asset(
    partitions_def=partitions,
    group_name=GROUP,
    kinds={"html", "duckdb"},
    owners=OWNERS,
    deps=list(PAGE_TABLES),
    description="A feature explorer for one dataset × layer: search by gene, term or cell type, a sortable "
    "index with a label per feature from its replicated claims; one page per feature with top genes (linked "
    "to HGNC, Ensembl, Open Targets, STRING, Monarch), top cells, cell types with effect sizes, held-out "
    "replication, activation histogram, density, enrichment with q-values, similar features (decoder "
    "cosine), its matches in other layers and datasets, what it does, CSV downloads, and the SAE vs PCA vs "
    "random baseline rates. One self-contained HTML file (opens offline) under "
    "`$SAE_GENOMICS_HOME/artefacts/pages/{dataset}/L{layer}/index.html`, served by `make ui`.",
)
def feature_pages(
    context: dg.AssetExecutionContext, home: HomeResource, artefacts: ArtefactsResource
) -> dg.MaterializeResult:
    dataset, layer = dataset_layer(context)
    with user_errors():
        result = run_pages(dataset, layer, artefacts.store, home.home.warehouse, context.log)
    return dg.MaterializeResult(metadata=metadata(result.summary))
