"""`sae-genomics`: the command line. Core commands (sql, validate) plus those that use the Dagster instance."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_genomics_core.cli import add_core_commands, add_dataset_options, dataset_options, run
from sae_genomics_core.config import HOME_ENV, MODEL_ENV, SNAPSHOTS_ENV, SOURCES_ENV, Environment, Home
from sae_genomics_core.data.h5ad import DatasetError, DatasetTables, ValidationReport
from sae_genomics_core.data.registry import (
    QUICK_SCAN_CELLS,
    DatasetNotRegistered,
    Registry,
    delete_dataset_rows,
)

DEMO_NAME = "pbmc68k"
DEMO_CELL_TYPE_KEY = "bulk_labels"


def _home() -> Home:
    from sae_genomics_dagster.instance import prepare_home

    return prepare_home(Home.from_env())


def _execute(
    job: object,
    partition_key: str | None,
    instance: object,
    run_config: dict | None = None,
    assets: Sequence[Any] | None = None,  # only these asset keys of the job (None: all)
) -> bool:
    from sae_genomics_dagster.instance import run_failure_messages
    from sae_genomics_dagster.run_health import interruption, prepare_in_process_run

    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}
    tags = prepare_in_process_run(instance)  # type: ignore[arg-type]
    if Environment.read().profile == "local":
        result = job.execute_in_process(  # type: ignore[attr-defined]
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            run_config=run_config,
            tags=tags,
            asset_selection=assets,
        )
    else:
        result = _execute_on_the_profiles_executor(job, partition_key, instance, run_config, tags, assets)
    if doing := interruption(result):  # Ctrl-C / SIGTERM stops the command, not just this run
        print(f"interrupted run {result.run_id} while {doing}; it is marked failed", file=sys.stderr)
        raise SystemExit(130)
    if not result.success:
        for message in run_failure_messages(result):
            print(f"error: {message}", file=sys.stderr)
        print(f"run {result.run_id} failed (history: `make ui`, then Runs)", file=sys.stderr)
        return False
    print(f"{partition_key or job.name}: run {result.run_id} succeeded")  # type: ignore[attr-defined]
    return True


def _execute_on_the_profiles_executor(
    job: Any, partition_key: Any, instance: Any, run_config: dict, tags: dict, assets: Sequence[Any] | None
) -> Any:
    """Run `job` with the profile's executor (Celery, Kubernetes): its steps run elsewhere, so they rebuild
    the job from its code pointer, this module's definitions."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repository = ReconstructableRepository.for_module("sae_genomics_dagster.definitions", "defs")
    if partition_key is not None:
        tags = {**tags, **job.partitions_def.get_tags_for_partition_key(partition_key)}
    return dg.execute_job(
        repository.get_reconstructable_job(job.name),
        instance,
        run_config=run_config,
        tags=tags,
        asset_selection=assets,
    )


ONTOLOGY = "hpo_ontology"


def annotate_usage_error(mode: str, only: Sequence[str], files: Sequence[str]) -> str | None:
    """What is wrong with `annotate`'s arguments, checked before anything runs (else a run fails half-way)."""
    from sae_genomics_core.annotations.refresh import CLIENTS

    known = [*CLIENTS, ONTOLOGY]
    unknown = sorted(set(only) - set(known))
    if unknown:
        return f"unknown database(s) {', '.join(unknown)}; known: {', '.join(known)}"
    if mode != "file":
        return (
            f"--file is read only with --mode file (not --mode {mode}): add --mode file, or drop --file"
            if files
            else None
        )
    if len(only) != 1:
        given = f" (got --only {' '.join(only)})" if only else ""
        return f"--mode file reads one database's download at a time: pass --only DB --file PATH{given}"
    if not files:
        return f"--mode file --only {only[0]} needs the downloaded file: pass --file PATH"
    missing = [f for f in files if not Path(f).is_file()]
    return f"--file {', '.join(missing)}: no such file; check the path" if missing else None


