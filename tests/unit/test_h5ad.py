from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import scipy.sparse as sp

from sae_genomics_core.data.h5ad import DatasetError, DatasetOptions, file_checksum, inspect_h5ad
from tests.conftest import counts, write_h5ad


def test_demo_reads_raw_log1p_symbols_and_cell_types(demo_h5ad: Path) -> None:
    tables = inspect_h5ad(demo_h5ad, DatasetOptions(cell_type_key="bulk_labels"))
    report = tables.report
    assert (report.n_cells, report.n_genes) == (700, 765)
    assert report.matrix_source == "raw.X"  # X is scaled (negative values); .raw is preferred
    assert report.value_kind == "log1p"
    assert report.gene_id_source == "symbol:index"
    assert report.n_cell_types == 10
    assert tables.cells["cell_type"].value_counts().sort("count")["count"].max() == 240  # Dendritic
    assert tables.genes["symbol"][0] == "HES4"
    assert any("log1p" in w for w in report.warnings)
    # expm1 row sums of this dataset are 1.7k-2.5k (size-factor normalised)
    assert 1_000 < tables.cells["total_counts"].mean() < 3_000


def test_tenx_raw_counts_and_ensembl_ids(tenx_h5ad: Path) -> None:
    import anndata as ad

    tables = inspect_h5ad(tenx_h5ad)
    report = tables.report
    assert (report.n_cells, report.n_genes) == (1107, 507)
    assert report.value_kind == "raw_counts"
    assert report.gene_id_source == "ensembl:gene_ids"
    assert report.symbol_source == "index"
    assert tables.genes["ensembl_id"].str.starts_with("ENSG").all()
    x = ad.read_h5ad(tenx_h5ad).X
    np.testing.assert_allclose(tables.cells["total_counts"].to_numpy(), np.asarray(x.sum(axis=1)).ravel())
    np.testing.assert_array_equal(
        tables.genes["n_cells_expressed"].to_numpy(), np.asarray((x > 0).sum(axis=0)).ravel()
    )


def test_chunked_scan_equals_single_pass(tenx_h5ad: Path) -> None:
    whole = inspect_h5ad(tenx_h5ad, chunk_cells=100_000)
    chunked = inspect_h5ad(tenx_h5ad, chunk_cells=7)
    assert whole.cells.equals(chunked.cells)
    assert whole.genes.equals(chunked.genes)


def test_counts_layer_is_preferred_and_versions_are_stripped(tmp_path: Path) -> None:
    raw = counts()
    ids = [f"ENSG{i:011d}.{i % 3 + 1}" for i in range(raw.shape[1])]
    path = write_h5ad(
        tmp_path / "a.h5ad", np.log1p(raw.toarray()), var={"gene_ids": ids}, layers={"counts": raw}
    )
    tables = inspect_h5ad(path)
    assert tables.report.matrix_source == "layers['counts']"
    assert tables.report.value_kind == "raw_counts"
    assert tables.genes["ensembl_id"][5] == "ENSG00000000005"
    assert tables.cells["total_counts"][0] == pytest.approx(float(raw[0].sum()))


def test_dense_x_and_empty_cells_are_counted(tmp_path: Path) -> None:
    x = counts().toarray()
    x[3] = 0
    x[7] = 0
    tables = inspect_h5ad(write_h5ad(tmp_path / "dense.h5ad", x))
    assert tables.report.n_empty_cells == 2
    assert tables.cells.filter(pl.col("n_genes_expressed") == 0)["cell_index"].to_list() == [3, 7]
    assert any("no expressed gene" in w for w in tables.report.warnings)


def test_log1p_x_is_detected(tmp_path: Path) -> None:
    path = write_h5ad(
        tmp_path / "log.h5ad", sp.csr_matrix(np.log1p(counts().toarray())), uns={"log1p": {"base": None}}
    )
    assert inspect_h5ad(path).report.value_kind == "log1p"


