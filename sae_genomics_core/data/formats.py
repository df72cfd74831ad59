"""10x Genomics outputs as .h5ad: a CellRanger `.h5` file or Matrix Market folder is read with scanpy
and written once, as an .h5ad, into a folder the caller chooses; an .h5ad passes through as it is.

The converted file holds what 10x gives, the way scanpy users have it: raw counts in X (Gene Expression
features only), barcodes as obs_names, symbols as var_names (made unique, as `read_10x_mtx` does), the
symbols as given in var['gene_symbols'] and the Ensembl ids in var['gene_ids'], so validation finds
both. It is written to a temporary name and renamed, so a crash never leaves half a file; an input that
cannot be read raises `DatasetError` before anything is written. A conversion is reused while it is
newer than its input. scanpy reads the whole matrix into memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import h5py

from sae_genomics_core.data.h5ad import DatasetError, Problem

H5AD = "h5ad"
TENX_H5 = "10x .h5"
TENX_MTX = "10x Matrix Market folder"
# where a home keeps its conversions (under its root)
CONVERTED_SUBFOLDER = Path("datasets") / "converted"
# the file sets scanpy.read_10x_mtx reads: CellRanger ≥ 3 (gzipped, features.tsv) and 2 (plain, genes.tsv)
MTX_LAYOUTS = (
    ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"),
    ("matrix.mtx", "genes.tsv", "barcodes.tsv"),
)
MATRIX_NAMES = ("matrix.mtx.gz", "matrix.mtx")
SUPPORTED = "an .h5ad, a 10x .h5 file or a 10x Matrix Market folder (matrix.mtx(.gz), features.tsv(.gz), barcodes.tsv(.gz))"


@dataclass(frozen=True)
class H5adInput:
    """The .h5ad to read for what the user gave."""

    path: Path  # the .h5ad
    source: Path  # the path given
    kind: str  # H5AD, TENX_H5 or TENX_MTX
    created: bool = False  # written by this call (False: an .h5ad as given, or a conversion reused)

    @property
    def converted(self) -> bool:
        return self.kind != H5AD

    @property
    def name(self) -> str:
        """The default dataset name: the input's stem (the folder's name for a Matrix Market folder)."""
        return self.source.name if self.kind == TENX_MTX else self.source.stem


def input_kind(path: Path | str) -> str:
    """H5AD, TENX_H5 or TENX_MTX; anything that is neither 10x format counts as an .h5ad (validation
    says what is wrong with it)."""
    path = Path(path)
    if path.is_dir() or path.name in MATRIX_NAMES:
        return TENX_MTX
    return TENX_H5 if path.suffix.lower() == ".h5" else H5AD


def h5ad_for(path: Path | str, folder: Path | str) -> H5adInput:
    """The .h5ad of `path`: itself for an .h5ad, else its conversion in `folder` (written when missing
    or older than the input). Raises `DatasetError` (nothing written) when the input cannot be read."""
    source = Path(path).expanduser().resolve()
    kind = input_kind(source)
    if kind == H5AD:
        return H5adInput(source, source, kind)
    files = _input_files(source, kind)
    source = files[0].parent if kind == TENX_MTX else source
    target = Path(folder).expanduser().resolve() / _converted_name(source, kind)
    if target.exists() and target.stat().st_mtime >= max(file.stat().st_mtime for file in files):
        return H5adInput(target, source, kind)
    adata = _read(source, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return H5adInput(target, source, kind, created=True)


@contextlib.contextmanager
def readable_h5ad(path: Path | str) -> Iterator[H5adInput]:
    """`h5ad_for` into a temporary folder removed on exit (a check that keeps nothing). A `DatasetError`
    raised inside names the input given, not the temporary file."""
    with tempfile.TemporaryDirectory(prefix="sae-genomics-convert-") as folder:
        found = h5ad_for(path, folder)
        try:
            yield found
        except DatasetError as error:
            if found.converted and error.path == found.path:
                raise DatasetError(found.source, error.problems) from error
            raise


def _input_files(source: Path, kind: str) -> list[Path]:
    """The files of a 10x input (for a folder: its matrix first); DatasetError when they are not all there."""
    if kind == TENX_H5:
        if not source.is_file():
            _refuse(
                source,
                "the file does not exist",
                "check the path (it is resolved from the current directory)",
            )
        return [source]
    folder = source if source.is_dir() else source.parent
    if not folder.is_dir():
        _refuse(
            folder, "the folder does not exist", "check the path (it is resolved from the current directory)"
        )
    for layout in MTX_LAYOUTS:
        files = [folder / name for name in layout]
        if all(file.is_file() for file in files):
            return files
    present = sorted(file.name for file in folder.iterdir())
    if not any(name in present for name in MATRIX_NAMES):
        _refuse(
            folder,
            f"the folder holds no matrix.mtx or matrix.mtx.gz (it has: {', '.join(present[:8]) or 'nothing'})",
            f"pass {SUPPORTED}",
        )
    _refuse(
        folder,
        f"the folder holds {', '.join(present[:8])}, not one of the 10x file sets "
        + " or ".join(f"({', '.join(layout)})" for layout in MTX_LAYOUTS),
        "CellRanger ≥ 3 gzips all three files (gzip matrix.mtx features.tsv barcodes.tsv); CellRanger 2 "
        "writes them plain with genes.tsv; rename or (un)compress the files to match one set",
    )


def _converted_name(source: Path, kind: str) -> str:
    """<input stem>-<8 hex digits of the input's path>.h5ad: one conversion per input, however named."""
    stem = source.name if kind == TENX_MTX else source.stem
    return f"{stem}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}.h5ad"


def _read(source: Path, kind: str) -> Any:
    """The input as AnnData with the layout in the module docstring; DatasetError when unreadable."""
    import scanpy as sc

    if kind == TENX_H5 and not h5py.is_hdf5(source):
        _refuse(source, "the file is not HDF5, so it is not a 10x .h5 file", _fix(kind))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scanpy warns about duplicated symbols; made unique below
            adata = sc.read_10x_h5(source) if kind == TENX_H5 else sc.read_10x_mtx(source, make_unique=False)
    except Exception as error:  # scanpy, h5py and pandas raise many types for truncated or foreign files
        _refuse(source, f"it cannot be read as a {kind} ({type(error).__name__}: {error})", _fix(kind))
    if adata.n_obs == 0 or adata.n_vars == 0:
        _refuse(
            source,
            f"it holds {adata.n_obs} cells × {adata.n_vars} Gene Expression features",
            "pass a gene expression matrix with cells (CellRanger's filtered_feature_bc_matrix)",
        )
    adata.var["gene_symbols"] = adata.var_names.astype(str)
    adata.var_names_make_unique()
    adata.uns["converted_from"] = {"format": kind, "name": source.name}
    return adata


def _fix(kind: str) -> str:
    if kind == TENX_H5:
        return "copy the file again (it may be truncated), or pass the Matrix Market folder CellRanger wrote"
    return "copy the folder again (a file may be truncated), or pass the .h5 file CellRanger wrote"


def _refuse(path: Path, problem: str, fix: str) -> NoReturn:
    raise DatasetError(path, [Problem(problem, fix)])