def _annotate(home: Home, mode: str, only: Sequence[str] = (), files: Sequence[str] = ()) -> int:
    """Refresh gene_identifiers, then every annotation database (each its own run; one failing spares the rest)."""
    from sae_genomics_core.annotations.refresh import CLIENTS
    from sae_genomics_dagster.definitions import build_definitions
    from sae_genomics_dagster.instance import get_instance

    instance = get_instance(home)
    defs = build_definitions(home)
    failed = []
    from sae_genomics_core.annotations.store import read_table

    # --mode file refreshes one database: keep the identifiers there are, else take the bundled ones
    keep_identifiers = mode == "file" and read_table(home.warehouse, "gene_identifiers") is not None
    assets = [] if keep_identifiers else ["gene_identifiers"]
    # the HPO ontology goes with the HPO annotations, except when a user's HPO file is read (--file names
    # one download; `--only hpo_ontology --file hp.obo` refreshes the ontology from a file)
    targets = [ONTOLOGY if db == ONTOLOGY else f"annotations_{db}" for db in (only or CLIENTS)]
    if "annotations_hpo" in targets and ONTOLOGY not in targets and mode != "file":
        targets.append(ONTOLOGY)
    for asset in [*assets, *targets]:
        asset_mode = "snapshot" if mode == "file" and asset == "gene_identifiers" else mode
        asset_files = list(files) if asset_mode == "file" else []
        run_config = {"ops": {asset: {"config": {"mode": asset_mode, "files": asset_files}}}}
        if not _execute(defs.resolve_job_def(f"refresh_{asset}"), None, instance, run_config):
            if asset == "gene_identifiers":
                return 1
            failed.append(asset)
    if failed:
        print(f"not refreshed (previous tables kept): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _materialize(
    home: Home,
    name: str,
    sae_tokens: int | None = None,
    train_saes: bool = True,
    layers: list[int] | None = None,
) -> int:
    """Run the dataset pipeline, then train the SAE of every extracted layer, in-process on the home's instance."""
    import dagster as dg

    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_dagster.definitions import build_definitions
    from sae_genomics_dagster.instance import get_instance

    instance = get_instance(home)
    defs = build_definitions(home)
    model = {"resources": {"model": {"config": {"layers": layers}}}} if layers else {}
    if not _execute(defs.resolve_job_def("dataset_pipeline"), name, instance, model):
        return 1
    if not train_saes:
        return 0
    sae_config = {} if sae_tokens is None else {"training_tokens": sae_tokens}
    run_config = {"ops": {"sae_checkpoint": {"config": sae_config}}}
    sae_job = defs.resolve_job_def("sae_pipeline")
    # the pages come last, once the atlas has matched the new SAEs against the other layers and datasets
    before_pages = chosen_assets(defs, ["sae", "features", "effects", "enrichment"])["sae_pipeline"]
    layers_done = artefact_store(home).extracted_layers(name)
    for position, layer in enumerate(layers_done, 1):
        print(f"{name}: layer {layer} ({position} of {len(layers_done)})", flush=True)
        key = dg.MultiPartitionKey({"dataset": name, "layer": str(layer)})
        if not _execute(sae_job, key, instance, run_config, assets=before_pages):
            return 1
    if not _execute(defs.resolve_job_def("atlas"), None, instance):
        return 1
    return _materialize_assets(home, name, ["reports"], layers_done)


STAGE_JOBS = {"dataset": "dataset_pipeline", "dataset × layer": "sae_pipeline", "whole warehouse": "atlas"}


