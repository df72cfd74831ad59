"""Dataset genes → Ensembl through HGNC: symbols resolved, failures explained, one gene per Ensembl id."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids


def genes(ensembl: list[str | None], symbols: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "gene_index": list(range(len(symbols))),
            "feature_name": [s or e for s, e in zip(symbols, ensembl, strict=True)],
            "ensembl_id": ensembl,
            "symbol": symbols,
        },
        schema_overrides={"ensembl_id": pl.String, "symbol": pl.String},
    )


def test_symbols_map_and_failures_say_why(gene_resolver: GeneResolver) -> None:
    frame, report = map_gene_ids(
        genes([None] * 6, ["TP53", "A1BGAS", "RP11-782C8.1", "NOT_A_GENE", "p53", None]), gene_resolver
    )
    rows = frame.to_dicts()
    assert [r["ensembl_id"] for r in rows] == ["ENSG00000141510", "ENSG00000268895", None, None, None, None]
    assert [r["ensembl_id_source"] for r in rows][:4] == [
        "hgnc:symbol",
        "hgnc:prev_symbol",
        "unmapped",
        "unmapped",
    ]
    # p53 is an alias of TP53, which the dataset already has under its approved symbol
    assert rows[4]["ensembl_id_source"] == "duplicate of TP53"
    assert report is not None and report.n_queries == 5 and report.n_mapped == 3


def test_ids_from_the_file_win_and_duplicates_are_marked(gene_resolver: GeneResolver) -> None:
    # the file names TP53 by Ensembl id and again by an old symbol: the file's own id keeps it
    frame, _ = map_gene_ids(genes(["ENSG00000141510", None, None], [None, "TP53", "CD4"]), gene_resolver)
    rows = frame.to_dicts()
    assert rows[0]["ensembl_id"] == "ENSG00000141510" and rows[0]["ensembl_id_source"] == "dataset"
    assert rows[0]["symbol"] == "TP53"  # Ensembl-only datasets gain HGNC symbols
    assert rows[1]["ensembl_id"] is None and rows[1]["ensembl_id_source"] == "duplicate of TP53"
    assert rows[2]["ensembl_id"] == "ENSG00000010610"
    assert frame["ensembl_id"].drop_nulls().is_unique().all()


def test_without_any_hgnc_table_nothing_is_invented(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.setenv("SAE_GENOMICS_SNAPSHOTS", str(tmp_path / "none"))  # type: ignore[attr-defined]
    resolver, label = default_resolver(tmp_path / "missing.duckdb")
    assert resolver is None and label.startswith("none")
    frame, report = map_gene_ids(genes([None], ["TP53"]), None)
    assert frame["ensembl_id"].to_list() == [None] and report is None
    assert frame["ensembl_id_source"].to_list() == ["unmapped (no HGNC table)"]
