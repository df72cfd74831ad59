"""Stage runner: the feature explorer of one dataset × layer, a self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_genomics_core.artefacts import ArtefactStore
from sae_genomics_core.config import Environment
from sae_genomics_core.pipeline.result import Log, StageResult, Url, default_log


def run_pages(
    dataset: str, layer: int, store: ArtefactStore, warehouse: Path, log: Log | None = None
) -> StageResult:
    from sae_genomics_core.viz.pages import build_feature_pages
    from sae_genomics_core.viz.serve import page_url

    log = log or default_log()
    similar, why = _similar_features(dataset, layer, store, warehouse)
    if similar is None:
        log.warning(f"feature pages without similar features: {why}")
    result = build_feature_pages(warehouse, dataset, layer, store.pages(dataset, layer), similar)
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
            "similar_features": why,
        }
    )


def _similar_features(dataset: str, layer: int, store: ArtefactStore, warehouse: Path) -> tuple[Any, str]:
    """(each feature's nearest features by decoder cosine, or None; what was done or why not): only from
    the SAE checkpoint the feature tables came from, else the neighbours would be another SAE's."""
    from sae_genomics_core.sae.checkpoint import checkpoint_id, load_checkpoint
    from sae_genomics_core.viz.pages import SIMILAR, features_checkpoint, similar_features

    checkpoint = store.current_checkpoint(dataset, layer)
    if checkpoint is None:
        return None, "no SAE checkpoint"
    tables_from, current = features_checkpoint(warehouse, dataset, layer), checkpoint_id(checkpoint)
    if tables_from != current:
        return None, f"the feature tables come from checkpoint {tables_from}, the current SAE is {current}"
    decoder = load_checkpoint(checkpoint).sae.W_dec.detach().cpu()
    return similar_features(decoder), f"{SIMILAR} per feature, by decoder cosine"
