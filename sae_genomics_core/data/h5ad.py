"""Validate an .h5ad file and derive the `cells` and `genes` tables in one streamed pass.

The matrix is read in row chunks through anndata's backed mode, so a dataset larger than memory
can be validated. Every problem a user can cause becomes a `Problem` with a fix; all problems of a
file are reported together in one `DatasetError`, and nothing is written by this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import polars as pl
import scipy.sparse as sp

from sae_genomics_core.errors import SaeGenomicsError

ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
ENSEMBL_COLUMN_CANDIDATES = (
    "gene_ids",
    "gene_id",
    "ensembl_id",
    "ensembl_ids",
    "ensembl",
    "gene_ensembl_id",
    "feature_id",
)
SYMBOL_COLUMN_CANDIDATES = (
    "feature_name",
    "gene_symbols",
    "gene_symbol",
    "gene_name",
    "gene_names",
    "symbol",
)
CELL_TYPE_KEY_CANDIDATES = (
    "cell_type",
    "celltype",
    "cell_types",
    "CellType",
    "cell_type_label",
    "cell_ontology_class",
    "annotation",
)
# Obs columns that name the sample or donor a cell came from (the unit of replication for pseudobulk).
# Only names that cannot mean anything else: `batch` is left out (a sequencing batch may pool donors).
SAMPLE_KEY_CANDIDATES = frozenset(
    {
        "sample",
        "sample_id",
        "donor",
        "donor_id",
        "individual",
        "patient",
        "patient_id",
        "subject",
        "subject_id",
    }
)
NO_SAMPLE_KEY = "none"  # --sample-key none: the dataset has no sample column (cells are the unit)
# A log1p value above this would mean more than 4.8e8 counts in one entry: such data is not log1p.
LOG1P_MAX_VALUE = 20.0
# Share of a column's non-empty values that must look like Ensembl ids for automatic detection.
ENSEMBL_DETECT_SHARE = 0.9
MATRIX_CHOICES = "auto, X, raw or layers/<name>"
# Fewer measured genes than this is not a whole transcriptome: 10x and Smart-seq matrices keep well over
# 10,000 genes even after dropping genes seen in under 3 cells, and tahoe-x1 trained on whole ones.
FEW_GENES = 5_000
# var columns and uns keys that scanpy/Seurat write when highly variable genes were selected
HVG_VAR_COLUMNS = ("highly_variable", "highly_variable_rank", "dispersions_norm", "variances_norm")
HVG_UNS_KEYS = ("hvg",)
# A cell-type column with more distinct values than this, or distinct in more than this share of the
# cells (once it has more than MIN_DISTINCT_FOR_SHARE values), holds ids rather than labels.
MAX_CELL_TYPES = 500
MAX_CELL_TYPE_SHARE = 0.5
MIN_DISTINCT_FOR_SHARE = 20


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset. `None` means: detect it."""

    ensembl_column: str | None = None  # var column holding Ensembl ids; "index" for var_names
    symbol_column: str | None = None  # var column holding gene symbols; "index" for var_names
    cell_type_key: str | None = None  # obs column holding cell types
    sample_key: str | None = None  # obs column holding the sample/donor; "none" for no such column
    matrix: str = "auto"  # auto (layers['counts'] > .raw > X), X, raw or layers/<name>

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DatasetOptions:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Problem:
    problem: str
    fix: str


class DatasetError(SaeGenomicsError, ValueError):
    """One or more problems with an input file; the message names the file, each problem and its fix."""

    def __init__(self, path: Path | str, problems: list[Problem]):
        self.path = Path(path)
        self.problems = problems
        lines = [f"{self.path}: {len(problems)} problem(s) found; nothing was written."]
        for item in problems:
            lines.append(f"- {item.problem}\n  fix: {item.fix}")
        super().__init__("\n".join(lines))


@dataclass
class ValidationReport:
    path: str
    matrix_source: str
    n_cells: int
    n_genes: int
    value_kind: str  # raw_counts | log1p | normalised
    max_value: float
    gene_id_source: str  # e.g. "ensembl:gene_ids" or "symbol:index"
    symbol_source: str | None
    n_genes_with_ensembl: int
    n_empty_cells: int
    n_duplicate_cell_ids: int
    cell_type_key: str | None
    n_cell_types: int
    cells_scanned: int
    looks_like_gene_subset: bool = False
    n_stored_zeros: int = 0  # explicitly stored zeros in the scanned rows (tahoe-x1 makes them tokens)
    sample_key: str | None = None
    n_samples: int = 0
    # set at registration: genes in the model vocab (None: not checked) and the check in words
    n_genes_in_vocab: int | None = None
    vocab_check: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        # the vocab fields are set at registration only (validation alone knows no model)
        unset = {k for k in ("n_genes_in_vocab", "vocab_check") if getattr(self, k) is None}
        rows = [(k, v) for k, v in self.to_dict().items() if k != "warnings" and k not in unset]
        text = "| check | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        if self.warnings:
            text += "\n\n**Warnings**\n\n" + "\n".join(f"- {w}" for w in self.warnings)
        return text


