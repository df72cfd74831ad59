"""ClinVar client against a local fake of the NCBI FTP file (real gene_condition_source_id rows)."""

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

FIXTURE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "clinvar" / "gene_condition_source_id"
)
CONTENT = FIXTURE.read_bytes()
PATH = "/pub/clinvar/tab_delimited/gene_condition_source_id"
ETAG = '"5a1f-61e0c2"'
AARS1, BRCA1, CHD7, A2ML1 = "ENSG00000090861", "ENSG00000012048", "ENSG00000171316", "ENSG00000166535"
FAST = {"backoff_s": 0.01, "retries": 1}


def config(base: str) -> SourceConfig:
    return SourceConfig("clinvar", bulk_url=base + PATH, licence="public domain")


def row(table: pl.DataFrame, ensembl_id: str, term_id: str) -> dict[str, object]:
    found = table.filter((pl.col("ensembl_id") == ensembl_id) & (pl.col("term_id") == term_id))
    assert found.height == 1, f"{ensembl_id} × {term_id}: {found.height} rows"
    return found.row(0, named=True)


def file_refresh(path: Path, resolver: GeneResolver) -> pl.DataFrame:
    return refresh("clinvar", config("http://unused"), resolver, mode="file", files=[path]).frame


def test_live_maps_gene_ids_to_medgen_conditions(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with FakeService() as service:
        service.route(PATH, Answer.text(CONTENT, headers={"ETag": ETAG}))
        result = refresh(
            "clinvar", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        table = result.frame
        assert set(table["ensembl_id"]) == {A2ML1, "ENSG00000128274", AARS1, BRCA1, CHD7}
        otitis = row(table, A2ML1, "MedGen:C1833692")
        assert otitis["term_name"] == "Otitis media, susceptibility to" and otitis["term_kind"] == "disease"
        assert otitis["score"] == 1.0 and otitis["evidence"] == "MONDO MONDO:0008162; MIM:166760"
        assert otitis["source_gene_id"] == "144568" and otitis["symbol"] == "A2ML1"
        # RelatedGenes only: kept, weaker, labelled; the two sources of one concept both counted
        cmt = row(table, AARS1, "MedGen:C0007959")
        assert cmt["score"] == 0.5 and cmt["n_evidence"] == 2
        assert cmt["evidence"] == "related; MONDO MONDO:0015626; related; OMIM phenotypic series PS118220"
        # rows without a ConceptID have nothing to join on
        assert table.filter(pl.col("term_name") == "CHD7 disorder").height == 0
        assert row(table, CHD7, "MedGen:C0162809")["evidence"] == "related; ClinVar"
        # newest of both date styles ("May 29 2024" beats "21 Dec 2021"), then the server's validator
        assert result.source_version == f"ClinVar gene_condition_source_id (LastUpdated ≤ 2024-05-29; {ETAG})"

        again = refresh(
            "clinvar", config(service.url), gene_resolver, mode="live", cache_dir=tmp_path, http_options=FAST
        )
        assert service.requests[-1].headers.get("If-None-Match") == ETAG  # conditional GET → 304
        assert again.frame.drop("retrieved_at").equals(table.drop("retrieved_at"))


def test_file_mode_plain_and_gzipped(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    plain = refresh("clinvar", config("http://unused"), gene_resolver, mode="file", files=[FIXTURE])
    assert plain.source_version == "ClinVar gene_condition_source_id (LastUpdated ≤ 2024-05-29)"
    packed = tmp_path / "gene_condition_source_id.gz"
    packed.write_bytes(gzip.compress(CONTENT))
    table = file_refresh(packed, gene_resolver)
    assert table.drop("retrieved_at").equals(plain.frame.drop("retrieved_at"))
    assert row(table, BRCA1, "MedGen:C0677776")["score"] == 1.0


def test_snapshot_gives_demo_genes(gene_resolver: GeneResolver) -> None:
    result = refresh("clinvar", config("http://unused"), gene_resolver, mode="snapshot")
    demo = pl.read_csv(snapshots_dir() / "demo_genes.tsv", separator="\t")
    genes = set(result.frame["ensembl_id"])
    assert len(genes) > 150 and genes <= set(demo["ensembl_id"])
    assert result.frame["term_id"].str.starts_with("MedGen:C").all()
    assert result.source_version.startswith("ClinVar gene_condition_source_id (LastUpdated ≤ 20")


def test_extra_column_is_tolerated_and_a_missing_one_named(
    tmp_path: Path, gene_resolver: GeneResolver
) -> None:
    lines = CONTENT.decode().rstrip("\n").split("\n")
    extra = tmp_path / "extra"
    extra.write_text(
        "\n".join(f"{line}\t{'ReviewStatus' if i == 0 else 'x'}" for i, line in enumerate(lines)) + "\n"
    )
    assert row(file_refresh(extra, gene_resolver), A2ML1, "MedGen:C1833692")["score"] == 1.0

    def drop_column(line: str) -> str:
        cells = line.split("\t")
        return "\t".join(cells[:3] + cells[4:])  # ConceptID gone

    missing = tmp_path / "missing"
    missing.write_text("\n".join(drop_column(line) for line in lines) + "\n")
    with pytest.raises(SchemaError, match="ConceptID"):
        file_refresh(missing, gene_resolver)


def test_malformed_and_truncated_inputs_fail_clearly(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(CONTENT[: CONTENT.index(b"Pancreatic cancer") + 9])  # mid-row
    with pytest.raises(PayloadError, match="cut row"):
        file_refresh(cut, gene_resolver)
    html = tmp_path / "error_page"
    html.write_text("<html><body>503 Service Unavailable</body></html>\n")
    with pytest.raises(PayloadError, match="gene_condition_source_id header"):
        file_refresh(html, gene_resolver)
    header_only = tmp_path / "header_only"
    header_only.write_bytes(CONTENT.split(b"\n")[0] + b"\n")
    with pytest.raises(PayloadError, match="no rows"):
        file_refresh(header_only, gene_resolver)
    with FakeService() as service:
        service.route(PATH, Answer.text(CONTENT, truncate_to=1000))
        with pytest.raises(HttpError, match=r"truncated|broke off"):
            refresh(
                "clinvar",
                config(service.url),
                gene_resolver,
                mode="live",
                cache_dir=tmp_path,
                http_options=FAST,
            )