def test_explicit_columns_are_used(tmp_path: Path) -> None:
    n_genes = 30
    path = write_h5ad(
        tmp_path / "cols.h5ad",
        counts(),
        var={"ens": [f"ENSG{i:011d}" for i in range(n_genes)], "sym": [f"S{i}" for i in range(n_genes)]},
        obs={"label": ["x", "y"] * 20},
    )
    tables = inspect_h5ad(
        path, DatasetOptions(ensembl_column="ens", symbol_column="sym", cell_type_key="label")
    )
    assert tables.report.gene_id_source == "ensembl:ens"
    assert tables.genes["symbol"][2] == "S2"
    assert set(tables.cells["cell_type"]) == {"x", "y"}


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.arange(40) % 7, "int64 numbers"),  # e.g. cluster numbers or counts
        (np.linspace(0.0, 1.0, 40), "float64 numbers"),  # e.g. a QC score
        (pd.Categorical(np.arange(40) % 3), "int64 numbers"),  # numbers made categorical
        ([f"AAACCTG-{i}" for i in range(40)], "40 distinct values in 40 cells"),  # barcodes
    ],
)
def test_cell_type_key_that_looks_like_ids_is_warned_about(
    tmp_path: Path, values: object, reason: str
) -> None:
    path = write_h5ad(tmp_path / "ids.h5ad", counts(), obs={"label": ["x", "y"] * 20, "other": values})
    tables = inspect_h5ad(path, DatasetOptions(cell_type_key="other"))
    (warning,) = [w for w in tables.report.warnings if "'other'" in w]
    assert "looks like an id or a number, not a cell type label" in warning
    assert reason in warning
    assert "--cell-type-key COLUMN" in warning and "columns that look like labels: label." in warning
    assert tables.report.cell_type_key == "other"  # a warning: ingest goes on with the chosen column


def test_cell_type_labels_are_not_warned_about(tmp_path: Path) -> None:
    labels = np.array([f"type{i % 12}" for i in range(40)])  # 12 types in 40 cells: labels, not ids
    path = write_h5ad(tmp_path / "labels.h5ad", counts(), obs={"cell_type": pd.Categorical(labels)})
    assert not [w for w in inspect_h5ad(path).report.warnings if "cell type label" in w]


def test_checksum_changes_with_content(tmp_path: Path) -> None:
    a = write_h5ad(tmp_path / "a.h5ad", counts(seed=1))
    b = write_h5ad(tmp_path / "b.h5ad", counts(seed=2))
    assert file_checksum(a).startswith("sha256:")
    assert file_checksum(a) != file_checksum(b)


# -- every problem a user can cause: a DatasetError naming file, problem and fix ----------------