@dataclass
class DatasetTables:
    """The validated dataset as tables (without the `dataset` column, which the caller owns)."""

    cells: pl.DataFrame
    genes: pl.DataFrame
    report: ValidationReport


def file_checksum(path: Path | str, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def strip_ensembl_version(identifier: str) -> str:
    return re.sub(r"\.\d+$", "", identifier)


def inspect_h5ad(
    path: Path | str,
    options: DatasetOptions | None = None,
    *,
    max_cells: int | None = None,
    chunk_cells: int = 4096,
) -> DatasetTables:
    """Validate `path` and build the cells/genes tables; raise `DatasetError` listing every problem.

    `max_cells` limits the scan of the matrix (a quick check at registration); the full scan is
    what the `cells` and `genes` assets run.
    """
    path = Path(path)
    options = options or DatasetOptions()
    problems: list[Problem] = []
    notes: list[str] = []

    scan = _read_dataset(path, options, problems, notes, max_cells=max_cells, chunk_cells=chunk_cells)
    value_kind = _check_values(scan.stats, scan.source, problems, notes, uns_log1p=scan.uns_log1p)
    n_empty = _check_empty_cells(scan.stats, scan.source, scan.scan_rows, problems, notes)
    notes.extend(_few_genes_per_cell_note(scan.stats.genes_per_cell[: scan.scan_rows]))
    if problems:
        raise DatasetError(path, problems)

    n_duplicate_cells = int(scan.cell_ids.duplicated().sum())
    if n_duplicate_cells:
        notes.append(f"{n_duplicate_cells} cell ids are duplicated; cells are keyed by cell_index.")
    genes = scan.genes.with_columns(
        pl.Series("n_cells_expressed", scan.stats.cells_per_gene.astype(np.int64))
    )
    report = ValidationReport(
        path=str(path),
        matrix_source=scan.source,
        n_cells=scan.n_cells,
        n_genes=scan.n_genes,
        value_kind=value_kind,
        max_value=float(scan.stats.max_value),
        gene_id_source=scan.gene_id_source,
        symbol_source=scan.symbol_source,
        n_genes_with_ensembl=int(genes["ensembl_id"].is_not_null().sum()),
        n_empty_cells=n_empty,
        n_duplicate_cell_ids=n_duplicate_cells,
        cell_type_key=scan.cell_type_key,
        n_cell_types=int(pl.Series(scan.cell_types, dtype=pl.String).drop_nulls().n_unique()),
        cells_scanned=scan.scan_rows,
        looks_like_gene_subset=scan.looks_like_gene_subset,
        n_stored_zeros=scan.stats.n_stored_zeros,
        sample_key=scan.sample_key,
        n_samples=int(pl.Series(scan.samples, dtype=pl.String).drop_nulls().n_unique()),
        warnings=notes,
    )
    return DatasetTables(cells=_cell_table(scan, value_kind), genes=genes, report=report)


@dataclass
class _Scan:
    """What one pass over an open .h5ad yields, before the checks of its values."""

    source: str
    n_cells: int
    n_genes: int
    genes: pl.DataFrame
    gene_id_source: str
    symbol_source: str | None
    looks_like_gene_subset: bool
    cell_ids: pd.Index
    cell_types: list[str | None]
    cell_type_key: str | None
    samples: list[str | None]
    sample_key: str | None
    scan_rows: int
    stats: _MatrixStats
    uns_log1p: bool


def _read_dataset(
    path: Path,
    options: DatasetOptions,
    problems: list[Problem],
    notes: list[str],
    *,
    max_cells: int | None,
    chunk_cells: int,
) -> _Scan:
    """Choose the matrix, read genes, cell types and samples, and stream the matrix once."""
    adata = _open_backed(path)
    try:
        matrix, var, source = _select_matrix(adata, path, options)
        n_cells, n_genes = int(adata.n_obs), int(var.shape[0])
        _require_matrix(path, matrix, source, n_cells, n_genes)
        genes, gene_id_source, symbol_source = _gene_table(var, options, problems, notes)
        subset_note = _gene_subset_note(adata, var, source, n_genes)
        if subset_note is not None:
            notes.append(subset_note)
        cell_types, cell_type_key = _cell_types(adata.obs, options, problems, notes)
        samples, sample_key = _samples(adata.obs, options, problems, notes)
        scan_rows = n_cells if max_cells is None else min(n_cells, max_cells)
        stats = _scan_readable(path, matrix, source, scan_rows, n_genes, chunk_cells)
        uns_log1p = "log1p" in adata.uns
    finally:
        _close(adata)
    return _Scan(
        source=source,
        n_cells=n_cells,
        n_genes=n_genes,
        genes=genes,
        gene_id_source=gene_id_source,
        symbol_source=symbol_source,
        looks_like_gene_subset=subset_note is not None,
        cell_ids=pd.Index(adata.obs_names.astype(str)),  # obs stays in memory once the file is closed
        cell_types=cell_types,
        cell_type_key=cell_type_key,
        samples=samples,
        sample_key=sample_key,
        scan_rows=scan_rows,
        stats=stats,
        uns_log1p=uns_log1p,
    )


def _require_matrix(path: Path, matrix: Any, source: str, n_cells: int, n_genes: int) -> None:
    """A missing or empty matrix stops validation at once: nothing else can be checked."""
    if matrix is None:
        raise DatasetError(
            path,
            [
                Problem(
                    f"the file has no matrix {source}",
                    f"write the counts into it, or choose another with --matrix ({MATRIX_CHOICES})",
                )
            ],
        )
    if n_cells == 0 or n_genes == 0:
        raise DatasetError(
            path,
            [
                Problem(
                    f"the matrix {source} is empty ({n_cells} cells × {n_genes} genes)",
                    "export a dataset that has cells and genes",
                )
            ],
        )


def _scan_readable(
    path: Path, matrix: Any, source: str, scan_rows: int, n_genes: int, chunk_cells: int
) -> _MatrixStats:
    try:
        return _scan_matrix(matrix, scan_rows, n_genes, chunk_cells)
    except (OSError, KeyError, ValueError) as error:  # truncated or corrupt data inside a readable file
        raise DatasetError(
            path,
            [
                Problem(
                    f"{source} cannot be read ({type(error).__name__}: {error})",
                    "re-export the file with adata.write_h5ad(...)",
                )
            ],
        ) from error


def _check_values(
    stats: _MatrixStats, source: str, problems: list[Problem], notes: list[str], *, uns_log1p: bool
) -> str:
    """Problems with the values (non-finite, negative), notes on what they look like; the value kind."""
    if stats.n_nonfinite:
        problems.append(
            Problem(
                f"{source} contains {stats.n_nonfinite} non-finite values (NaN or infinity)",
                "replace them (e.g. adata.X = np.nan_to_num(adata.X)) or choose another matrix with "
                f"--matrix ({MATRIX_CHOICES})",
            )
        )
    if stats.n_negative:
        problems.append(
            Problem(
                f"{source} contains {stats.n_negative} negative values (min {stats.min_value:.3g}); it looks "
                "scaled or centred, and tahoe-x1 needs counts",
                "store raw counts in layers['counts'] or .raw (they are preferred automatically), or choose "
                f"them with --matrix ({MATRIX_CHOICES})",
            )
        )

    value_kind = _value_kind(stats, source, uns_log1p=uns_log1p)
    if value_kind == "log1p":
        notes.append(
            f"{source} looks log1p-normalised (non-integer, max {stats.max_value:.3g}), not raw counts; "
            "tahoe-x1's per-cell rank binning is unchanged by log1p, and total_counts are expm1 sums. "
            "Provide raw counts in layers['counts'] for exact totals."
        )
    elif value_kind == "normalised":
        notes.append(
            f"{source} holds non-integer values that are not log1p (max {stats.max_value:.3g}); "
            "rank binning still works, but raw counts in layers['counts'] are preferred."
        )

    if stats.n_stored_zeros:
        notes.append(
            f"{source} stores {stats.n_stored_zeros} explicit zeros; tahoe-x1 makes every stored entry a "
            "token, so they become tokens with expression bin 1, as upstream. If they are artefacts of "
            "an export, remove them (adata.X.eliminate_zeros()) and register the file again."
        )
    return value_kind


def _check_empty_cells(
    stats: _MatrixStats, source: str, scan_rows: int, problems: list[Problem], notes: list[str]
) -> int:
    """Cells with no expressed gene: a problem when every scanned cell is empty, else a note; their count."""
    n_empty = int((stats.genes_per_cell[:scan_rows] == 0).sum())
    if n_empty == scan_rows:
        problems.append(
            Problem(
                f"all {scan_rows} scanned cells of {source} have no expressed gene",
                f"check that the file holds expression values, or choose another matrix with --matrix ({MATRIX_CHOICES})",
            )
        )
    elif n_empty:
        notes.append(
            f"{n_empty} cells have no expressed gene; they are kept in `cells` and skipped by the model."
        )
    return n_empty


def _cell_table(scan: _Scan, value_kind: str) -> pl.DataFrame:
    totals = scan.stats.expm1_per_cell if value_kind == "log1p" else scan.stats.sum_per_cell
    return pl.DataFrame(
        {
            "cell_index": np.arange(scan.n_cells, dtype=np.int64),
            "cell_id": scan.cell_ids.to_numpy(dtype=object),
            "cell_type": scan.cell_types,
            "n_genes_expressed": scan.stats.genes_per_cell.astype(np.int32),
            "total_counts": totals.astype(np.float64),
            "sample": scan.samples,
        },
        schema_overrides={"cell_id": pl.String, "cell_type": pl.String, "sample": pl.String},
    )


# -- opening and choosing the matrix ---------------------------------------------------------------


@dataclass
class OpenMatrix:
    """The chosen matrix of an open .h5ad, readable in row chunks, with its genes."""

    matrix: Any
    source: str
    n_cells: int
    genes: pl.DataFrame  # gene_index, feature_name, ensembl_id, symbol (as in the `genes` table)

    def row_chunks(self, chunk_cells: int, start: int = 0) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, CSR block) pairs from `start` to the end; explicitly stored zeros are kept (tahoe-x1
        makes them tokens), a dense matrix stores none."""
        for first in range(start, self.n_cells, chunk_cells):
            block = self.matrix[first : min(first + chunk_cells, self.n_cells)]
            yield first, block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


@contextlib.contextmanager
def open_matrix(path: Path | str, options: DatasetOptions | None = None) -> Iterator[OpenMatrix]:
    """Open a registered dataset's matrix for streaming (the same choice of matrix and genes as validation)."""
    path = Path(path)
    options = options or DatasetOptions()
    adata = _open_backed(path)
    try:
        matrix, var, source = _select_matrix(adata, path, options)
        problems: list[Problem] = []
        genes, _, _ = _gene_table(var, options, problems, [])
        if problems:
            raise DatasetError(path, problems)
        yield OpenMatrix(matrix=matrix, source=source, n_cells=int(adata.n_obs), genes=genes)
    finally:
        _close(adata)


