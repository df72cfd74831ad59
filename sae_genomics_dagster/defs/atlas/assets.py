"""The atlas: SAE features matched across layers and datasets by decoder cosine.

Runner: sae_genomics_core.pipeline.atlas.run_feature_matches.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from sae_genomics_core.pipeline.atlas import run_feature_matches
from sae_genomics_dagster.common import OWNERS, metadata, user_errors
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource

GROUP = "atlas"


@dg.asset(
    io_manager_key="warehouse",
    group_name=GROUP,
    kinds={"torch", "duckdb"},
    owners=OWNERS,
    deps=["sae_checkpoints"],
    output_required=False,
    # matched again whenever an SAE changes (the automation daemon of `sae-genomics ui`)
    automation_condition=dg.AutomationCondition.eager(),
    description="Every feature of every SAE matched to the SAEs of the other layers of its dataset and of the same "
    "layer in the other datasets (one model, hook and width): best match and its cosine, whether it is mutual, the "
    "one-to-one partner, and `chance_cosine`, what random directions reach. Table `feature_matches`.",
)
def feature_matches(
    context: dg.AssetExecutionContext, home: HomeResource, artefacts: ArtefactsResource
) -> Iterator[dg.Output[pl.DataFrame]]:
    with user_errors():
        result = run_feature_matches(artefacts.store, home.home.warehouse)
    if result.skipped:
        context.log.info(f"feature_matches not written: {result.skipped}")
        return
    yield dg.Output(result.tables["feature_matches"], metadata=metadata(result.summary))


atlas_job = dg.define_asset_job(
    "atlas",
    selection=dg.AssetSelection.groups(GROUP),
    description="Match every SAE's features across layers and datasets (after new SAEs are trained).",
)
