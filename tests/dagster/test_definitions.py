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
    sae = graph.get(dg.AssetKey("sae_checkpoint"))
    assert sae.pools == {"gpu"} and dg.AssetKey("activations") in sae.parent_keys
    assert isinstance(sae.partitions_def, dg.MultiPartitionsDefinition)
    assert sae.partitions_def.get_partitions_def_for_dimension("layer").get_partition_keys() == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert {key.name for key in graph.get_check_keys_for_assets({dg.AssetKey("sae_checkpoint")})} == {
        "explained_variance_floor",
        "dead_fraction_ceiling",
        "loss_recovered_floor",
    }
    effects = graph.get(dg.AssetKey("feature_effects"))
    assert effects.pools == {"gpu"} and dg.AssetKey("sae_checkpoint") in effects.parent_keys
    assert (
        defs.resolve_sensor_def("train_saes_after_activations").default_status
        == dg.DefaultSensorStatus.RUNNING
    )
    assert defs.resolve_sensor_def("incoming_h5ad").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("dataset_pipeline") is not None


def test_definitions_module_uses_the_home_from_the_environment(home: Home) -> None:
    import importlib

    import sae_genomics_dagster.definitions as module

    reloaded = importlib.reload(module)
    resource = reloaded.defs.resources["home"]
    assert resource.root == str(home.root)


def test_loading_the_definitions_does_not_import_torch(home: Home) -> None:
    """Code servers, the daemon and sensors import the definitions often; torch loads only inside assets."""
    import subprocess
    import sys

    code = "import sys, sae_genomics_dagster.definitions; print(sorted(m for m in ('torch', 'sae_lens', 'scipy.stats') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_asset_tells_a_newcomer_what_it_is(home: Home) -> None:
    graph = build_definitions(home).resolve_asset_graph()
    groups = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.description and len(node.description) > 40, name
        assert node.owners == ["team:sae-genomics"], name
        assert node.kinds, name  # torch, duckdb, polars, html, …
        assert node.group_name != "default", name
        groups.add(node.group_name)
    assert groups == {
        "datasets",
        "activations",
        "sae",
        "features",
        "effects",
        "annotations",
        "enrichment",
        "reports",
        "atlas",
    }
    # the last steps of the graph sit where DESIGN puts them
    assert dg.AssetKey("enrichment") in graph.get(dg.AssetKey("enrichment_baselines")).parent_keys
    assert dg.AssetKey("enrichment_baselines") in graph.get(dg.AssetKey("feature_pages")).parent_keys
    assert {c.name for c in graph.get_check_keys_for_assets({dg.AssetKey("enrichment")})} == {"calibration"}


def test_keyless_sources_cannot_hold_up_enrichment_and_per_gene_sources_follow_ingest(home: Home) -> None:
    graph = build_definitions(home).resolve_asset_graph()
    enrichment_parents = {key.path[-1] for key in graph.get(dg.AssetKey("enrichment")).parent_keys}
    # OMIM and DisGeNET end without output when their key is unset; a hard dependency would skip enrichment
    assert not {"annotations_omim", "annotations_disgenet"} & enrichment_parents
    assert {
        "annotations_hpo",
        "annotations_string",
        "annotations_monarch",
        "hpo_ontology",
    } <= enrichment_parents
    for database in (
        "opentargets",
        "monarch",
        "disgenet",
    ):  # their live APIs are asked about the datasets' genes
        assert dg.AssetKey("genes") in graph.get(dg.AssetKey(f"annotations_{database}")).parent_keys
    assert dg.AssetKey("genes") not in graph.get(dg.AssetKey("annotations_hpo")).parent_keys  # a bulk file


def _descriptions(defs: dg.Definitions) -> dict[str, str]:
    """Every description the UI renders: assets, checks, jobs, schedules, sensors and config fields."""
    graph = defs.resolve_asset_graph()
    found = {
        f"asset {key.to_user_string()}": graph.get(key).description or ""
        for key in graph.get_all_asset_keys()
    }
    for key in graph.asset_check_keys:
        found[f"check {key.name}"] = graph.get(key).description or ""
    for kind, items in (("job", defs.jobs), ("schedule", defs.schedules), ("sensor", defs.sensors)):
        for item in items or []:
            found[f"{kind} {item.name}"] = getattr(item, "description", None) or ""
    configs = [dg.Config, dg.ConfigurableResource]
    while configs:
        cls = configs.pop()
        configs.extend(cls.__subclasses__())
        if cls.__module__.startswith("sae_genomics"):
            for name, field in cls.model_fields.items():
                found[f"config {cls.__name__}.{name}"] = field.description or ""
    return found


def test_descriptions_survive_the_uis_markdown(home: Home) -> None:
    """The UI renders descriptions as markdown with HTML: `<dataset>` vanished ("artefacts/sae//L/")."""
    import re

    descriptions = _descriptions(build_definitions(home))
    assert len(descriptions) > 50 and any(key.startswith("config ") for key in descriptions)
    swallowed = {name: text for name, text in descriptions.items() if re.search(r"<[A-Za-z][\w ]*>", text)}
    assert not swallowed, swallowed