def chosen_assets(defs: Any, names: Sequence[str]) -> dict[str, list[Any]]:
    """Asset keys per job for `materialize --assets`: asset or group names, a trailing `+` adding
    everything downstream. Raises ValueError naming what is unknown or not run per dataset."""
    import dagster as dg

    graph = defs.resolve_asset_graph()
    keys = graph.materializable_asset_keys
    groups = {graph.get(key).group_name for key in keys}
    selection = dg.AssetSelection.assets()
    unknown = []
    for name in names:
        base = name.removesuffix("+")
        if base in groups:
            part = dg.AssetSelection.groups(base)
        elif dg.AssetKey(base) in keys:
            part = dg.AssetSelection.assets(base)
        else:
            unknown.append(name)
            continue
        selection |= part.downstream() if name.endswith("+") else part
    if unknown:
        known = ", ".join(sorted(groups))
        raise ValueError(f"unknown asset or group {', '.join(unknown)}; groups: {known} (or an asset name)")
    per_job: dict[str, list[Any]] = {}
    for key in sorted(selection.resolve(graph) & keys):
        job = STAGE_JOBS.get(_partitioning(graph.get(key).partitions_def))
        if job is None:
            raise ValueError(
                f"{key.to_user_string()} is not materialised per dataset (annotations: `sae-genomics annotate`)"
            )
        per_job.setdefault(job, []).append(key)
    return per_job


def _partitioning(partitions: Any) -> str:
    import dagster as dg

    if partitions is None:
        return "whole warehouse"
    return "dataset × layer" if isinstance(partitions, dg.MultiPartitionsDefinition) else "dataset"


def _materialize_assets(home: Home, name: str, names: Sequence[str], layers: list[int] | None) -> int:
    """Only the chosen assets of one dataset (each layer's for the per-layer ones), upstream read as stored."""
    import dagster as dg

    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_dagster.definitions import build_definitions
    from sae_genomics_dagster.instance import get_instance

    instance, defs = get_instance(home), build_definitions(home)
    try:
        per_job = chosen_assets(defs, names)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for job, keys in per_job.items():
        if job == "dataset_pipeline":
            partitions: list[Any] = [name]
        elif job == "sae_pipeline":
            chosen = layers or artefact_store(home).extracted_layers(name)
            partitions = [dg.MultiPartitionKey({"dataset": name, "layer": str(layer)}) for layer in chosen]
            if not partitions:
                print(
                    f"error: {name} has no extracted layer yet: materialise `activations` first",
                    file=sys.stderr,
                )
                return 2
        else:
            partitions = [None]
        for position, partition in enumerate(partitions, 1):
            if len(partitions) > 1:
                print(f"{partition} ({position} of {len(partitions)})", flush=True)
            if not _execute(defs.resolve_job_def(job), partition, instance, assets=keys):
                return 1
    return 0


def _register(home: Home, path: str, name: str | None, args: argparse.Namespace, source: str) -> int:
    """All-or-nothing: validate every cell and check the genes against the model vocab before writing the
    entry; a partition that cannot be added, or a run that finds no gene in the vocab after all (the vocab
    was unreadable here), undoes the registration."""
    from sae_genomics_dagster.definitions import build_definitions
    from sae_genomics_dagster.instance import add_dataset_partition, get_instance

    registry = Registry(home)
    quick = getattr(args, "quick", False)  # `demo` has no --quick: its file is small
    spec = build_definitions(home).resources["model"].spec
    registered_before = set(registry.names())
    try:
        entry, tables = registry.register(
            path,
            name,
            dataset_options(args),
            source=source,
            quick_scan_cells=QUICK_SCAN_CELLS if quick else None,
            model_spec=spec,
        )
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    is_new = entry.name not in registered_before and entry.name not in _partitions(home)
    try:
        add_dataset_partition(get_instance(home), entry.name)
    except BaseException:
        if is_new:
            registry.unregister(entry.name)
        raise
    _print_registration(entry.name, entry.path, tables.report)
    if args.no_run:
        return 0
    status = _materialize(home, entry.name, args.sae_tokens, not args.no_sae, args.layers)
    if status and is_new and tables.report.n_genes_in_vocab is None:  # the vocab was unreadable here
        return _undo_if_no_vocab(home, entry.name, tables, spec) or status
    if status and quick:
        print(
            f"the registration of {entry.name} stays (--quick); `sae-genomics unregister {entry.name}` "
            "removes it",
            file=sys.stderr,
        )
    return status


