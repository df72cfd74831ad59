from __future__ import annotations

import dagster as dg

from sae_genomics_core.config import Home
from sae_genomics_dagster.definitions import build_definitions


def test_definitions_load_with_the_expected_graph(home: Home) -> None:
    defs = build_definitions(home)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"dataset_h5ad", "cells", "genes", "datasets"} <= keys
    for name in ("cells", "genes", "datasets"):
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def == dg.DynamicPartitionsDefinition(name="dataset")
        assert node.pools == {"duckdb"}
        assert dg.AssetKey("dataset_h5ad") in node.parent_keys
        assert node.description
    activations = graph.get(dg.AssetKey("activations"))
    assert activations.pools == {"gpu"}
    assert {dg.AssetKey("cells"), dg.AssetKey("genes")} <= activations.parent_keys
    assert "RANDOM" in activations.description  # the demo's tiny-random model says what it is
    assert graph.get(dg.AssetKey("activation_sets")).pools == {"duckdb"}
    assert defs.resolve_sensor_def("incoming_h5ad").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("dataset_pipeline") is not None


def test_definitions_module_uses_the_home_from_the_environment(home: Home) -> None:
    import importlib

    import sae_genomics_dagster.definitions as module

    reloaded = importlib.reload(module)
    resource = reloaded.defs.resources["home"]
    assert resource.root == str(home.root)
