"""The core commands of `sae-genomics` (no Dagster): `sql`, `validate` and `steer`.

The console script (sae_genomics_dagster.cli) adds the commands that need the Dagster instance.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import (
    MATRIX_CHOICES,
    NO_SAMPLE_KEY,
    SAMPLE_KEY_CANDIDATES,
    DatasetError,
    DatasetOptions,
    inspect_h5ad,
)
from sae_genomics_core.warehouse.sql import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    FORMATS,
    SqlRefused,
    error_text,
    format_frame,
    query_warehouse,
    too_many_rows,
)


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ensembl-column", help="var column with Ensembl gene ids ('index' for var_names); default: detect"
    )
    parser.add_argument(
        "--symbol-column", help="var column with gene symbols ('index' for var_names); default: detect"
    )
    parser.add_argument("--cell-type-key", help="obs column with cell types; default: detect")
    parser.add_argument(
        "--sample-key",
        help="obs column with the sample or donor of each cell (the unit of pseudobulk tests); default: "
        f"detect one of {', '.join(sorted(SAMPLE_KEY_CANDIDATES))}; '{NO_SAMPLE_KEY}' for no such column",
    )
    parser.add_argument(
        "--matrix",
        default="auto",
        help=f"matrix to read: {MATRIX_CHOICES} (default auto: counts layer > raw > X)",
    )


def dataset_options(args: argparse.Namespace) -> DatasetOptions:
    return DatasetOptions(
        ensembl_column=args.ensembl_column,
        symbol_column=args.symbol_column,
        cell_type_key=args.cell_type_key,
        sample_key=args.sample_key,
        matrix=args.matrix,
    )


def add_core_commands(commands: argparse._SubParsersAction) -> None:
    sql = commands.add_parser("sql", help="run a read-only SQL query on the warehouse")
    sql.add_argument("query", help="e.g. \"select count(*) from cells where dataset = 'pbmc68k'\"")
    sql.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    sql.add_argument(
        "--timeout",
        type=_non_negative(float),
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"stop the query after this long (default: {DEFAULT_TIMEOUT_S:g}; 0 = no limit)",
    )
    sql.add_argument(
        "--max-rows",
        type=_non_negative(int),
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help=f"print at most N rows and say when the result was cut (default: {DEFAULT_MAX_ROWS}; 0 = no limit)",
    )
    sql.set_defaults(handler=_sql)

    validate = commands.add_parser(
        "validate",
        help="check an .h5ad file (or a 10x .h5 file or Matrix Market folder) and print its validation report",
    )
    validate.add_argument("path")
    add_dataset_options(validate)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(handler=_validate)
    _add_steer_command(commands)
    _add_export_command(commands)
    pages = commands.add_parser(
        "pages", help="serve the feature pages over http (the links in the Dagster UI point here)"
    )
    pages.add_argument(
        "--url", help="where to serve (default: $SAE_GENOMICS_PAGES_URL or http://127.0.0.1:3001)"
    )
    pages.set_defaults(handler=_serve_pages)


def _serve_pages(args: argparse.Namespace) -> int:
    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_core.config import Environment
    from sae_genomics_core.viz.serve import pages_server

    url = args.url or Environment.read().pages_url
    root = artefact_store(Home.from_env()).pages_root()
    try:
        server = pages_server(root, url)
    except OSError as error:
        print(f"error: cannot serve on {url}: {error}; pass another --url", file=sys.stderr)
        return 2
    print(
        f"feature pages of {root} on {url.rstrip('/')}/<dataset>/ (a layer switcher inside; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _add_steer_command(commands: argparse._SubParsersAction) -> None:
    from sae_genomics_core.sae.settings import EffectSettings

    steer = commands.add_parser(
        "steer",
        help="steer an SAE feature and show what tahoe-x1 then predicts; or, with --source and --target, find "
        "the features that move one cell type toward another",
    )
    steer.add_argument("--dataset", required=True)
    steer.add_argument("--layer", type=int, required=True)
    steer.add_argument("--feature", type=int, help="the feature to steer")
    steer.add_argument(
        "--strength",
        type=float,
        default=2.0,
        help="× the feature's mean activation where it fires (default 2)",
    )
    steer.add_argument("--source", help="contrastive: the cell type to steer")
    steer.add_argument("--target", help="contrastive: the cell type to move toward")
    steer.add_argument(
        "--cells",
        type=int,
        default=EffectSettings().evaluated_cells,
        help="held-out cells to evaluate at most",
    )
    steer.add_argument(
        "--top", type=int, default=10, help="genes per direction, features or cells to show (default 10)"
    )
    steer.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (default: table; csv and json print one table)",
    )
    steer.add_argument(
        "--show",
        choices=("genes", "cell-types", "cells"),
        help="with --feature: print only this table (default: all three as tables; genes in csv and json)",
    )
    steer.set_defaults(handler=_steer)


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write a copy of a dataset's .h5ad with each cell's SAE feature activations in "
        "obsm['X_sae_L<layer>'] (sparse cells × features), for scanpy or cellxgene",
    )
    export.add_argument("dataset", help="a registered dataset (`sae-genomics datasets`)")
    export.add_argument("--out", required=True, metavar="FILE.h5ad", help="the .h5ad to write")
    export.add_argument(
        "--layers", type=int, nargs="+", metavar="L", help="these layers (default: every layer with an SAE)"
    )
    export.add_argument(
        "--statistic",
        choices=("max", "mean"),
        default="max",
        help="a cell's value of a feature: its max over the cell's tokens (default) or its mean over them",
    )
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_core.config import sae_device
    from sae_genomics_core.data.registry import Registry
    from sae_genomics_core.errors import SaeGenomicsError
    from sae_genomics_core.features.settings import AssociationSettings
    from sae_genomics_core.pipeline.export import export_activations, obsm_key

    home = Home.from_env()
    try:
        source = Registry(home).get(args.dataset).path
        done = export_activations(
            args.dataset,
            args.layers,
            artefact_store(home),
            source,
            args.out,
            args.statistic,
            AssociationSettings(device=sae_device()),
        )
    except SaeGenomicsError as error:
        print(f"error: {error.explain()}", file=sys.stderr)
        return 2
    print(f"wrote {done.path}: a copy of {source} ({done.n_cells} cells) with")
    for layer in done.layers:
        active = int((layer.matrix.getnnz(axis=1) > 0).sum())
        print(
            f"  obsm['{obsm_key(layer.layer)}']: {layer.matrix.shape[1]} features, {args.statistic} per cell, "
            f"{layer.matrix.nnz} nonzero values, {active} cells with a firing feature "
            f"(checkpoint {layer.metadata['checkpoint_id']})"
        )
    print("  uns['sae_genomics'] describes each layer (feature_ids, checkpoint_id, statistic, model_id)")
    return 0


def _non_negative(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not 0 <= value < float("inf"):  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ≥ 0 (0 = no limit)")
        return value

    return parse


def _sql(args: argparse.Namespace) -> int:
    try:
        result = query_warehouse(
            Home.from_env().warehouse, args.query, timeout_s=args.timeout, max_rows=args.max_rows
        )
    except (SqlRefused, FileNotFoundError, RuntimeError) as error:  # incl. SqlTimedOut
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # duckdb's own errors (unknown table, syntax) are the user's to fix
        print(f"error: {error_text(error)}", file=sys.stderr)
        return 1
    sys.stdout.write(format_frame(result.frame, args.format))
    if result.truncated:
        print(f"note: {too_many_rows(result.max_rows)}", file=sys.stderr)
    return 0


def _steer(args: argparse.Namespace) -> int:
    from sae_genomics_core.errors import SaeGenomicsError

    if (args.feature is None) == (args.source is None or args.target is None):
        print("error: give --feature, or --source and --target (contrastive)", file=sys.stderr)
        return 2
    try:
        tables = _steering_tables(args)
    except SaeGenomicsError as error:
        print(f"error: {error.explain()}", file=sys.stderr)
        return 2
    show = args.show or (None if args.format == "table" else "genes")
    for (name, title), frame in tables.items():
        if show is not None and args.feature is not None and name != show:
            continue
        if args.format == "table":
            print(f"\n{title}")
        sys.stdout.write(format_frame(frame, args.format))
    return 0


def _steering_tables(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """(name, title) -> table."""
    from dataclasses import replace

    from sae_genomics_core.annotations.store import read_table
    from sae_genomics_core.artefacts import artefact_store
    from sae_genomics_core.config import Environment
    from sae_genomics_core.model.choice import ModelChoice
    from sae_genomics_core.pipeline.effects import contrast_features, steer_feature
    from sae_genomics_core.pipeline.sae import FidelityModel
    from sae_genomics_core.sae.settings import EffectSettings

    home = Home.from_env()
    model = FidelityModel(ModelChoice(spec=Environment.read().model), home.warehouse)
    settings = replace(EffectSettings(), evaluated_cells=args.cells, top_genes=args.top)
    cells = _dataset_rows(read_table(home.warehouse, "cells"), args.dataset, "cells")
    store, where = artefact_store(home), (args.dataset, args.layer)
    if args.feature is None:
        found = contrast_features(
            *where, store, cells, model, (args.source, args.target), args.strength, settings
        )
        title = f"features moving {args.source} toward {args.target} (strength {args.strength:g})"
        return {("features", title): found.head(args.top)}
    genes = _dataset_rows(read_table(home.warehouse, "genes"), args.dataset, "genes")
    steering = steer_feature(*where, store, cells, genes, model, args.feature, args.strength, settings)
    return {
        (
            "genes",
            f"feature {args.feature} at strength {args.strength:g}: predicted expression",
        ): steering.genes,
        (
            "cell-types",
            "cell embedding: change of cosine similarity to each type's centroid",
        ): steering.cell_types,
        ("cells", f"cells (the first {args.top})"): steering.cells.head(args.top),
    }


def _dataset_rows(table: Any, dataset: str, name: str) -> Any:
    from sae_genomics_core.errors import InputError

    rows = None if table is None else table.filter(dataset=dataset)
    if rows is None or rows.height == 0:
        raise InputError(
            f"the warehouse has no {name} of dataset {dataset!r}", fix="register and materialise it"
        )
    return rows


def _validate(args: argparse.Namespace) -> int:
    from sae_genomics_core.data.formats import readable_h5ad

    try:
        # a 10x input is converted into a temporary folder for the check; `register` keeps its conversion
        with readable_h5ad(args.path) as found:
            report = inspect_h5ad(found.path, dataset_options(args)).report
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if found.converted:
        report.path = str(found.source)
        report.warnings.insert(0, f"read as a {found.kind}; `register` converts it to an .h5ad once")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-genomics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_core_commands(commands)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    return int(args.handler(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
