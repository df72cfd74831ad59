"""10x .h5 files and Matrix Market folders, written here as CellRanger writes them, become .h5ad files
that validation reads (counts, Ensembl ids, symbols); unreadable ones are refused and leave nothing."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from sae_genomics_core.cli import main as core_main
from sae_genomics_core.data.formats import (
    H5AD,
    TENX_H5,
    TENX_MTX,
    h5ad_for,
    readable_h5ad,
)
from sae_genomics_core.data.h5ad import DatasetError, DatasetOptions, inspect_h5ad
from tests.conftest import cli

IDS = ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618", "ENSG00000171862", "ENSG00000146648"]
# two Ensembl ids share a symbol, as in real 10x references
SYMBOLS = ["TP53", "BRCA1", "BRCA2", "PTEN", "PTEN"]
BARCODES = [f"AAACCTG{i:03d}-1" for i in range(7)]
ANTIBODY = ("CD3_TotalSeqB", "CD3")  # a feature-barcoding row: dropped, as scanpy's gex_only does


def _counts() -> np.ndarray:
    """cells × genes raw counts (genes as IDS), every cell expressing something."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(len(BARCODES), len(IDS))).astype(np.int32)
    counts[:, 0] += 1
    return counts


def _features_rows(with_antibody: bool = True) -> list[tuple[str, str, str]]:
    rows = [(i, s, "Gene Expression") for i, s in zip(IDS, SYMBOLS, strict=True)]
    return [*rows, (*ANTIBODY, "Antibody Capture")] if with_antibody else rows


def write_tenx_h5(path: Path) -> Path:
    """The CellRanger v3 layout: a features × barcodes CSC matrix under matrix/, with features/."""
    counts = np.hstack([_counts(), np.full((len(BARCODES), 1), 5, dtype=np.int32)])  # + the antibody
    csc = sp.csc_matrix(counts.T)  # features × barcodes: one column per barcode
    rows = _features_rows()
    with h5py.File(path, "w") as file:
        matrix = file.create_group("matrix")
        matrix["data"] = csc.data.astype(np.int32)
        matrix["indices"] = csc.indices.astype(np.int64)
        matrix["indptr"] = csc.indptr.astype(np.int64)
        matrix["shape"] = np.array(csc.shape, dtype=np.int32)
        matrix["barcodes"] = np.array(BARCODES, dtype="S")
        features = matrix.create_group("features")
        features["id"] = np.array([r[0] for r in rows], dtype="S")
        features["name"] = np.array([r[1] for r in rows], dtype="S")
        features["feature_type"] = np.array([r[2] for r in rows], dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(rows), dtype="S")
        features["_all_tag_keys"] = np.array(["genome"], dtype="S")
    return path


def write_mtx_folder(folder: Path, legacy: bool = False) -> Path:
    """CellRanger ≥ 3 (gzipped; features.tsv with the feature type) or 2 (plain; genes.tsv)."""
    folder.mkdir(parents=True)
    rows = [r[:2] for r in _features_rows(False)] if legacy else _features_rows()
    counts = _counts() if legacy else np.hstack([_counts(), np.full((len(BARCODES), 1), 5)])
    suffix, opener = ("", open) if legacy else (".gz", gzip.open)
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(counts.T), field="integer")
    if not legacy:
        with open(folder / "matrix.mtx", "rb") as plain, gzip.open(folder / "matrix.mtx.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
        (folder / "matrix.mtx").unlink()
    with opener(folder / f"{'genes' if legacy else 'features'}.tsv{suffix}", "wt") as handle:
        handle.writelines("\t".join(row) + "\n" for row in rows)
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as handle:
        handle.writelines(f"{barcode}\n" for barcode in BARCODES)
    return folder


def _assert_reads_as_written(path: Path) -> None:
    tables = inspect_h5ad(path)
    report, genes, cells = tables.report, tables.genes, tables.cells
    assert report.value_kind == "raw_counts" and report.matrix_source == "X"
    assert report.gene_id_source == "ensembl:gene_ids" and report.symbol_source == "gene_symbols"
    assert (report.n_cells, report.n_genes) == (len(BARCODES), len(IDS))  # the antibody row is gone
    assert genes["ensembl_id"].to_list() == IDS
    assert genes["symbol"].to_list() == SYMBOLS
    assert cells["cell_id"].to_list() == BARCODES
    np.testing.assert_array_equal(cells["total_counts"].to_numpy(), _counts().sum(axis=1))
    adata = ad.read_h5ad(path)
    np.testing.assert_array_equal(adata.X.toarray(), _counts())
    # unique, as scanpy makes them
    assert list(adata.var_names) == ["TP53", "BRCA1", "BRCA2", "PTEN", "PTEN-1"]


def test_a_10x_h5_file_becomes_an_h5ad_with_counts_ids_and_symbols(tmp_path: Path) -> None:
    source = write_tenx_h5(tmp_path / "sample.h5")
    found = h5ad_for(source, tmp_path / "converted")
    assert found.kind == TENX_H5 and found.created and found.name == "sample"
    assert found.path.parent == tmp_path / "converted" and found.path.suffix == ".h5ad"
    _assert_reads_as_written(found.path)
    assert [p.name for p in found.path.parent.iterdir()] == [found.path.name]  # no temporary left


@pytest.mark.parametrize("legacy", [False, True], ids=["cellranger3", "cellranger2"])
def test_a_matrix_market_folder_becomes_an_h5ad(tmp_path: Path, legacy: bool) -> None:
    folder = write_mtx_folder(tmp_path / "filtered_feature_bc_matrix", legacy)
    found = h5ad_for(folder, tmp_path / "converted")
    assert found.kind == TENX_MTX and found.name == "filtered_feature_bc_matrix"
    _assert_reads_as_written(found.path)
    matrix_file = "matrix.mtx" if legacy else "matrix.mtx.gz"  # the matrix file names its folder too
    assert h5ad_for(folder / matrix_file, tmp_path / "converted").path == found.path


def test_a_conversion_is_reused_until_its_input_changes(tmp_path: Path) -> None:
    source = write_tenx_h5(tmp_path / "sample.h5")
    first = h5ad_for(source, tmp_path / "converted")
    again = h5ad_for(source, tmp_path / "converted")
    assert again.path == first.path and not again.created
    later = first.path.stat().st_mtime + 10
    os.utime(source, (later, later))
    assert h5ad_for(source, tmp_path / "converted").created


def test_an_h5ad_passes_through(tmp_path: Path) -> None:
    path = tmp_path / "x.h5ad"
    found = h5ad_for(path, tmp_path / "converted")
    assert (found.path, found.kind, found.created) == (path.resolve(), H5AD, False)
    assert not (tmp_path / "converted").exists()


def _empty_matrix_group(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file.create_group("matrix")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"not hdf5 at all" * 100), "not HDF5"),
        (_empty_matrix_group, r"cannot be read as a 10x \.h5"),
    ],
    ids=["not-hdf5", "hdf5-without-the-matrix"],
)
def test_a_corrupt_h5_is_refused_and_leaves_nothing(tmp_path: Path, make, says: str) -> None:
    source = tmp_path / "broken.h5"
    make(source)
    with pytest.raises(DatasetError, match=says) as raised:
        h5ad_for(source, tmp_path / "converted")
    assert "nothing was written" in str(raised.value) and "fix:" in str(raised.value)
    assert not (tmp_path / "converted").exists()


