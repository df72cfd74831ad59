"""How much of the model an SAE keeps, in the model's own terms: tahoe-x1's masked-expression loss with
a layer's activations replaced by the SAE's reconstruction.

On the SAE's held-out cells, a seeded `mask_fraction` of each cell's gene tokens becomes generative (its
expression hidden, as in training). Both heads predict the hidden bins (the expression decoder from each
token's output, the MVC decoder from the cell embedding) and the masked MSE is taken with the layer's
activations at every gene token left as computed (clean), replaced by the SAE's reconstruction (its
error term dropped), set to zero, or set to the SAE's training mean. Then, per decoder and ablation,

    loss recovered = (L_ablation − L_SAE) / (L_ablation − L_clean)

1 when the SAE keeps everything the heads use, 0 when it is no better than deleting the layer (SAELens's
CE-loss score, in tahoe-x1's losses). The model's inputs are rebuilt from the activation store's tokens,
so they are exactly those the activations came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sae_genomics_core.model.tokenize import TokenBatch
from sae_genomics_core.sae.settings import FidelitySettings, SaeStageSettings

RECONSTRUCT_TOKENS = 8192
MASK_VALUE = -1.0  # what upstream's collator puts at generative positions (the model drops it)
DECODERS = ("expr", "mvc")
ABLATIONS = ("zero", "mean")


Replace = Callable[[Tensor], Tensor]


def measure_loss_recovered(
    loaded: Any,  # sae_genomics_core.model.load.LoadedModel
    checkpoint: Path,
    store: Any,  # sae_genomics_core.activations.store.ActivationStore
    held_out_cells: np.ndarray,
    layer: int,
    settings: SaeStageSettings,
) -> dict[str, float | None]:
    """`loss_recovered` of a saved SAE on a seeded sample of its held-out cells."""
    from sae_genomics_core.sae.checkpoint import load_checkpoint

    device = str(next(loaded.model.parameters()).device)
    sae = load_checkpoint(checkpoint, device=device)
    fidelity = settings.fidelity
    cells = np.random.default_rng(fidelity.seed).permutation(held_out_cells)[: fidelity.cells]
    prefix, config = loaded.tokenizer().prefix, loaded.config
    batches = store_batches(store, cells, prefix, config.pad_token_id, config.pad_value, fidelity.batch_cells)

    def reconstruct(
        x: Tensor,
    ) -> Tensor:  # a bounded block of tokens at a time (a token's code is d_sae wide)
        flat = x.reshape(-1, x.shape[-1])
        return (
            torch.cat([sae.reconstruct(block) for block in flat.split(RECONSTRUCT_TOKENS)])
            .reshape(x.shape)
            .to(x.dtype)
        )

    mean = sae.normalizer.mean
    return loss_recovered(
        loaded.model, batches, layer, settings.hook, reconstruct, mean, fidelity, loaded.drug_id
    )


def loss_recovered(
    model: Any,  # sae_genomics_core.model.tx.TXModel
    batches: Iterator[TokenBatch],
    layer: int,
    hook: str,
    reconstruct: Replace,
    mean: Tensor,
    settings: FidelitySettings,
    drug_id: int | None = None,
) -> dict[str, float | None]:
    """The four losses per decoder (`loss_<decoder>_<variant>`) and `loss_recovered_<decoder>_<ablation>`
    (None where an ablation costs nothing, so there is nothing to recover)."""
    variants: dict[str, Replace | None] = {
        "clean": None,
        "sae": reconstruct,
        "zero": torch.zeros_like,
        "mean": lambda x: mean.to(x).expand_as(x),
    }
    squared = {(variant, decoder): 0.0 for variant in variants for decoder in DECODERS}
    scored = 0
    generator = torch.Generator().manual_seed(settings.seed)
    device = next(model.parameters()).device
    for batch in batches:
        genes, values = batch.genes.to(device), batch.values.to(device)
        real = batch.key_padding_mask.to(device)
        gene_tokens = real.clone()
        gene_tokens[:, : batch.n_prefix] = False
        hidden = gene_tokens & (torch.rand(genes.shape, generator=generator) < settings.mask_fraction).to(
            device
        )
        drugs = None if drug_id is None else torch.full((genes.shape[0],), drug_id, device=device)
        for variant, replace in variants.items():
            edit = None if replace is None else {layer: {hook: _at_gene_tokens(replace, gene_tokens)}}
            inputs = values.masked_fill(hidden, MASK_VALUE)
            with torch.no_grad():
                out = model(genes, inputs, real, drug_ids=drugs, gen_mask=hidden, edit=edit, decode=True)
            for decoder, predicted in zip(DECODERS, (out.expr_preds, out.mvc_preds), strict=True):
                squared[variant, decoder] += float(((predicted - values)[hidden].double() ** 2).sum())
        scored += int(hidden.sum())
    return _summarise(squared, scored)


def _at_gene_tokens(replace: Replace, gene_tokens: Tensor) -> Replace:
    """Replace a (B, S, d) activation at gene tokens only: <cls>, <drug> and padding keep theirs."""
    return lambda x: torch.where(gene_tokens[..., None], replace(x), x)


def _summarise(squared: dict[tuple[str, str], float], scored: int) -> dict[str, float | None]:
    losses = {
        f"loss_{decoder}_{variant}": total / max(1, scored) for (variant, decoder), total in squared.items()
    }
    result: dict[str, float | None] = dict(losses)
    for decoder in DECODERS:
        clean, spliced = losses[f"loss_{decoder}_clean"], losses[f"loss_{decoder}_sae"]
        for ablation in ABLATIONS:
            ablated = losses[f"loss_{decoder}_{ablation}"]
            gap = ablated - clean
            result[f"loss_recovered_{decoder}_{ablation}"] = (ablated - spliced) / gap if gap != 0 else None
    result["fidelity_masked_tokens"] = scored
    return result


def store_batches(
    store: Any,  # sae_genomics_core.activations.store.ActivationStore
    cells: np.ndarray,
    prefix: list[int],
    pad_id: int,
    pad_value: float,
    batch_cells: int,
) -> Iterator[TokenBatch]:
    """The model's inputs for `cells`, rebuilt from the store's tokens (genes and bins in the order the
    model saw them) behind the prefix tokens (<cls>, and <drug> when present)."""
    wanted = set(int(c) for c in cells)
    sequences: list[tuple[int, np.ndarray, np.ndarray]] = []
    for shard in store.manifest["shards"]:
        tokens = store.tokens(shard["name"])
        owners = np.asarray(tokens["cell_index"])
        present = np.flatnonzero(np.isin(owners, list(wanted)))
        if present.size == 0:
            continue
        genes, bins = np.asarray(tokens["gene_id"])[present], np.asarray(tokens["bin"])[present]
        for cell in np.unique(owners[present]):
            mine = owners[present] == cell
            sequences.append((int(cell), genes[mine], bins[mine]))
    for first in range(0, len(sequences), batch_cells):
        yield _pad(sequences[first : first + batch_cells], prefix, pad_id, pad_value)


def _pad(
    sequences: list[tuple[int, np.ndarray, np.ndarray]], prefix: list[int], pad_id: int, pad_value: float
) -> TokenBatch:
    width = len(prefix) + max(genes.size for _, genes, _ in sequences)
    genes = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    values = torch.full((len(sequences), width), pad_value, dtype=torch.float32)
    for row, (_, gene_ids, bins) in enumerate(sequences):
        end = len(prefix) + gene_ids.size
        genes[row, : len(prefix)] = torch.tensor(prefix)
        genes[row, len(prefix) : end] = torch.from_numpy(gene_ids.astype(np.int64))
        values[row, len(prefix) : end] = torch.from_numpy(bins.astype(np.float32))
    real = torch.zeros_like(genes, dtype=torch.bool)
    for row, (_, gene_ids, _) in enumerate(sequences):
        real[row, : len(prefix) + gene_ids.size] = True
    cell_index = np.array([cell for cell, _, _ in sequences])
    return TokenBatch(genes, values, values.clone(), real, cell_index, n_prefix=len(prefix))
