"""What every asset module shares: owners, how a warehouse-table output is declared, the SAE device."""

import os

import dagster as dg

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
    configured = os.environ.get("SAE_GENOMICS_SAE_DEVICE", "auto")
    if configured != "auto":
        return configured
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