def _open_backed(path: Path) -> Any:
    import anndata as ad

    if not path.exists():
        raise DatasetError(
            path,
            [
                Problem(
                    "the file does not exist", "check the path (it is resolved from the current directory)"
                )
            ],
        )
    if path.suffix != ".h5ad":
        raise DatasetError(
            path,
            [
                Problem(
                    f"the file is not an .h5ad file (suffix '{path.suffix}')",
                    "convert it with anndata/scanpy and save it with adata.write_h5ad(...)",
                )
            ],
        )
    if not h5py.is_hdf5(path):
        raise DatasetError(
            path,
            [
                Problem(
                    "the file is not HDF5, so it cannot be an .h5ad",
                    "re-export it with adata.write_h5ad(...); zarr stores are not supported",
                )
            ],
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ad.read_h5ad(path, backed="r")
    except Exception as error:  # anndata raises many types for truncated or foreign HDF5 files
        raise DatasetError(
            path,
            [
                Problem(
                    f"the file cannot be read as AnnData ({type(error).__name__}: {error})",
                    "re-export it with adata.write_h5ad(...); a truncated copy must be copied again",
                )
            ],
        ) from error


def _close(adata: Any) -> None:
    # closing a half-opened file must not hide the real error
    with contextlib.suppress(Exception):
        adata.file.close()


def _select_matrix(adata: Any, path: Path, options: DatasetOptions) -> tuple[Any, pd.DataFrame, str]:
    choice = options.matrix
    layer_names = _layer_names(path)
    if choice == "auto":
        if "counts" in layer_names:
            choice = "layers/counts"
        elif adata.raw is not None:
            choice = "raw"
        else:
            choice = "X"
    if choice == "X":
        try:
            return adata.X, adata.var, "X"
        except KeyError as error:  # anndata reads X lazily in backed mode
            raise DatasetError(
                path,
                [
                    Problem(
                        "the file has no X matrix",
                        f"write the counts into X or a layer and choose it with --matrix ({MATRIX_CHOICES})",
                    )
                ],
            ) from error
    if choice == "raw":
        if adata.raw is None:
            raise DatasetError(
                path,
                [
                    Problem(
                        "--matrix raw was asked for but the file has no .raw",
                        f"choose one that exists: {_available(adata, layer_names)}",
                    )
                ],
            )
        return adata.raw.X, adata.raw.var, "raw.X"
    if choice.startswith("layers/"):
        name = choice.removeprefix("layers/")
        if name not in layer_names:
            raise DatasetError(
                path,
                [
                    Problem(
                        f"--matrix {choice}: the file has no layer '{name}'",
                        f"choose one that exists: {_available(adata, layer_names)}",
                    )
                ],
            )
        return _layer_matrix(adata, name), adata.var, f"layers['{name}']"
    raise DatasetError(path, [Problem(f"unknown --matrix '{choice}'", f"use {MATRIX_CHOICES}")])


def _layer_names(path: Path) -> list[str]:
    with h5py.File(path, "r") as handle:
        layers = handle.get("layers")
        return list(layers.keys()) if isinstance(layers, h5py.Group) else []


def _layer_matrix(adata: Any, name: str) -> Any:
    import anndata as ad

    element = adata.file._file["layers"][name]  # the backed file handle stays open while we scan
    return ad.io.sparse_dataset(element) if isinstance(element, h5py.Group) else element


def _available(adata: Any, layer_names: list[str]) -> str:
    options = ["X"] + (["raw"] if adata.raw is not None else []) + [f"layers/{n}" for n in layer_names]
    return ", ".join(options)


# -- genes ------------------------------------------------------------------------------------------

FEW_GENES_PER_CELL = 200  # scanpy's usual `min_genes`: below it a cell is usually dropped as empty


def _few_genes_per_cell_note(genes_per_cell: np.ndarray) -> list[str]:
    """A warning when the median cell expresses few genes: a cell's tokens are its expressed genes, so
    the model sees little of each cell and its expression bins are coarse."""
    expressed = genes_per_cell[genes_per_cell > 0]
    median = float(np.median(expressed)) if expressed.size else 0.0
    if not expressed.size or median >= FEW_GENES_PER_CELL:
        return []
    return [
        f"the median cell expresses {median:g} genes (under {FEW_GENES_PER_CELL}): the model sees one token "
        "per expressed gene, so each cell gives it little to go on and its rank-based expression bins are "
        "coarse. Check that the matrix holds all measured genes (not a panel or a filtered subset) and, for "
        "droplet data, that empty droplets were removed (scanpy: sc.pp.filter_cells(adata, min_genes=200))."
    ]


def _gene_subset_note(adata: Any, var: pd.DataFrame, source: str, n_genes: int) -> str | None:
    """A warning when the matrix looks like a gene subset (e.g. highly variable genes), else None.

    tahoe-x1 bins a cell's values by their rank among all of the cell's expressed genes, so a subset
    shifts every bin away from what the model saw in training. Evidence, any of: another matrix of the
    file has more genes; every gene is flagged highly variable; fewer than FEW_GENES genes (then HVG
    metadata, if any, is named as well).
    """
    # flags of X describe the chosen matrix when it has the same genes (e.g. .raw of an HVG-annotated X)
    flags = var if HVG_VAR_COLUMNS[0] in var.columns or len(adata.var) != n_genes else adata.var
    hvg_columns = [c for c in HVG_VAR_COLUMNS if c in flags.columns]
    all_hvg = "highly_variable" in flags.columns and bool(flags["highly_variable"].fillna(False).all())
    raw_genes = int(adata.raw.n_vars) if adata.raw is not None and source != "raw.X" else 0
    if raw_genes <= n_genes and not all_hvg and n_genes >= FEW_GENES:
        return None
    few = f" (under {FEW_GENES:,}; whole transcriptomes keep over 10,000)" if n_genes < FEW_GENES else ""
    evidence = [f"it has {n_genes} genes{few}"]
    if all_hvg:
        evidence.append("every gene is flagged var['highly_variable']")
    elif hvg_columns:
        evidence.append(f"var has highly-variable-gene columns ({', '.join(hvg_columns)})")
    evidence += [f"uns['{key}'] records a gene selection" for key in HVG_UNS_KEYS if key in adata.uns]
    if raw_genes > n_genes:
        fix = f"register the full matrix with --matrix raw (.raw holds {raw_genes} genes)"
    else:
        fix = (
            "this file holds no larger matrix: export all measured genes as raw counts (e.g. the AnnData "
            "before `adata = adata[:, adata.var.highly_variable]`, or keep them with "
            "`adata.layers['counts'] = adata.X.copy()` / `adata.raw = adata` before selecting genes) and "
            "register that file (layers['counts'] and .raw are read before X; --matrix chooses)"
        )
    return (
        f"{source} looks like a gene subset ({'; '.join(evidence)}). tahoe-x1 bins each cell's values by "
        "rank among all its expressed genes, so over a subset the expression bins differ from those the "
        f"model saw in training. To fix: {fix}."
    )


def _column_values(var: pd.DataFrame, column: str) -> pd.Series:
    if column == "index":
        return pd.Series(var.index.astype(str), index=var.index)
    return var[column]


def _ensembl_share(values: pd.Series) -> float:
    present = values.dropna().astype(str)
    present = present[present != ""]
    if present.empty:
        return 0.0
    return float(present.str.match(ENSEMBL_ID).mean())


def _gene_table(
    var: pd.DataFrame, options: DatasetOptions, problems: list[Problem], notes: list[str]
) -> tuple[pl.DataFrame, str, str | None]:
    """The genes table (without n_cells_expressed), the gene id's source and the symbol column."""
    columns = ["index", *map(str, var.columns)]
    ensembl_column = _ensembl_column(var, options.ensembl_column, columns, problems)
    symbol_column = _symbol_column(options.symbol_column, ensembl_column, columns, problems)
    feature_names = var.index.astype(str).to_numpy(dtype=object)
    ensembl = _ensembl_ids(var, ensembl_column, notes)
    symbols: list[str | None] = [None] * len(var)
    if symbol_column is not None:
        symbol_values = _column_values(var, symbol_column).astype("string").fillna("").to_numpy(dtype=object)
        symbols = [s if s else None for s in symbol_values]

    if ensembl_column is None:
        gene_id_source = f"symbol:{symbol_column}"
        notes.append(
            f"genes are identified by symbol (var '{symbol_column}'), not Ensembl id; they are mapped to "
            "Ensembl through HGNC (the gene_identifiers table, else the bundled HGNC snapshot), and what "
            "does not map is reported in genes.ensembl_id_source. Pass --ensembl-column if the file has "
            "Ensembl ids."
        )
        key = pd.Series(symbols, dtype="string")
    else:
        gene_id_source = f"ensembl:{ensembl_column}"
        key = pd.Series(ensembl, dtype="string")

    _unnamed_genes(feature_names, ensembl, symbols, problems)
    _duplicate_genes(key, gene_id_source, problems)
    genes = pl.DataFrame(
        {
            "gene_index": np.arange(len(var), dtype=np.int64),
            "feature_name": feature_names,
            "ensembl_id": ensembl,
            "symbol": symbols,
            "in_vocab": pl.Series([None] * len(var), dtype=pl.Boolean),
        },
        schema_overrides={"feature_name": pl.String, "ensembl_id": pl.String, "symbol": pl.String},
    )
    return genes, gene_id_source, None if symbol_column is None else symbol_column


def _ensembl_column(
    var: pd.DataFrame, chosen: str | None, columns: list[str], problems: list[Problem]
) -> str | None:
    """The var column of Ensembl ids: the one asked for when it holds them, else the first that does."""
    if chosen is None:
        return next(
            (
                candidate
                for candidate in ("index", *ENSEMBL_COLUMN_CANDIDATES)
                if candidate in columns
                and _ensembl_share(_column_values(var, candidate)) >= ENSEMBL_DETECT_SHARE
            ),
            None,
        )
    if chosen not in columns:
        problems.append(
            Problem(f"--ensembl-column '{chosen}' is not a var column", f"use one of: {', '.join(columns)}")
        )
        return None
    if (share := _ensembl_share(_column_values(var, chosen))) < 0.5:
        example = ", ".join(_column_values(var, chosen).astype(str).head(3))
        problems.append(
            Problem(
                f"var column '{chosen}' does not hold Ensembl gene ids ({share:.0%} look like "
                f"ENSG…; e.g. {example})",
                "pass the column that holds Ensembl ids with --ensembl-column, or leave it out to use gene "
                "symbols (they are mapped to Ensembl through HGNC)",
            )
        )
        return None
    return chosen


def _symbol_column(
    chosen: str | None, ensembl_column: str | None, columns: list[str], problems: list[Problem]
) -> str | None:
    """The var column of gene symbols: the one asked for, else a known name, else var_names."""
    if chosen is not None and chosen not in columns:
        problems.append(
            Problem(f"--symbol-column '{chosen}' is not a var column", f"use one of: {', '.join(columns)}")
        )
        return None
    if chosen is None:
        chosen = next((c for c in SYMBOL_COLUMN_CANDIDATES if c in columns), None)
        if chosen is None and ensembl_column != "index":
            chosen = "index"
    return chosen


def _ensembl_ids(var: pd.DataFrame, ensembl_column: str | None, notes: list[str]) -> list[str | None]:
    """Each gene's Ensembl id without its version (None: no column, or not a usable id)."""
    ensembl: list[str | None] = [None] * len(var)
    if ensembl_column is None:
        return ensembl
    raw_ids = _column_values(var, ensembl_column).astype("string").fillna("").to_numpy(dtype=object)
    n_not_ensembl = 0
    for i, value in enumerate(raw_ids):
        if ENSEMBL_ID.match(value) and not value.endswith("_PAR_Y"):
            ensembl[i] = strip_ensembl_version(value)
        else:
            n_not_ensembl += 1
    if n_not_ensembl:
        notes.append(
            f"{n_not_ensembl} genes in '{ensembl_column}' have no usable Ensembl id (empty, "
            "not ENSG… or a _PAR_Y copy); they cannot reach the model vocab."
        )
    return ensembl


def _duplicate_genes(key: pd.Series, gene_id_source: str, problems: list[Problem]) -> None:
    duplicated = key[key.duplicated(keep=False) & key.notna()]
    if not duplicated.empty:
        examples = ", ".join(sorted(set(duplicated.astype(str)))[:5])
        problems.append(
            Problem(
                f"{duplicated.nunique()} gene ids occur more than once ({gene_id_source}; e.g. {examples})",
                "sum the duplicated genes into one column each, or drop the copies "
                "(adata = adata[:, ~adata.var_names.duplicated()]); for symbols, --ensembl-column with an "
                "Ensembl column avoids the clash",
            )
        )


def _unnamed_genes(
    feature_names: np.ndarray,
    ensembl: list[str | None],
    symbols: list[str | None],
    problems: list[Problem],
) -> None:
    """A gene with no name at all (empty var name, no Ensembl id, no symbol) can never become a token."""
    unnamed = [
        i
        for i, (name, gene_id, symbol) in enumerate(zip(feature_names, ensembl, symbols, strict=True))
        if not str(name).strip() and not gene_id and not (symbol or "").strip()
    ]
    if not unnamed:
        return
    share = (
        f"all {len(unnamed)}"
        if len(unnamed) == len(feature_names)
        else f"{len(unnamed)} of {len(feature_names)}"
    )
    examples = ", ".join(map(str, unnamed[:5]))
    problems.append(
        Problem(
            f"{share} genes have an empty name (empty var name and no Ensembl id or symbol; e.g. "
            f"gene_index {examples}), so they can never be matched to the model vocab",
            "name every gene (adata.var_names = <Ensembl ids or symbols>, or pass --ensembl-column / "
            "--symbol-column with the var column that holds them), or drop the unnamed genes "
            "(adata = adata[:, adata.var_names != '']) and register the file again",
        )
    )


# -- cells ------------------------------------------------------------------------------------------


def _cell_types(
    obs: pd.DataFrame, options: DatasetOptions, problems: list[Problem], notes: list[str]
) -> tuple[list[str | None], str | None]:
    key = options.cell_type_key
    if key is not None and key not in obs.columns:
        problems.append(
            Problem(
                f"--cell-type-key '{key}' is not an obs column",
                f"use one of: {', '.join(map(str, obs.columns)) or '(obs has no columns)'}",
            )
        )
        return [None] * len(obs), None
    if key is None:
        key = next((c for c in CELL_TYPE_KEY_CANDIDATES if c in obs.columns), None)
        if key is None:
            notes.append(
                "no cell-type column found (looked for "
                f"{', '.join(CELL_TYPE_KEY_CANDIDATES)}); pass --cell-type-key to name one."
            )
            return [None] * len(obs), None
    values = obs[key].astype("string")
    if values.isna().all():
        notes.append(f"cell-type column '{key}' is empty.")
    elif (reason := _not_a_label(obs[key])) is not None:
        others = [str(c) for c in obs.columns if c != key and _not_a_label(obs[c]) is None]
        notes.append(
            f"cell-type column '{key}' looks like an id or a number, not a cell type label ({reason}), so "
            "per-cell-type results would compare ids. Choose the obs column that names cell types with "
            "--cell-type-key COLUMN (`sae-genomics register PATH --name NAME --cell-type-key COLUMN` "
            "re-registers a dataset)"
            + (f"; columns that look like labels: {', '.join(others[:8])}." if others else ".")
        )
    return [None if pd.isna(v) else str(v) for v in values], key


def _samples(
    obs: pd.DataFrame, options: DatasetOptions, problems: list[Problem], notes: list[str]
) -> tuple[list[str | None], str | None]:
    """The sample/donor of each cell and the obs column it came from (None: cells are the unit)."""
    none: list[str | None] = [None] * len(obs)
    key = options.sample_key
    if key == NO_SAMPLE_KEY:
        return none, None
    if key is not None and key not in obs.columns:
        listed = ", ".join(map(str, obs.columns)) or "(obs has no columns)"
        problems.append(
            Problem(
                f"--sample-key '{key}' is not an obs column",
                f"use one of: {listed}, or --sample-key {NO_SAMPLE_KEY}",
            )
        )
        return none, None
    if key is None:
        key = _detect_sample_key(obs, notes)
        if key is None:
            return none, None
    if obs[key].nunique() < 2:
        notes.append(f"sample column '{key}' holds fewer than 2 samples; per-sample tests are not possible.")
    return [None if pd.isna(v) else str(v) for v in obs[key].astype("string")], key


def _detect_sample_key(obs: pd.DataFrame, notes: list[str]) -> str | None:
    """The one obs column named like a sample/donor, else None (several: the user must say which is the unit)."""
    found = [str(c) for c in obs.columns if str(c).lower() in SAMPLE_KEY_CANDIDATES]
    if len(found) > 1:  # e.g. sample and donor_id: samples nested in donors
        notes.append(
            f"several sample/donor columns ({', '.join(found)}); none is used. Choose the unit of "
            "replication with --sample-key COLUMN."
        )
    if len(found) != 1:
        return None
    key = found[0]
    present = obs[key].dropna()
    n_distinct = int(present.nunique())
    if n_distinct > MIN_DISTINCT_FOR_SHARE and n_distinct > MAX_CELL_TYPE_SHARE * len(present):
        notes.append(
            f"obs column '{key}' has a different value in nearly every cell ({n_distinct} in "
            f"{len(present)}), so it is not used as the sample column; name it with --sample-key COLUMN."
        )
        return None
    notes.append(
        f"sample column '{key}' detected (the sample is the unit of replication for pseudobulk tests); "
        f"pass --sample-key COLUMN to choose another, or --sample-key {NO_SAMPLE_KEY}."
    )
    return key


def _not_a_label(column: pd.Series) -> str | None:
    """Why an obs column cannot be cell type labels (numbers, or nearly one value per cell), else None."""
    dtype = column.dtype.categories.dtype if isinstance(column.dtype, pd.CategoricalDtype) else column.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return f"its values are {dtype} numbers"
    present = column.dropna()
    n_distinct = int(present.nunique())
    if n_distinct > MAX_CELL_TYPES or (
        n_distinct > MIN_DISTINCT_FOR_SHARE and n_distinct > MAX_CELL_TYPE_SHARE * len(present)
    ):
        return f"{n_distinct} distinct values in {len(present)} cells"
    return None


# -- the streamed matrix scan ----------------------------------------------------------------------


@dataclass
class _MatrixStats:
    genes_per_cell: np.ndarray
    sum_per_cell: np.ndarray
    expm1_per_cell: np.ndarray
    cells_per_gene: np.ndarray
    n_nonfinite: int = 0
    n_negative: int = 0
    n_stored_zeros: int = 0
    min_value: float = 0.0
    max_value: float = 0.0
    all_integer: bool = True


def _row_chunks(matrix: Any, n_rows: int, chunk_cells: int) -> Iterator[sp.csr_matrix]:
    for start in range(0, n_rows, chunk_cells):
        block = matrix[start : min(start + chunk_cells, n_rows)]
        yield block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def _scan_matrix(matrix: Any, n_rows: int, n_genes: int, chunk_cells: int) -> _MatrixStats:
    n_cells = int(matrix.shape[0])
    stats = _MatrixStats(
        genes_per_cell=np.zeros(n_cells, dtype=np.int64),
        sum_per_cell=np.zeros(n_cells, dtype=np.float64),
        expm1_per_cell=np.zeros(n_cells, dtype=np.float64),
        cells_per_gene=np.zeros(n_genes, dtype=np.int64),
    )
    row = 0
    for block in _row_chunks(matrix, n_rows, chunk_cells):
        data = np.asarray(block.data, dtype=np.float64)
        finite = np.isfinite(data)
        stats.n_nonfinite += int((~finite).sum())
        stats.n_stored_zeros += int((data == 0).sum())
        values = np.where(finite, data, 0.0)
        stats.n_negative += int((values < 0).sum())
        if values.size:
            stats.min_value = min(stats.min_value, float(values.min()))
            stats.max_value = max(stats.max_value, float(values.max()))
            stats.all_integer = stats.all_integer and bool(np.all(values == np.round(values)))
        positive = values > 0
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        stop = row + block.shape[0]
        stats.genes_per_cell[row:stop] = np.bincount(rows[positive], minlength=block.shape[0])
        stats.sum_per_cell[row:stop] = np.bincount(rows, weights=values, minlength=block.shape[0])
        # clip before expm1: only log1p data uses these sums, and raw counts would overflow
        expm1 = np.expm1(np.clip(values, 0.0, LOG1P_MAX_VALUE))
        stats.expm1_per_cell[row:stop] = np.bincount(rows, weights=expm1, minlength=block.shape[0])
        stats.cells_per_gene += np.bincount(block.indices[positive], minlength=n_genes)
        row = stop
    return stats


def _value_kind(stats: _MatrixStats, source: str, *, uns_log1p: bool) -> str:
    if stats.all_integer:
        return "raw_counts"
    # scanpy records uns['log1p'] for X only; elsewhere the value range decides
    if stats.min_value >= 0 and (stats.max_value <= LOG1P_MAX_VALUE or (uns_log1p and source == "X")):
        return "log1p"
    return "normalised"