def _partitions(home: Home) -> set[str]:
    from sae_genomics_dagster.instance import get_instance
    from sae_genomics_dagster.partitions import dataset_partitions

    return set(get_instance(home).get_dynamic_partitions(dataset_partitions.name or "dataset"))


def _print_registration(name: str, path: Path, report: ValidationReport) -> None:
    print(
        f"registered {name}: {path} ({report.n_cells} cells × {report.n_genes} genes, "
        f"{report.matrix_source}, {report.value_kind})"
    )
    if report.cells_scanned < report.n_cells:
        print(
            f"  note: --quick validated the first {report.cells_scanned} of {report.n_cells} cells; the ingest "
            "run checks the rest and writes no rows if it finds a problem there, but this registration stays "
            f"until `sae-genomics unregister {name}`"
        )
    if report.vocab_check:
        print(f"  vocab: {report.vocab_check}")
    for warning in report.warnings:
        print(f"  note: {warning}")


def _undo_if_no_vocab(home: Home, name: str, tables: DatasetTables, spec: str) -> int | None:
    """After a failed run of a registration whose vocab check was deferred: if the model's vocab (now
    readable, e.g. downloaded by the run) holds none of the genes, remove the entry, the partition and
    the ingest rows (one transaction), and say so. None when there is nothing to undo."""
    from sae_genomics_core.data.vocab_check import vocab_coverage

    coverage = vocab_coverage(tables.genes, spec, home.warehouse)
    if not coverage.refused:
        return None
    deleted = _unregister_everywhere(home, name)
    problem, fix = coverage.problem()
    rows = ", ".join(f"{n} {table}" for table, n in deleted.items()) or "none"
    print(
        f"error: {tables.report.path}: {problem}.\n  fix: {fix}\n"
        f"registration of {name} undone: registry entry and dataset partition removed, warehouse rows "
        f"deleted ({rows}); activations, SAEs and other tables were not written",
        file=sys.stderr,
    )
    return 2


def _unregister_everywhere(home: Home, name: str) -> dict[str, int]:
    """Remove a dataset's registry entry, dynamic partition and ingest rows; rows deleted per table."""
    from sae_genomics_dagster.instance import get_instance
    from sae_genomics_dagster.partitions import dataset_partitions

    deleted = delete_dataset_rows(home.warehouse, name)
    instance = get_instance(home)
    if instance.has_dynamic_partition(dataset_partitions.name or "dataset", name):
        instance.delete_dynamic_partition(dataset_partitions.name or "dataset", name)
    Registry(home).unregister(name)
    return deleted


def _cmd_register(args: argparse.Namespace) -> int:
    from sae_genomics_core.data.formats import CONVERTED_SUBFOLDER, h5ad_for

    home = _home()
    # a 10x .h5 file or Matrix Market folder is registered as its .h5ad conversion in the home
    try:
        found = h5ad_for(args.path, home.root / CONVERTED_SUBFOLDER)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not found.converted:
        return _register(home, args.path, args.name, args, source="cli")
    done = "converted" if found.created else "reusing the conversion of"
    print(f"{done} {found.source} ({found.kind}) to {found.path}")
    try:
        return _register(home, str(found.path), args.name or found.name, args, source="cli")
    finally:  # a refused input leaves no conversion behind
        if found.created and Registry(home).find_by_path(found.path) is None:
            found.path.unlink(missing_ok=True)