def _bad_files(tmp: Path) -> dict[str, tuple[Path, DatasetOptions, str]]:
    base = counts()
    n_genes = base.shape[1]
    nan = base.toarray()
    nan[2, 3] = np.nan
    cases: dict[str, tuple[Path, DatasetOptions, str]] = {}
    missing = tmp / "missing.h5ad"
    cases["missing"] = (missing, DatasetOptions(), "does not exist")
    not_hdf5 = tmp / "text.h5ad"
    not_hdf5.write_text("cell,gene\n1,2\n")
    cases["not hdf5"] = (not_hdf5, DatasetOptions(), "not HDF5")
    wrong_suffix = tmp / "matrix.csv"
    wrong_suffix.write_text("x")
    cases["suffix"] = (wrong_suffix, DatasetOptions(), "not an .h5ad")
    truncated = write_h5ad(tmp / "truncated.h5ad", base)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    cases["truncated"] = (truncated, DatasetOptions(), "cannot be read")
    cases["nan"] = (write_h5ad(tmp / "nan.h5ad", nan), DatasetOptions(), "non-finite")
    scaled = (base.toarray() - base.toarray().mean(axis=0)) / 2
    cases["negative"] = (write_h5ad(tmp / "scaled.h5ad", scaled), DatasetOptions(), "negative values")
    plain = write_h5ad(tmp / "plain.h5ad", base)
    cases["no ensembl column"] = (
        plain,
        DatasetOptions(ensembl_column="ensembl"),
        "'ensembl' is not a var column",
    )
    symbols = write_h5ad(tmp / "symbols.h5ad", base, var={"name": [f"G{i}" for i in range(n_genes)]})
    cases["not ensembl"] = (symbols, DatasetOptions(ensembl_column="name"), "does not hold Ensembl")
    dup_ids = [f"ENSG{i:011d}.1" for i in range(n_genes)]
    dup_ids[4] = "ENSG00000000003.2"  # same gene as index 3 once versions are stripped
    cases["duplicate ensembl"] = (
        write_h5ad(tmp / "dup.h5ad", base, var={"gene_ids": dup_ids}),
        DatasetOptions(),
        "occur more than once",
    )
    dup_symbols = write_h5ad(
        tmp / "dupsym.h5ad", base, var={"feature_name": ["A", "A"] + [f"G{i}" for i in range(n_genes - 2)]}
    )
    cases["duplicate symbol"] = (
        dup_symbols,
        DatasetOptions(ensembl_column=None, symbol_column="feature_name", matrix="X"),
        "occur more than once",
    )
    cases["cell type key"] = (
        plain,
        DatasetOptions(cell_type_key="celltype_v2"),
        "'celltype_v2' is not an obs column",
    )
    cases["all empty"] = (
        write_h5ad(tmp / "empty_cells.h5ad", sp.csr_matrix(base.shape, dtype=np.float32)),
        DatasetOptions(),
        "no expressed gene",
    )
    cases["no cells"] = (
        write_h5ad(tmp / "no_cells.h5ad", sp.csr_matrix((0, n_genes), dtype=np.float32), obs={}),
        DatasetOptions(),
        "is empty",
    )
    cases["missing layer"] = (plain, DatasetOptions(matrix="layers/counts"), "no layer 'counts'")
    cases["missing raw"] = (plain, DatasetOptions(matrix="raw"), "has no .raw")
    cases["unknown matrix"] = (plain, DatasetOptions(matrix="obsm"), "unknown --matrix")
    import anndata as ad
    import pandas as pd

    no_x = tmp / "no_x.h5ad"
    ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(4)]),
    ).write_h5ad(no_x)
    cases["no X"] = (no_x, DatasetOptions(), "has no X matrix")
    return cases


BAD_CASES = [
    "missing",
    "not hdf5",
    "suffix",
    "truncated",
    "nan",
    "negative",
    "no ensembl column",
    "not ensembl",
    "duplicate ensembl",
    "duplicate symbol",
    "cell type key",
    "all empty",
    "no cells",
    "missing layer",
    "missing raw",
    "unknown matrix",
    "no X",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_a_clear_error(tmp_path: Path, case: str) -> None:
    path, options, expected = _bad_files(tmp_path)[case]
    with pytest.raises(DatasetError) as caught:
        inspect_h5ad(path, options)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert "fix:" in message


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "two.h5ad", counts())
    with pytest.raises(DatasetError) as caught:
        inspect_h5ad(path, DatasetOptions(ensembl_column="nope", cell_type_key="nope"))
    assert len(caught.value.problems) == 2


# -- the sample/donor column (the unit of pseudobulk tests) -----------------------------------------


def _with_obs(tmp_path: Path, obs: dict[str, object]) -> Path:
    return write_h5ad(tmp_path / "samples.h5ad", counts(), obs={"cell_type": ["T", "B"] * 20, **obs})


def test_sample_key_fills_the_sample_column(tmp_path: Path) -> None:
    path = _with_obs(tmp_path, {"library": [f"lib{i % 4}" for i in range(40)]})
    tables = inspect_h5ad(path, DatasetOptions(sample_key="library"))
    assert tables.report.sample_key == "library"
    assert tables.report.n_samples == 4
    assert tables.cells["sample"].to_list() == [f"lib{i % 4}" for i in range(40)]


@pytest.mark.parametrize("name", ["donor_id", "Sample", "patient"])
def test_an_unambiguous_sample_column_is_detected_and_recorded(tmp_path: Path, name: str) -> None:
    path = _with_obs(tmp_path, {name: np.arange(40) % 3})  # numeric donor numbers are fine
    tables = inspect_h5ad(path)
    assert tables.report.sample_key == name
    assert tables.cells["sample"].to_list() == [str(i % 3) for i in range(40)]
    assert any(f"sample column '{name}' detected" in w for w in tables.report.warnings)


