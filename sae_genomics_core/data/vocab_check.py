"""Whether a dataset's genes reach a model's vocab, checked at registration from the vocab alone.

The activations run finds a dataset with no gene in the vocab only after ingest has written its
`cells`/`genes`/`datasets` rows; checking before registration keeps registration all-or-nothing. Only
the vocab is read, never weights: tiny-random's vocab is the dataset's own genes, a `dir:` model's is its
vocab.json, a hub model's is the single small vocab.json (from the Hugging Face cache, else downloaded
alone). When it cannot be had, the check is left to the activations run and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sae_genomics_core.data.gene_ids import default_resolver, map_gene_ids
from sae_genomics_core.model.specs import (
    HUB_SPECS,
    TINY_RANDOM,
    ModelUnavailable,
    model_sources,
    random_init_base,
    unknown_spec_message,
)

VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class VocabCoverage:
    """How many of a dataset's genes a model's vocab holds; `n_in_vocab` None when it could not be read."""

    model: str
    n_genes: int
    n_in_vocab: int | None
    id_source: str  # what the genes are keyed by: "Ensembl ids" or "gene symbols only (no Ensembl ids)"
    unknown_reason: str | None = None

    @property
    def refused(self) -> bool:
        return self.n_in_vocab == 0

    def summary(self) -> str:
        if self.n_in_vocab is None:
            return (
                f"not checked at registration: the vocab of {self.model} could not be read "
                f"({self.unknown_reason}); the activations run checks it"
            )
        return f"{self.n_in_vocab} of {self.n_genes} genes are in the vocab of {self.model}"

    def problem(self) -> tuple[str, str]:
        """The problem and fix of a dataset with no gene in the vocab (as the activations run words it)."""
        return (
            f"none of its {self.n_genes} genes is in the vocab of {self.model}; the genes carry {self.id_source}",
            "tahoe-x1's vocab holds unversioned human Ensembl gene ids: register the dataset with "
            "--ensembl-column <var column with ENSG ids>, or map symbols to Ensembl through HGNC "
            "(`sae-genomics annotate` fills gene_identifiers). Mouse or other species' ids do not match.",
        )


def model_vocab(spec: str, sources: dict[str, Any] | None = None) -> set[str] | None:
    """The tokens of a model spec's vocab; None for tiny-random (its vocab is the dataset's genes).

    Raises `ModelUnavailable` when the vocab cannot be had here."""
    if spec == TINY_RANDOM:
        return None
    spec = random_init_base(spec) or spec
    if spec.startswith("dir:"):
        path = Path(spec.removeprefix("dir:")).expanduser() / VOCAB_FILE
    elif spec in HUB_SPECS:
        path = _hub_vocab(spec, sources or model_sources())
    else:
        raise ValueError(unknown_spec_message(spec))
    try:
        tokens = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelUnavailable(
            f"{path} cannot be read as a vocab ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(tokens, dict):
        raise ModelUnavailable(f"{path} is not a tahoe-x1 vocab.json (a JSON object token → id)")
    return set(tokens)  # special tokens (<cls>, <pad>) never equal an Ensembl id


def _hub_vocab(spec: str, sources: dict[str, Any]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    folder = sources["sizes"][spec]["subfolder"]
    try:
        return Path(
            hf_hub_download(
                sources["hub_repo"], f"{folder}/{VOCAB_FILE}", revision=str(sources.get("revision", "main"))
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelUnavailable(f"{type(error).__name__}: {error}") from error


def vocab_coverage(genes: pl.DataFrame, spec: str, warehouse: Path) -> VocabCoverage:
    """Count the genes (`ensembl_id`, `symbol` as validation derives them) that reach the vocab of `spec`,
    keyed as the activations run keys them: Ensembl ids (symbols mapped through HGNC first); tiny-random
    falls back to the symbol."""
    has_ids = genes["ensembl_id"].is_not_null().any()
    id_source = "Ensembl ids" if has_ids else "gene symbols only (no Ensembl ids)"
    try:
        vocab = model_vocab(spec)
    except ModelUnavailable as error:
        return VocabCoverage(spec, genes.height, None, id_source, str(error))
    if vocab is None:  # tiny-random: every gene with an id or a symbol is a token
        keyed = genes["ensembl_id"].is_not_null() | genes["symbol"].is_not_null()
        return VocabCoverage(spec, genes.height, int(keyed.sum()), id_source)
    n_in_vocab = int(genes["ensembl_id"].is_in(list(vocab)).sum())
    if n_in_vocab < genes.height and genes["symbol"].is_not_null().any():
        # symbols reach the vocab through HGNC, as at ingest (the resolver loads in about a second)
        mapped, _ = map_gene_ids(
            genes.select("gene_index", "feature_name", "ensembl_id", "symbol"), default_resolver(warehouse)[0]
        )
        n_in_vocab = int(mapped["ensembl_id"].is_in(list(vocab)).sum())
    return VocabCoverage(spec, genes.height, n_in_vocab, id_source)
