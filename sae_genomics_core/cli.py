"""The core commands of `sae-genomics` (no Dagster): `sql` and `validate`.

The console script (sae_genomics_dagster.cli) adds the commands that need the Dagster instance.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

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

    validate = commands.add_parser("validate", help="check an .h5ad file and print its validation report")
    validate.add_argument("path")
    add_dataset_options(validate)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(handler=_validate)


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


def _validate(args: argparse.Namespace) -> int:
    try:
        report = inspect_h5ad(args.path, dataset_options(args)).report
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