def test_a_truncated_h5_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    whole = write_tenx_h5(tmp_path / "whole.h5").read_bytes()
    source = tmp_path / "cut.h5"
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match=r"cut\.h5"):
        h5ad_for(source, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_an_incomplete_or_corrupt_mtx_folder_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    folder = write_mtx_folder(tmp_path / "m")
    (folder / "features.tsv.gz").unlink()
    with pytest.raises(DatasetError, match="not one of the 10x file sets"):
        h5ad_for(folder, tmp_path / "converted")
    with pytest.raises(DatasetError, match=r"no matrix\.mtx"):
        h5ad_for(tmp_path, tmp_path / "converted")
    broken = write_mtx_folder(tmp_path / "broken")
    (broken / "matrix.mtx.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="cannot be read as a 10x Matrix Market folder"):
        h5ad_for(broken, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_a_validation_problem_of_a_conversion_names_the_input(tmp_path: Path) -> None:
    source = write_tenx_h5(tmp_path / "sample.h5")
    with (
        pytest.raises(DatasetError, match="--cell-type-key 'nope'") as raised,
        readable_h5ad(source) as found,
    ):
        converted = found.path
        inspect_h5ad(found.path, DatasetOptions(cell_type_key="nope"))
    assert raised.value.path == source.resolve()
    assert not converted.exists()  # the temporary conversion is gone


def test_validate_reads_a_10x_h5_and_keeps_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_tenx_h5(tmp_path / "sample.h5")
    assert core_main(["validate", str(source)]) == 0
    out = capsys.readouterr().out
    assert f"| path | {source} |" in out and "| value_kind | raw_counts |" in out
    assert "read as a 10x .h5" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.h5"]
    (tmp_path / "broken.h5").write_bytes(b"nope")
    assert core_main(["validate", str(tmp_path / "broken.h5")]) == 2
    assert "broken.h5: 1 problem(s) found; nothing was written" in capsys.readouterr().err


def test_register_converts_once_and_records_the_conversion(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = write_mtx_folder(tmp_path / "pbmc_sample")
    result = cli(home, "register", str(folder), "--no-run")
    assert result.returncode == 0, result.stderr
    converted = next((home / "datasets" / "converted").iterdir())
    assert f"converted {folder} ({TENX_MTX}) to {converted}" in result.stdout
    assert f"registered pbmc_sample: {converted}" in result.stdout
    listed = cli(home, "datasets").stdout
    assert listed.startswith(f"pbmc_sample\t{converted}\t")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"nope")
    refused = cli(home, "register", str(broken), "--no-run")
    assert refused.returncode == 2 and "not HDF5" in refused.stderr
    assert list((home / "datasets" / "converted").iterdir()) == [converted]
