"""Stage runner: the feature explorer of one dataset × layer, a self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import Environment
from sae_genomics_core.pipeline.result import Log, StageResult, Url, default_log


def run_pages(
    dataset: str, layer: int, store: ArtefactStore, warehouse: Path, log: Log | None = None
) -> StageResult:
    from sae_genomics_core.viz.pages import build_feature_pages
    from sae_genomics_core.viz.serve import page_url

    log = log or default_log()
    result = build_feature_pages(warehouse, dataset, layer, store.pages(dataset, layer))
    store.publish_pages(dataset, layer)
    log.info(f"feature pages: {result.path} ({result.n_features} features, {result.n_bytes / 1e6:.1f} MB)")
    return StageResult(
        summary={
            "path": result.path,
            # over http (`sae-genomics pages` or `ui` serve it): a browser blocks file:// from the UI
            "open": Url(page_url(Environment.read().pages_url, dataset, layer)),
            "file": Url(store.uri(result.path)),
            "features": result.n_features,
            "size_mb": round(result.n_bytes / 1e6, 2),
        }
    )
