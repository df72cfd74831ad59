"""HPO client against a local fake of the HPO release files (real genes_to_phenotype rows, both layouts)."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from sae_genomics_core.annotations.base import SourceConfig, snapshots_dir
from sae_genomics_core.annotations.errors import PayloadError, SchemaError
from sae_genomics_core.annotations.http import HttpError
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import refresh
from tests.fakes.http_service import Answer, FakeService

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "hpo"
NEW_LAYOUT = (FIXTURES / "genes_to_phenotype.txt").read_bytes()
OLD_LAYOUT = (FIXTURES / "genes_to_phenotype.2023-01.txt").read_bytes()
HPOA_HEAD = (FIXTURES / "phenotype.hpoa").read_bytes()
LAST_MODIFIED = "Tue, 05 Mar 2024 10:00:00 GMT"
ABCA1, NAT2, AARS1, HMOX1 = "ENSG00000165029", "ENSG00000156006", "ENSG00000090861", "ENSG00000100292"
FAST = {"backoff_s": 0.01, "retries": 1}


def config(base: str) -> SourceConfig:
    return SourceConfig("hpo", bulk_url=base + "/hpoa/genes_to_phenotype.txt", licence="CC0-1.0")


def row(table: pl.DataFrame, ensembl_id: str, term_id: str) -> dict[str, object]:
    found = table.filter((pl.col("ensembl_id") == ensembl_id) & (pl.col("term_id") == term_id))
    assert found.height == 1, f"{ensembl_id} × {term_id}: {found.height} rows"
    return found.row(0, named=True)


def test_live_maps_entrez_to_ensembl_and_dates_the_release(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    with FakeService() as service:
        service.route(
            "/hpoa/genes_to_phenotype.txt", Answer.text(NEW_LAYOUT, headers={"Last-Modified": LAST_MODIFIED})
        )
        service.route("/hpoa/phenotype.hpoa", Answer.text(HPOA_HEAD))
        result = refresh(
            "hpo", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        table = result.frame
        assert set(table["ensembl_id"]) == {NAT2, AARS1, "ENSG00000183044", ABCA1}  # ABAT is the 4th gene
        # one phenotype reached through two diseases: both kept as evidence, the known frequency as score
        abca1 = row(table, ABCA1, "HP:0010829")
        assert abca1["symbol"] == "ABCA1" and abca1["term_name"] == "Impaired temperature sensation"
        assert abca1["score"] == pytest.approx(0.17) and abca1["n_evidence"] == 2
        assert abca1["evidence"] == "OMIM:205400; ORPHA:31150 freq occasional"
        assert row(table, AARS1, "HP:0002460")["score"] == pytest.approx(1.0)  # 15/15
        inheritance = row(table, NAT2, "HP:0000007")
        assert inheritance["term_kind"] == "inheritance" and inheritance["score"] is None
        assert row(table, NAT2, "HP:0001939")["term_kind"] == "phenotype"
        assert result.source_version == f"HPO 2024-03-06 (genes_to_phenotype.txt {LAST_MODIFIED})"
        assert result.resolution.n_unmapped == 0
        probe = next(r for r in service.requests if r.path == "/hpoa/phenotype.hpoa")
        assert probe.headers.get("Range") == "bytes=0-4095"  # only the header of the 35 MB file

        again = refresh(
            "hpo", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        second = [r for r in service.requests if r.path == "/hpoa/genes_to_phenotype.txt"][1]
        assert second.headers.get("If-Modified-Since") == LAST_MODIFIED  # conditional GET: 304, cached copy
        assert again.frame.drop("retrieved_at").equals(table.drop("retrieved_at"))


def test_live_falls_back_to_last_modified_when_the_hpoa_probe_fails(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    with FakeService() as service:
        service.route(
            "/hpoa/genes_to_phenotype.txt", Answer.text(NEW_LAYOUT, headers={"Last-Modified": LAST_MODIFIED})
        )
        service.route("/hpoa/phenotype.hpoa", Answer.text("gone", status=404))
        result = refresh(
            "hpo", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        assert result.source_version == f"HPO ({LAST_MODIFIED})"
        assert result.frame.height > 200


def test_file_mode_reads_the_old_nine_column_layout(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    path = tmp_path / "genes_to_phenotype.2023-01.txt"
    path.write_bytes(OLD_LAYOUT)
    result = refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[path])
    table = result.frame
    assert result.source_version == "HPO 2023-01 (from the file name)"
    abca1 = row(table, ABCA1, "HP:0010829")
    assert abca1["evidence"] == "OMIM:205400; ORPHA:31150 freq occasional"
    assert abca1["score"] == pytest.approx(0.17)
    # the old layout's qualifier column survives as evidence
    assert row(table, HMOX1, "HP:0006510")["evidence"] == "OMIM:606963 (susceptibility)"
    assert row(table, HMOX1, "HP:0002110")["score"] == pytest.approx(0.9)  # HP:0040281 very frequent


def test_file_mode_takes_the_version_from_phenotype_hpoa(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    table_path, hpoa = tmp_path / "genes_to_phenotype.txt.gz", tmp_path / "phenotype.hpoa"
    table_path.write_bytes(gzip.compress(NEW_LAYOUT))
    hpoa.write_bytes(HPOA_HEAD)
    result = refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[hpoa, table_path])
    assert result.source_version == "HPO 2024-03-06"
    assert row(result.frame, ABCA1, "HP:0010829")["n_evidence"] == 2


def test_undated_file_is_named_by_its_hash_not_the_clock(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    path = tmp_path / "g2p.tsv"
    path.write_bytes(NEW_LAYOUT)
    result = refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[path])
    assert result.source_version.startswith("HPO (undated file, sha256:")


def test_absent_phenotypes_are_dropped_and_frequencies_parsed(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    header, first = NEW_LAYOUT.decode().split("\n")[:2]
    gene = first.split("\t")[:2]
    variants = {
        "HP:0000001": "HP:0040285",  # Excluded: the phenotype is absent
        "HP:0000002": "0/4",
        "HP:0000003": "40%",
        "HP:0000004": "3/4",
    }
    lines = [header] + [
        "\t".join([*gene, term, "name", freq, "OMIM:243400"]) for term, freq in variants.items()
    ]
    path = tmp_path / "g2p.txt"
    path.write_text("\n".join(lines) + "\n")
    table = refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[path]).frame
    assert set(table["term_id"]) == {"HP:0000003", "HP:0000004"}
    assert row(table, NAT2, "HP:0000003")["score"] == pytest.approx(0.4)
    assert row(table, NAT2, "HP:0000004")["score"] == pytest.approx(0.75)


def test_snapshot_gives_demo_genes(gene_resolver: GeneResolver) -> None:
    result = refresh("hpo", config("http://unused"), gene_resolver, mode="snapshot")
    demo = pl.read_csv(snapshots_dir() / "demo_genes.tsv", separator="\t")
    genes = set(result.frame["ensembl_id"])
    assert len(genes) > 150 and genes <= set(demo["ensembl_id"])
    assert HMOX1 in genes
    assert result.source_version == "HPO 2023-01-27 (from the file name)"


def test_extra_column_is_tolerated_and_a_missing_one_named(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    lines = NEW_LAYOUT.decode().rstrip("\n").split("\n")
    extra = tmp_path / "extra.txt"
    extra.write_text(
        "\n".join(f"{line}\t{'ensembl_id' if i == 0 else 'x'}" for i, line in enumerate(lines)) + "\n"
    )
    table = refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[extra]).frame
    assert row(table, ABCA1, "HP:0010829")["n_evidence"] == 2

    def drop_column(line: str) -> str:
        cells = line.split("\t")
        return "\t".join(cells[:2] + cells[3:])  # hpo_id gone

    missing = tmp_path / "missing.txt"
    missing.write_text("\n".join(drop_column(line) for line in lines) + "\n")
    with pytest.raises(SchemaError, match="hpo_id"):
        refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[missing])


def test_truncated_files_and_downloads_fail_clearly(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    cut = tmp_path / "cut.txt"
    cut.write_bytes(NEW_LAYOUT[: len(NEW_LAYOUT) // 2 + 7])
    with pytest.raises(PayloadError, match="cut row"):
        refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[cut])
    cut_gz = tmp_path / "cut.txt.gz"
    cut_gz.write_bytes(gzip.compress(NEW_LAYOUT)[:500])
    with pytest.raises(PayloadError, match="truncated gzip"):
        refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[cut_gz])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(NEW_LAYOUT.split(b"\n")[0] + b"\n")
    with pytest.raises(PayloadError, match="no rows"):
        refresh("hpo", config("http://unused"), gene_resolver, mode="file", files=[empty])
    with FakeService() as service:
        service.route("/hpoa/genes_to_phenotype.txt", Answer.text(NEW_LAYOUT, truncate_to=3000))
        with pytest.raises(HttpError, match=r"truncated|broke off"):
            refresh(
                "hpo", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
            )
