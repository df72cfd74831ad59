"""Model specs → a loaded tahoe-x1: `tahoe-x1-70m|-1.3b|-3b` (Hugging Face hub), `dir:<path>`, `tiny-random`,
`random-init:<hub spec or dir:path>`.

The hub files are fetched with huggingface_hub (cached in its cache, honouring HF_HOME,
HF_HUB_OFFLINE and HF_ENDPOINT); repo, revision and folders come from external/sources.yaml.
`tiny-random` is the real architecture with small dimensions and seeded random weights over a vocab
built from the dataset's own genes: for tests and the offline demo, and labelled as such.
`random-init:<spec>` is the baseline a real-weights run is compared with: the config and vocab of
<spec> (its weights are not read) with seeded random weights drawn by upstream's init scheme; its
model id starts with `random-init(seed=…)` and it is flagged `random_weights` like tiny-random.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sae_genomics_core.model.config import TahoeConfig
from sae_genomics_core.model.specs import (
    CONFIG_FILES,
    HUB_SPECS,
    MODEL_FILES,
    RANDOM_INIT,
    TINY_RANDOM,
    TINY_RANDOM_SHAPE,
    ModelUnavailable,
    model_sources,
    n_layers_of,
    random_init_base,
    unknown_spec_message,
)
from sae_genomics_core.model.tokenize import GeneVocab, Tokenizer
from sae_genomics_core.model.tx import TXModel, load_tahoe_state_dict, official_init_

DRUG_TOKEN = "<drug>"
DRUG_TO_ID = "drug_to_id.json"  # optional in a model folder: the collator's drug name → table row
CHEM_TABLE = "chem_encoder.embedding.weight"

__all__ = [
    "HUB_SPECS",
    "MODEL_FILES",
    "RANDOM_INIT",
    "TINY_RANDOM",
    "TINY_RANDOM_SHAPE",
    "LoadedModel",
    "ModelUnavailable",
    "load_model",
    "model_sources",
    "n_layers_of",
]


@dataclass
class LoadedModel:
    model: TXModel
    config: TahoeConfig
    vocab: GeneVocab
    model_id: str
    revision: str | None
    random_weights: bool
    vocab_from_dataset: bool = False  # tiny-random: the vocab holds the dataset's own gene keys
    drug_id: int | None = None  # the drug row fed to the chemical encoder at token 1; None: no drug token
    drug_label: str | None = None  # <pad>:<row>, <name>:<row> or row:<row> (also in model_id)

    def tokenizer(self, max_length: int | None = None, seed: int = 0) -> Tokenizer:
        return Tokenizer(
            cls_id=self.vocab.cls_id,
            pad_id=self.config.pad_token_id,
            pad_value=self.config.pad_value,
            num_bins=self.config.num_bins,
            max_length=max_length or self.config.max_length,
            seed=seed,
            drug_token_id=self.vocab.token_to_id[DRUG_TOKEN] if self.config.use_chem_token else None,
        )


def _hub_folder(
    spec: str, sources: dict[str, Any], files: tuple[str, ...] = MODEL_FILES
) -> tuple[Path, str, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    size = sources["sizes"][spec]
    repo, revision, folder = sources["hub_repo"], str(sources.get("revision", "main")), size["subfolder"]
    try:
        root = snapshot_download(
            repo_id=repo, revision=revision, allow_patterns=[f"{folder}/{name}" for name in files]
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ModelUnavailable(
            f"the weights of {spec} ({repo}@{revision}, {folder}/) cannot be downloaded or found in the "
            f"Hugging Face cache ({type(error).__name__}: {error}). Provide them in one of these ways:\n"
            f"  1. a local folder with {', '.join(MODEL_FILES)}: use the model spec dir:<path>\n"
            f"  2. the Hugging Face cache (HF_HOME) filled on a machine with network: "
            f"`hf download {repo} --include '{folder}/*' --revision {revision}`, then copy the cache here\n"
            f"  3. for a smoke run without weights: the model spec {TINY_RANDOM} (random weights)"
        ) from error
    directory = Path(root) / folder
    commit = Path(root).name  # snapshots/<commit>
    return directory, f"{repo}/{folder}", commit


def load_model(
    spec: str,
    *,
    dataset_genes: list[str | None] | None = None,
    device: str = "cpu",
    seed: int = 0,
    sources: dict[str, Any] | None = None,
    drug: str | int | None = None,
) -> LoadedModel:
    """Load a model spec. `drug` runs a model trained with a drug token (the 3B) with it: "pad" (the
    collator's <pad> drug, given to cells without a known drug), a drug name from the folder's
    drug_to_id.json (e.g. the DMSO control) or a row number of the drug table; None (the default, as
    upstream's use_chem_inf=False) leaves the token out."""
    if spec == TINY_RANDOM:
        if drug is not None:
            raise ValueError(f"{TINY_RANDOM} has no drug token; leave the drug option out")
        if not dataset_genes:
            raise ValueError(f"{TINY_RANDOM} builds its vocab from the dataset's genes; pass dataset_genes")
        return _tiny_random(dataset_genes, device, seed)
    base = random_init_base(spec)
    files = MODEL_FILES if base is None else CONFIG_FILES
    directory, model_id, revision = _model_folder(base or spec, sources, files)
    config = TahoeConfig.from_files(
        str(directory / "model_config.yml"), str(directory / "collator_config.yml")
    )
    vocab = GeneVocab.from_file(directory / "vocab.json")
    if vocab.pad_id != config.pad_token_id:
        raise ValueError(
            f"vocab.json's <pad> is {vocab.pad_id} but collator_config.yml says {config.pad_token_id}"
        )
    state = None if base is not None else load_file(str(directory / "model.safetensors"))
    drug_id, drug_label = None, None
    if drug is None:
        config = config.without_chem_token()
    else:
        config = _with_chem_shapes(config, state, spec, vocab)
        drug_id, drug_label = _drug_row(drug, config, directory)
        model_id = f"{model_id}+drug={drug_label}"
    if state is None:
        model = _seeded(config, seed, official_init_)
        model_id = f"{RANDOM_INIT}(seed={seed}):{model_id}"
    else:
        model = TXModel(config)
        load_tahoe_state_dict(model, state)
    return LoadedModel(
        model.to(device).eval(),
        config,
        vocab,
        model_id,
        revision,
        random_weights=state is None,
        drug_id=drug_id,
        drug_label=drug_label,
    )


def _with_chem_shapes(
    config: TahoeConfig, state: dict[str, torch.Tensor] | None, spec: str, vocab: GeneVocab
) -> TahoeConfig:
    """The config of a model run with its drug token, the drug table's size read from the checkpoint."""
    if not config.use_chem_token or DRUG_TOKEN not in vocab.token_to_id:
        raise ValueError(
            f"{spec} was not trained with a drug token (collator_config use_chem_token, vocab {DRUG_TOKEN}); "
            "leave the drug option out"
        )
    table = None if state is None else state.get(f"model.{CHEM_TABLE}", state.get(CHEM_TABLE))
    if table is not None:
        config = replace(config, chem_num_drugs=int(table.shape[0]), chem_fp_dim=int(table.shape[1]))
    if config.chem_num_drugs <= 0:
        raise ValueError(
            f"{spec}: the drug table's size is unknown (no {CHEM_TABLE} in the checkpoint and no "
            "chemical_encoder num_drugs/fp_dim in model_config.yml)"
        )
    return config


def _drug_row(drug: str | int, config: TahoeConfig, directory: Path) -> tuple[int, str]:
    """The drug table row for `drug` and its label: "pad", a name in drug_to_id.json, or a row number."""
    path = directory / DRUG_TO_ID
    names: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    if drug == "pad":
        row, label = names.get("<pad>", config.chem_padding_idx), "<pad>"
    elif isinstance(drug, int) or str(drug).isdigit():
        row, label = int(drug), "row"
    elif drug in names:
        row, label = int(names[str(drug)]), str(drug)
    else:
        where = f"{path} has no {drug!r}" if names else f"{directory} has no {DRUG_TO_ID}"
        raise ValueError(
            f"drug {drug!r}: {where}. Use 'pad', a row number of the drug table (0..{config.chem_num_drugs - 1}), "
            f"or put the collator's drug_to_id file (collator_config drug_to_id_path) there as {DRUG_TO_ID}"
        )
    if not 0 <= row < config.chem_num_drugs:
        raise ValueError(f"drug row {row} is outside the drug table (0..{config.chem_num_drugs - 1})")
    return row, f"{label}:{row}"


def _model_folder(
    spec: str, sources: dict[str, Any] | None, files: tuple[str, ...]
) -> tuple[Path, str, str | None]:
    """The folder holding `files` of a hub or dir: spec, its model id and revision."""
    if spec.startswith("dir:"):
        directory, model_id, revision = Path(spec.removeprefix("dir:")).expanduser(), spec, None
    elif spec in HUB_SPECS:
        directory, model_id, revision = _hub_folder(spec, sources or model_sources(), files)
    else:
        raise ValueError(unknown_spec_message(spec))
    missing = [name for name in files if not (directory / name).exists()]
    if missing:
        raise ModelUnavailable(
            f"{directory} lacks {', '.join(missing)}; a tahoe-x1 model folder holds {', '.join(MODEL_FILES)} "
            f"(as in the Hugging Face repo's <size>-model/ folders). For a smoke run use {TINY_RANDOM}."
        )
    return directory, model_id, revision


def _seeded(config: TahoeConfig, seed: int, init: Any = None) -> TXModel:
    """A TXModel with weights drawn from `seed`, leaving the global generator as it was."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = TXModel(config)
        if init is not None:
            init(model)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _tiny_random(dataset_genes: list[str | None], device: str, seed: int) -> LoadedModel:
    vocab = GeneVocab.from_genes([g for g in dataset_genes if g])
    model_config = {
        **TINY_RANDOM_SHAPE,
        "vocab_size": len(vocab),
        "transformer_activation": "relu",
        "attn_config": {"kv_n_heads": TINY_RANDOM_SHAPE["n_heads"]},
        "gene_encoder": {"use_norm": True},
        "expression_encoder": {"use_norm": True, "activation": "relu", "max_value": 512},
        "expression_decoder": {"n_layers": 1},
        "mvc": {"query_activation": "sigmoid", "scaled_dot_product": True},
    }
    config = TahoeConfig.from_dicts(model_config, {"pad_token_id": vocab.pad_id, "max_length": 1024})
    model = _seeded(config, seed)
    model_id = f"{TINY_RANDOM}(seed={seed}, d_model={config.d_model}, n_layers={config.n_layers}, vocab={len(vocab)})"
    return LoadedModel(
        model.to(device).eval(),
        config,
        vocab,
        model_id,
        revision=None,
        random_weights=True,
        vocab_from_dataset=True,
    )
