"""Activations: one tahoe-x1 forward pass per dataset for every configured layer and hook point.

Runners: sae_genomics_core.pipeline.activations.run_activations and run_activation_sets.
"""

import dagster as dg
import polars as pl

from sae_genomics_core.pipeline.activations import run_activation_sets, run_activations
from sae_genomics_dagster.common import BY_DATASET, GPU_POOL, GPU_TAGS, OWNERS, metadata, user_errors
from sae_genomics_dagster.partitions import dataset_partitions
from sae_genomics_dagster.resources import ArtefactsResource, HomeResource, ModelResource

GROUP = "activations"


@dg.asset(
    partitions_def=dataset_partitions,
    deps=["cells", "genes"],
    group_name=GROUP,
    kinds={"torch", "numpy"},
    owners=OWNERS,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description=(
        "Token activations of tahoe-x1 for every configured layer and hook point (mlp_out, resid_post, "
        "attn_out, mlp_hidden), from one forward pass per batch, streamed to shards under "
        "`$SAE_GENOMICS_HOME/artefacts/activations/{dataset}/`. PAD tokens are never stored; the CLS "
        "row is kept apart as the cell vector. With the model spec `tiny-random` (the offline demo) "
        "the weights are RANDOM: the architecture is real, the features are not biology. "
        "`random-init:SPEC` is the baseline for a real model: its architecture and vocab, random weights "
        "(model id `random-init(seed=…):…`)."
    ),
)
def activations(
    context: dg.AssetExecutionContext, home: HomeResource, artefacts: ArtefactsResource, model: ModelResource
) -> dg.MaterializeResult:
    dataset = context.partition_key
    with user_errors():
        result = run_activations(
            home.registry.get(dataset),
            artefacts.store,
            home.home.warehouse,
            model.choice(),
            model.settings(),
            log=context.log,
        )
    return dg.MaterializeResult(metadata=metadata(result.summary))


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[activations],
    io_manager_key="warehouse",
    metadata=BY_DATASET,
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    owners=OWNERS,
    pool="duckdb",
    description="Catalogue of a dataset's activations: one row per layer × hook with uri, shape, dtype, checksum "
    "and model. Table `activation_sets`.",
)
def activation_sets(
    context: dg.AssetExecutionContext, home: HomeResource, artefacts: ArtefactsResource
) -> pl.DataFrame:
    with user_errors():
        result = run_activation_sets(context.partition_key, artefacts.store, home.home.warehouse, context.log)
    return result.tables["activation_sets"]