def _cmd_unregister(args: argparse.Namespace) -> int:
    from sae_genomics_dagster.instance import get_instance
    from sae_genomics_dagster.partitions import dataset_partitions

    home = _home()
    try:
        Registry(home).unregister(args.name)
    except DatasetNotRegistered as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    instance = get_instance(home)
    if instance.has_dynamic_partition(dataset_partitions.name or "dataset", args.name):
        instance.delete_dynamic_partition(dataset_partitions.name or "dataset", args.name)
    print(f"unregistered {args.name} (its warehouse rows stay until overwritten)")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    registry = Registry(_home())
    for name in registry.names():
        entry = registry.get(name)
        print(f"{name}\t{entry.path}\t{entry.source}\t{entry.registered_at}")
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    home = _home()
    try:
        Registry(home).get(args.dataset)
    except DatasetNotRegistered as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.assets:
        return _materialize_assets(home, args.dataset, args.assets, args.layers)
    return _materialize(home, args.dataset, args.sae_tokens, not args.no_sae, args.layers)


def demo_source_file() -> Path:
    """scanpy's bundled pbmc68k_reduced (700 cells; .raw holds 765 genes, log1p)."""
    import importlib.util

    spec = importlib.util.find_spec("scanpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scanpy is not installed; run `make demo`, which installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "10x_pbmc68k_reduced.h5ad"


def _cmd_demo(args: argparse.Namespace) -> int:
    home = _home()
    target = home.root / "demo" / f"{DEMO_NAME}.h5ad"
    target.parent.mkdir(parents=True, exist_ok=True)
    source = demo_source_file()
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    args.cell_type_key = args.cell_type_key or DEMO_CELL_TYPE_KEY
    if not args.no_run:
        # the offline demo annotates genes from the bundled snapshots (external/snapshots)
        status = _annotate(home, "snapshot")
        if status:
            return status
    return _register(home, str(target), DEMO_NAME, args, source="demo")


def _cmd_annotate(args: argparse.Namespace) -> int:
    if problem := annotate_usage_error(args.mode, args.only, args.file):
        print(f"error: {problem}", file=sys.stderr)  # before _home(): a refused command creates nothing
        return 2
    return _annotate(_home(), args.mode, args.only, args.file)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sae_genomics_core.doctor import diagnose

    environment = Environment.read()
    print(f"profile: {environment.profile}")
    findings = diagnose(_home(), environment)
    for finding in findings:
        print(f"{'ok ' if finding.ok else 'MISSING'} {finding.check}: {finding.detail}")
        if not finding.ok:
            print(f"        fix: {finding.fix}")
    return 0 if all(finding.ok for finding in findings) else 1


def _cmd_init(args: argparse.Namespace) -> int:
    home = _home()
    print(f"SAE_GENOMICS_HOME={home.root}\nDAGSTER_HOME={home.dagster_home}")
    return 0


def ui_launch(host: str, port: int) -> tuple[list[str], Path, dict[str, str]]:
    """The `dagster dev` command, working folder and environment of `sae-genomics ui`, with the home prepared.

    `_home()` creates $DAGSTER_HOME and installs dagster.yaml there. `dagster dev` still warns that
    dagster.yaml "will not be used" whenever its working folder holds one and is not DAGSTER_HOME (as
    the repository root, where `make ui` runs, does), so it starts in DAGSTER_HOME itself; the paths
    the environment gives relative to the caller's folder are made absolute first.
    """
    home = _home()
    command = [
        sys.executable,
        "-m",
        "sae_genomics_dagster.dev",  # `dagster`, without the `dg dev` supersession notice
        "dev",
        "-m",
        "sae_genomics_dagster.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    env = {**os.environ, "DAGSTER_HOME": str(home.dagster_home), HOME_ENV: str(home.root)}
    for name in (SOURCES_ENV, SNAPSHOTS_ENV):
        if env.get(name):
            env[name] = str(Path(env[name]).expanduser().resolve())
    model = env.get(MODEL_ENV, "")
    if model.startswith("dir:"):
        env[MODEL_ENV] = f"dir:{Path(model.removeprefix('dir:')).expanduser().resolve()}"
    return command, home.dagster_home, env


def _cmd_ui(args: argparse.Namespace) -> int:
    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_core.viz.serve import serve_in_background

    command, folder, env = ui_launch(args.host, args.port)
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={env['DAGSTER_HOME']})")
    pages_url = Environment.read().pages_url
    try:  # the feature pages' links in the UI point here
        serve_in_background(artefact_store(_home()).pages_root(), pages_url)
        print(f"feature pages on {pages_url}")
    except OSError as error:
        print(
            f"note: feature pages not served on {pages_url} ({error}); set $SAE_GENOMICS_PAGES_URL",
            file=sys.stderr,
        )
    return subprocess.call(command, cwd=folder, env=env)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-sae", action="store_true", help="stop after the activations; train SAEs later")
    parser.add_argument(
        "--sae-tokens", type=int, help="training tokens per SAE (default: the asset's config)"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="L",
        help="extract and train only these layers (default: the model resource's, all layers)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-genomics",
        description="Sparse-autoencoder features of the tahoe-x1 single-cell model, as a Dagster asset graph. "
        "State lives in $SAE_GENOMICS_HOME (default ./.sae-genomics).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_core_commands(commands)
    _add_dataset_commands(commands)
    _add_annotate_command(commands)

    init = commands.add_parser("init", help="create the home and install the Dagster instance config")
    init.set_defaults(handler=_cmd_init)

    doctor = commands.add_parser("doctor", help="check the services of the profile ($SAE_GENOMICS_PROFILE)")
    doctor.set_defaults(handler=_cmd_doctor)

    ui = commands.add_parser("ui", help="start `dagster dev` (webserver and daemon) on the home")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_cmd_ui)
    return parser


def _add_dataset_commands(commands: Any) -> None:
    """register, unregister, datasets, materialize and demo."""
    register = commands.add_parser("register", help="register an .h5ad as a dataset partition and ingest it")
    register.add_argument("path")
    register.add_argument("--name", help="dataset key (default: the file stem, sanitised)")
    add_dataset_options(register)
    register.add_argument("--no-run", action="store_true", help="only register; materialise later in the UI")
    register.add_argument(
        "--quick",
        action="store_true",
        help=f"validate only the first {QUICK_SCAN_CELLS:,} cells (for huge files): a problem in the rest "
        "fails the ingest run (no rows written) but leaves the registration, to be removed with unregister",
    )
    _add_run_options(register)
    register.set_defaults(handler=_cmd_register)

    unregister = commands.add_parser("unregister", help="remove a dataset from the registry and partitions")
    unregister.add_argument("name")
    unregister.set_defaults(handler=_cmd_unregister)

    datasets = commands.add_parser("datasets", help="list registered datasets")
    datasets.set_defaults(handler=_cmd_datasets)

    materialize = commands.add_parser(
        "materialize",
        help="materialise a registered dataset's assets in-process (all of them, or --assets)",
    )
    materialize.add_argument("dataset")
    materialize.add_argument(
        "--assets",
        nargs="+",
        metavar="NAME",
        help="only these assets or groups (e.g. enrichment, feature_pages, reports), reading what is upstream "
        "as stored; NAME+ adds everything downstream (enrichment+ = enrichment, baselines, pages)",
    )
    _add_run_options(materialize)
    materialize.set_defaults(handler=_cmd_materialize)

    demo = commands.add_parser(
        "demo", help=f"register scanpy's bundled pbmc68k_reduced as '{DEMO_NAME}' and run it"
    )
    add_dataset_options(demo)
    demo.add_argument("--no-run", action="store_true", help="only register")
    _add_run_options(demo)
    demo.set_defaults(handler=_cmd_demo)


def _add_annotate_command(commands: Any) -> None:
    annotate = commands.add_parser(
        "annotate",
        help="refresh gene_identifiers and the annotation databases now (as their schedules would)",
    )
    annotate.add_argument("--mode", choices=["live", "file", "snapshot"], default="live")
    # nargs="+": a bare --only is a mistake, not "everything"
    annotate.add_argument("--only", nargs="+", default=[], metavar="DB", help="only these databases")
    annotate.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="with --mode file and one --only DB: the downloaded file (repeat for several)",
    )
    annotate.set_defaults(handler=_cmd_annotate)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
