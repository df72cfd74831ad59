"""Feature pages [dataset × layer]: a self-contained HTML explorer built from the warehouse.

Logic: sae_genomics_core.viz.pages.build_feature_pages.
"""

import dagster as dg

from sae_genomics_dagster.assets.common import OWNERS, user_errors
from sae_genomics_dagster.resources import HomeResource

GROUP = "reports"
PAGE_INPUTS = (
    "feature_stats",
    "feature_genes",
    "feature_cells",
    "feature_cell_types",
    "feature_histograms",
    "enrichment",
    "enrichment_baselines",
)


def build_page_assets(partitions: dg.MultiPartitionsDefinition) -> list:
    @dg.asset(
        name="feature_pages",
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"html", "duckdb"},
        owners=OWNERS,
        deps=[*PAGE_INPUTS],
        description="A feature explorer for one dataset × layer: search by gene, term or cell type; one page per "
        "feature with top genes, top cells, cell types, activation histogram, density, enrichment with q-values "
        "and the SAE vs PCA vs random baseline rates. One self-contained HTML file (opens offline) under "
        "`$SAE_GENOMICS_HOME/artefacts/pages/<dataset>/L<layer>/index.html`.",
    )
    def feature_pages(context: dg.AssetExecutionContext, home: HomeResource) -> dg.MaterializeResult:
        from sae_genomics_core.viz.pages import build_feature_pages

        keys = context.partition_key.keys_by_dimension
        dataset, layer = keys["dataset"], int(keys["layer"])
        out_dir = home.home.artefacts / "pages" / dataset / f"L{layer}"
        with user_errors():
            result = build_feature_pages(home.home.warehouse, dataset, layer, out_dir)
        context.log.info(
            f"feature pages: {result.path} ({result.n_features} features, {result.n_bytes / 1e6:.1f} MB)"
        )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(result.path)),
                "open": dg.MetadataValue.url(result.path.as_uri()),
                "features": result.n_features,
                "size_mb": round(result.n_bytes / 1e6, 2),
            }
        )

    return [feature_pages]