@pytest.mark.parametrize(
    ("obs", "expected_note"),
    [
        ({"batch": ["a", "b"] * 20}, None),  # a batch may pool donors: never taken for the sample
        ({"sample": ["s1", "s2"] * 20, "donor_id": ["d1"] * 40}, "several sample/donor columns"),
        ({"sample": [f"c{i}" for i in range(40)]}, "different value in nearly every cell"),
    ],
)
def test_an_ambiguous_or_id_like_sample_column_is_not_used(
    tmp_path: Path, obs: dict[str, object], expected_note: str | None
) -> None:
    tables = inspect_h5ad(_with_obs(tmp_path, obs))
    assert tables.report.sample_key is None
    assert tables.cells["sample"].null_count() == 40
    notes = [w for w in tables.report.warnings if "sample" in w]
    assert (expected_note is None and not notes) or any(expected_note in w for w in notes)


def test_sample_key_none_turns_detection_off(tmp_path: Path) -> None:
    tables = inspect_h5ad(_with_obs(tmp_path, {"donor": ["a", "b"] * 20}), DatasetOptions(sample_key="none"))
    assert tables.report.sample_key is None
    assert tables.report.n_samples == 0


def test_missing_sample_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        inspect_h5ad(_with_obs(tmp_path, {}), DatasetOptions(sample_key="donor"))
    assert "--sample-key 'donor' is not an obs column" in str(caught.value)
    assert "--sample-key none" in str(caught.value)


def test_sample_key_comes_from_the_command_line_and_survives_the_registry() -> None:
    import argparse

    from sae_genomics_core.cli import add_dataset_options, dataset_options

    parser = argparse.ArgumentParser()
    add_dataset_options(parser)
    options = dataset_options(parser.parse_args(["--sample-key", "donor_id"]))
    assert options.sample_key == "donor_id"
    assert DatasetOptions.from_dict(options.to_dict()) == options
    assert DatasetOptions.from_dict({"cell_type_key": "x"}).sample_key is None  # entries from before


# -- a gene subset (e.g. highly variable genes) is binned differently from what tahoe-x1 saw ---------


def _subset_warning(report: object) -> str | None:
    found = [w for w in report.warnings if "looks like a gene subset" in w]  # type: ignore[attr-defined]
    assert len(found) <= 1
    assert bool(found) == report.looks_like_gene_subset  # type: ignore[attr-defined]
    return found[0] if found else None


