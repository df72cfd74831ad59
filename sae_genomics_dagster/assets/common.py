"""What every asset module shares: owners, how a warehouse-table output is declared, the SAE device."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from sae_genomics_core.config import AUTO, Environment
from sae_genomics_core.errors import SaeGenomicsError

OWNERS = ["team:sae-genomics"]
BY_DATASET = {"partition_expr": "dataset"}
BY_DATASET_LAYER = {"partition_expr": {"dataset": "dataset", "layer": "layer"}}


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


def sae_device() -> str:
    """Where SAEs train and encode: $SAE_GENOMICS_SAE_DEVICE, or auto (CUDA when available)."""
    configured = Environment.read().sae_device
    if configured != AUTO:
        return configured
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def charts_dir(home_root: Any, dataset: str, layer: int) -> Path:
    """Where a dataset × layer's charts are saved: $SAE_GENOMICS_HOME/artefacts/charts/<dataset>/L<layer>."""
    directory = Path(home_root.artefacts) / "charts" / dataset / f"L{layer}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def chart_metadata(directory: Path, name: str, chart: Any) -> dg.MetadataValue:
    """Save an Altair chart as HTML (and PNG) under `directory` and return it as an image for the UI."""
    from sae_genomics_core.viz.charts import chart_markdown, save_chart

    save_chart(chart, directory / name)
    return dg.MetadataValue.md(chart_markdown(chart, name.replace("_", " ")))


@contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """The one adapter from core errors to Dagster: an error the user can fix fails the step with its
    message and fix (prefixed by `what`); any other exception is a bug and surfaces as one."""
    try:
        yield
    except SaeGenomicsError as error:
        raise dg.Failure(description=(f"{what}: " if what else "") + error.explain()) from error
