"""What every stage's definitions share: owners, partition keys, how a warehouse-table output is declared,
and the adapters from core results (summaries, check outcomes, errors) to Dagster."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.pipeline.result import CheckOutcome, Markdown, StageResult, Url
from sae_genomics_dagster.profiles import GPU_POOL as GPU_POOL  # the stages import it from here
from sae_genomics_dagster.profiles import gpu_op_tags

OWNERS = ["team:sae-genomics"]
BY_DATASET = {"partition_expr": "dataset"}
BY_DATASET_LAYER = {"partition_expr": {"dataset": "dataset", "layer": "layer"}}
GPU_TAGS = gpu_op_tags()  # the steps on a GPU: the Celery gpu queue, a Kubernetes GPU request


def table_out(description: str, group: str, partitioning: dict) -> dg.AssetOut:
    """An output written to the warehouse table named after the asset, one slice per partition."""
    return dg.AssetOut(
        io_manager_key="warehouse",
        metadata=partitioning,
        kinds={"duckdb", "polars"},
        owners=OWNERS,
        group_name=group,
        description=description,
    )


def written_table(name: str, description: str, group: str, kinds: set[str], deps: list[str]) -> dg.AssetSpec:
    """A dataset × layer table its runner writes itself (with others, in one transaction)."""
    return dg.AssetSpec(
        name,
        description=description,
        group_name=group,
        kinds=kinds,
        owners=OWNERS,
        metadata=BY_DATASET_LAYER,
        deps=deps,
    )


def table_results(result: StageResult) -> Iterator[dg.MaterializeResult]:
    """One materialisation per table a runner wrote: row count and schema, its summary and the stage's."""
    from sae_genomics_dagster.io_manager import table_metadata

    for name, frame in result.tables.items():
        summary = {**result.table_summaries.get(name, {}), **result.summary}
        yield dg.MaterializeResult(
            asset_key=name, metadata={**table_metadata(name, frame, partitioned=True), **metadata(summary)}
        )


def dataset_layer(context: dg.AssetExecutionContext) -> tuple[str, int]:
    """The dataset and layer of a dataset × layer partition."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    return keys["dataset"], int(keys["layer"])


def metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """A core summary as Dagster metadata: markdown rendered, paths and links clickable, lists and
    dicts as JSON, `uri` as the asset's `dagster/uri`."""
    converted: dict[str, Any] = {}
    for name, value in summary.items():
        if isinstance(value, Markdown):
            converted[name] = dg.MetadataValue.md(value)
        elif isinstance(value, Url):
            converted[name] = dg.MetadataValue.url(value)
        elif isinstance(value, Path):
            converted[name] = dg.MetadataValue.path(str(value))
        elif isinstance(value, dict | list | tuple):
            converted[name] = dg.MetadataValue.json(value)
        else:
            converted["dagster/uri" if name == "uri" else name] = value
    return converted


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        description=outcome.description or None,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        metadata=metadata(outcome.metadata),
    )


@contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """The one adapter from core errors to Dagster: an error the user can fix fails the step with its
    message and fix (prefixed by `what`); any other exception is a bug and surfaces as one."""
    try:
        yield
    except SaeGenomicsError as error:
        raise dg.Failure(description=(f"{what}: " if what else "") + error.explain()) from error