def _full(n_genes: int = 6_000, n_cells: int = 20) -> sp.csr_matrix:
    """Raw counts over as many genes as a whole transcriptome (more than FEW_GENES)."""
    x = sp.random(n_cells, n_genes, density=0.05, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(10 * x.data)
    x = x.tolil()
    x[:, 0] = 1.0  # every cell expresses something
    return x.tocsr()


def test_the_demo_is_warned_to_be_a_gene_subset(demo_h5ad: Path) -> None:
    warning = _subset_warning(inspect_h5ad(demo_h5ad, DatasetOptions(cell_type_key="bulk_labels")).report)
    assert warning is not None
    assert "765 genes" in warning and "highly_variable" in warning
    assert "no larger matrix" in warning and "layers['counts']" in warning


def test_an_hvg_only_matrix_is_warned_even_with_many_genes(tmp_path: Path) -> None:
    x = _full()
    path = write_h5ad(
        tmp_path / "hvg.h5ad",
        x,
        obs={"cell_type": ["T"] * 20},
        var={
            "gene_ids": [f"ENSG{i:011d}" for i in range(x.shape[1])],
            "highly_variable": [True] * x.shape[1],
        },
    )
    warning = _subset_warning(inspect_h5ad(path).report)
    assert warning is not None and "every gene is flagged var['highly_variable']" in warning


def test_a_subset_in_x_points_to_the_full_raw(tmp_path: Path) -> None:
    full = counts(n_genes=30)
    subset = full[:, :12]
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(index=[f"c{i}" for i in range(full.shape[0])])
    adata = ad.AnnData(X=subset, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(12)]))
    adata.raw = ad.AnnData(X=full, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    adata.uns["hvg"] = {"flavor": "seurat"}
    adata.write_h5ad(tmp_path / "x_subset.h5ad")
    warning = _subset_warning(inspect_h5ad(tmp_path / "x_subset.h5ad", DatasetOptions(matrix="X")).report)
    assert warning is not None
    assert "--matrix raw (.raw holds 30 genes)" in warning and "uns['hvg']" in warning


def test_a_whole_transcriptome_is_not_warned(tmp_path: Path) -> None:
    x = _full()
    flags = np.arange(x.shape[1]) % 3 == 0  # HVGs annotated, not selected: the matrix is whole
    path = write_h5ad(
        tmp_path / "whole.h5ad",
        x,
        obs={"cell_type": ["T"] * 20},
        var={"gene_ids": [f"ENSG{i:011d}" for i in range(x.shape[1])], "highly_variable": flags},
    )
    assert _subset_warning(inspect_h5ad(path).report) is None


def test_stored_zeros_are_counted_and_explained(tmp_path: Path) -> None:
    matrix = counts()
    matrix.data[:5] = 0.0  # explicit zeros, as some exports leave them
    tables = inspect_h5ad(write_h5ad(tmp_path / "zeros.h5ad", matrix))
    assert tables.report.n_stored_zeros == 5
    (note,) = [w for w in tables.report.warnings if "explicit zeros" in w]
    assert "expression bin 1" in note and "eliminate_zeros" in note
    assert tables.cells["n_genes_expressed"].sum() == int((counts().toarray() > 0).sum()) - 5


def _unnamed(tmp_path: Path, names: list[str]) -> Path:
    """A file whose var index holds `names` and no other gene column (so the index is the only name)."""
    import anndata as ad

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(40)])
    path = tmp_path / "unnamed.h5ad"
    with pytest.warns(UserWarning, match="not unique"):
        ad.AnnData(X=counts(n_genes=len(names)), obs=obs, var=pd.DataFrame(index=names)).write_h5ad(path)
    return path


def test_genes_with_empty_names_are_refused_with_a_count(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"all 30 genes have an empty name") as caught:
        inspect_h5ad(_unnamed(tmp_path, [""] * 30))
    assert "adata.var_names" in str(caught.value)
    some = [f"GENE{i}" for i in range(27)] + ["", " ", ""]
    with pytest.raises(DatasetError, match=r"3 of 30 genes have an empty name \(.*gene_index 27, 28, 29"):
        inspect_h5ad(_unnamed(tmp_path, some))


def test_an_empty_name_with_an_ensembl_id_is_a_gene(tmp_path: Path) -> None:
    import anndata as ad

    var = pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(30)]}, index=[""] * 29 + ["X"])
    path = tmp_path / "ids.h5ad"
    with pytest.warns(UserWarning, match="not unique"):
        ad.AnnData(X=counts(), obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=var).write_h5ad(path)
    assert inspect_h5ad(path).report.n_genes_with_ensembl == 30


def test_few_genes_per_cell_is_warned_and_a_transcriptome_is_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sparse = sp.random(
        60, 400, density=0.05, format="csr", random_state=1, data_rvs=lambda n: rng.poisson(3, n) + 1
    )
    report = inspect_h5ad(write_h5ad(tmp_path / "sparse.h5ad", sparse)).report  # ~20 genes a cell
    (note,) = [w for w in report.warnings if "median cell expresses" in w]
    assert "min_genes=200" in note
    dense = sp.random(
        60, 400, density=0.6, format="csr", random_state=2, data_rvs=lambda n: rng.poisson(3, n) + 1
    )
    report = inspect_h5ad(write_h5ad(tmp_path / "dense.h5ad", dense)).report  # ~240 genes a cell
    assert not [w for w in report.warnings if "median cell expresses" in w]
