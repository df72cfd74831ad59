"""Builds the Monarch snapshot: HPO's gene → disease edges for the demo genes, in Monarch's KGX layout.

Run from the repository root with the shared reference data beside it:
    .venv/bin/python external/snapshots/monarch/derive_from_hpo.py ../shared/data/hpo/genes_to_disease.txt \
        ../shared/data/hpo/phenotype.2024-03-06.hpoa.gz
The second file (HPO's disease annotations) names the diseases: Monarch's edges carry object labels.
"""

import gzip
import io
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
HGNC = HERE.parent / "hgnc" / "hgnc_complete_set.txt.gz"
DEMO = HERE.parent / "demo_genes.tsv"
OUT = HERE / "gene_disease.derived-from-hpo-annotations.tsv.gz"

# Monarch's categories for HPO-annotation gene → disease edges, by HPO's association_type
CATEGORY = {
    "MENDELIAN": ("biolink:CausalGeneToDiseaseAssociation", "biolink:causes"),
    "POLYGENIC": ("biolink:CorrelatedGeneToDiseaseAssociation", "biolink:contributes_to"),
    "UNKNOWN": ("biolink:CorrelatedGeneToDiseaseAssociation", "biolink:gene_associated_with_condition"),
}


def disease_labels(hpoa: Path) -> pl.DataFrame:
    """object, object_label from the HPO annotation file's database_id, disease_name."""
    text = gzip.decompress(hpoa.read_bytes()) if hpoa.suffix == ".gz" else hpoa.read_bytes()
    frame = pl.read_csv(
        io.BytesIO(text), separator="\t", comment_prefix="#", infer_schema=False, quote_char=None
    )
    return frame.select(
        pl.col("database_id").alias("object"), pl.col("disease_name").alias("object_label")
    ).unique("object", keep="first")


def main(genes_to_disease: Path, hpoa: Path) -> None:
    hgnc = pl.read_csv(HGNC, separator="\t", infer_schema=False, quote_char='"').select(
        pl.col("entrez_id"), pl.col("hgnc_id").alias("subject"), pl.col("symbol").alias("subject_label")
    )
    demo = set(pl.read_csv(DEMO, separator="\t")["hgnc_id"].drop_nulls().to_list())
    edges = (
        pl.read_csv(genes_to_disease, separator="\t", infer_schema=False)
        .with_columns(pl.col("ncbi_gene_id").str.replace("^NCBIGene:", "").alias("entrez_id"))
        .join(hgnc, on="entrez_id", how="inner")
        .filter(pl.col("subject").is_in(sorted(demo)))
        .join(disease_labels(hpoa).rename({"object": "disease_id"}), on="disease_id", how="left")
    )
    kgx = edges.select(
        "subject",
        "subject_label",
        pl.lit("biolink:Gene").alias("subject_category"),
        pl.lit("NCBITaxon:9606").alias("subject_taxon"),
        pl.col("association_type").replace_strict({k: v[1] for k, v in CATEGORY.items()}).alias("predicate"),
        pl.col("disease_id").alias("object"),
        "object_label",
        pl.lit("biolink:Disease").alias("object_category"),
        pl.col("association_type").replace_strict({k: v[0] for k, v in CATEGORY.items()}).alias("category"),
        pl.when(pl.col("disease_id").str.starts_with("ORPHA:"))
        .then(pl.lit("infores:orphanet"))
        .otherwise(pl.lit("infores:omim"))
        .alias("primary_knowledge_source"),
        pl.lit("infores:hpo-annotations").alias("aggregator_knowledge_source"),
        pl.lit("False").alias("negated"),
    ).sort("subject", "object")
    text = io.BytesIO()
    kgx.write_csv(text, separator="\t")
    OUT.write_bytes(gzip.compress(text.getvalue(), compresslevel=9, mtime=0))
    print(f"{kgx.height} edges for {kgx['subject'].n_unique()} demo genes → {OUT.name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
