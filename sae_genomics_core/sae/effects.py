"""What a feature does: intervene on it at its layer and read how tahoe-x1's predictions move.

Interventions happen at the SAE's hook, at every gene token of a cell (<cls>, <drug> and padding keep
their values), with the SAE's error term kept (only the feature's share of the activation changes):
- ablate: the feature set to 0, i.e. x − z_f·d_f, with z_f its activation on the token and d_f its
  decoder direction in the layer's units (W_dec row × the SAE's input scale);
- steer: x + s·m_f·d_f at strength s, m_f the feature's mean activation where it fires (negative s
  suppresses it; a silent feature is switched on).

The rest of the model then runs on the edited activations. Readouts: the MVC decoder's predicted
expression of every gene of the dataset (it asks any vocabulary gene, not only a cell's tokens), and the
cell embedding. Each edited copy is compared with a clean copy of the same cell in the same forward
pass, so strength 0, and ablating a silent feature, change nothing, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from sae_genomics_core.model.tokenize import TokenBatch
from sae_genomics_core.sae.settings import EffectSettings

ABLATE, STEER = "ablate", "steer"
ENCODE_TOKENS = 8192  # tokens encoded at once: a dense block of 8,192 × d_sae codes


@dataclass
class EvaluatedCells:
    """Held-out cells' model inputs (one padded tensor), each feature's activity on them, the clean
    readouts, and the per-type centroids of the clean cell embeddings."""

    genes: Tensor  # (C, S)
    values: Tensor  # (C, S)
    real: Tensor  # (C, S) True for real tokens
    n_prefix: int
    cell_index: np.ndarray  # (C,) dataset rows
    activity: np.ndarray  # (C, d_sae): each feature's maximum activation over the cell's gene tokens
    mean_when_firing: np.ndarray  # (d_sae,) over gene tokens where it fires
    token_frequency: np.ndarray  # (d_sae,) share of the cells' gene tokens where it fires
    embedding: Tensor  # (C, d) clean cell embeddings

    def width(self, rows: Tensor) -> int:
        """The longest of these cells (padding is at the end): their inputs are cut to it."""
        return int(self.real[rows].sum(dim=1).max())

    def gene_tokens(self, rows: Tensor) -> Tensor:
        tokens = self.real[rows, : self.width(rows)].clone()
        tokens[:, : self.n_prefix] = False
        return tokens


@dataclass(frozen=True)
class Plan:
    """One edited copy of a cell per row: which cell, which feature, how."""

    cell: np.ndarray  # positions in EvaluatedCells
    feature: np.ndarray
    ablate: np.ndarray  # bool: ablation rows; the others add `coefficient` × d_f
    coefficient: np.ndarray
    key: list[tuple[int, str, float, str]]  # (feature, intervention, strength, cells) of each row


class Intervener:
    """Runs edited copies of evaluated cells through the model and reads out their predictions."""

    def __init__(self, loaded: Any, sae: Any, layer: int, hook: str, gene_ids: np.ndarray) -> None:
        self.model, self.sae, self.layer, self.hook = loaded.model, sae, layer, hook
        self.drug_id = loaded.drug_id
        self.device = next(self.model.parameters()).device
        self.gene_ids = gene_ids
        with torch.no_grad():
            genes = torch.as_tensor(gene_ids, dtype=torch.long, device=self.device)
            self.queries = self.model.mvc_decoder.gene_queries(self.model.gene_encoder(genes))  # (G, d)
            self.directions = (sae.sae.W_dec * sae.normalizer.scale).to(self.device)  # (d_sae, d)

    def evaluate(self, batches: Iterator[TokenBatch], settings: EffectSettings) -> EvaluatedCells:
        """Clean pass over the cells: their inputs, embeddings and every feature's activity."""
        batches = list(batches)
        config = self.model.config
        genes, values, real = _stack(batches, config.pad_token_id, config.pad_value)
        d_sae = self.directions.shape[0]
        activity, sums, counts, embeddings = [], np.zeros(d_sae), np.zeros(d_sae), []
        cell_index = np.concatenate([b.cell_index for b in batches])
        empty = np.zeros((0, d_sae)), np.zeros(d_sae), np.zeros(d_sae), torch.empty(0)
        cells = EvaluatedCells(genes, values, real, batches[0].n_prefix, cell_index, *empty)
        for rows in torch.arange(genes.shape[0]).split(settings.batch_rows):
            output = self._forward(cells, rows, capture=True)
            tokens = cells.gene_tokens(rows).to(self.device)
            per_cell = torch.zeros(len(rows), d_sae, dtype=torch.float64, device=self.device)
            owners = torch.nonzero(tokens)[:, 0]
            for chunk, owner in zip(
                *(t.split(ENCODE_TOKENS) for t in (output.captured[self.layer][self.hook][tokens], owners)),
                strict=True,
            ):
                codes = self.sae.encode(chunk).double()  # (tokens, d_sae), a bounded block at a time
                per_cell.scatter_reduce_(0, owner[:, None].expand_as(codes), codes, "amax")
                sums += codes.sum(dim=0).cpu().numpy()
                counts += (codes > 0).sum(dim=0).cpu().numpy()
            activity.append(per_cell.cpu().numpy())
            embeddings.append(output.cell_emb)
        cells.activity, cells.embedding = np.concatenate(activity), torch.cat(embeddings)
        cells.mean_when_firing = np.divide(sums, counts, out=np.zeros(d_sae), where=counts > 0)
        cells.token_frequency = counts / max(1, int(cells.gene_tokens(torch.arange(genes.shape[0])).sum()))
        return cells

    def run(self, cells: EvaluatedCells, plan: Plan, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        """For plan rows `rows`: the change in predicted expression (R, G) and the edited embeddings."""
        positions = torch.as_tensor(plan.cell[rows])
        distinct, inverse = torch.unique(positions, return_inverse=True)
        n_clean = distinct.numel()  # a clean copy of each cell goes first, through the same pass
        tokens = cells.gene_tokens(positions).to(self.device)[..., None]
        edits = (
            torch.as_tensor(plan.feature[rows], device=self.device),
            torch.as_tensor(plan.ablate[rows], device=self.device),
            torch.as_tensor(plan.coefficient[rows], dtype=torch.float32, device=self.device),
        )

        def edited(x: Tensor) -> Tensor:
            return torch.where(tokens, x + self._change(x, *edits).to(x.dtype), x)

        if self.hook == "resid_post":  # the layers up to the edit run once per cell, not once per copy
            clean = self._forward(cells, distinct, capture=True, run_to_end=False).captured[self.layer][
                self.hook
            ]
            real = cells.real[torch.cat([distinct, positions]), : clean.shape[1]].to(self.device)
            with torch.no_grad():
                output = self.model.resume(torch.cat([clean, edited(clean[inverse])]), real, self.layer)
        else:
            output = self._forward(
                cells,
                torch.cat([distinct, positions]),
                edit=lambda x: torch.cat([x[:n_clean], edited(x[n_clean:])]),
            )
        predicted = output.cell_emb @ self.queries.T
        return predicted[n_clean:] - predicted[:n_clean][inverse], output.cell_emb[n_clean:]

    def _change(self, x: Tensor, feature: Tensor, ablate: Tensor, coefficient: Tensor) -> Tensor:
        """Per row of x (R, S, d): steering adds coefficient × d_f at every position; ablation removes the
        feature's own share z_f × d_f, z_f its activation on each token."""
        direction = self.directions[feature][:, None, :]  # (R, 1, d)
        change = (coefficient[:, None, None] * direction).expand(-1, x.shape[1], -1).clone()
        if bool(ablate.any()):
            change[ablate] = -self._own_activation(x[ablate], feature[ablate])[..., None] * direction[ablate]
        return change

    def _own_activation(self, x: Tensor, feature: Tensor) -> Tensor:
        """Each row's activation of its own feature at every position (R, S), encoding a bounded block
        of rows at a time (the full code of a row is S × d_sae)."""
        rows_per_block = max(1, ENCODE_TOKENS // x.shape[1])
        own = []
        for block, features in zip(x.split(rows_per_block), feature.split(rows_per_block), strict=True):
            codes = self.sae.encode(block)  # (rows, S, d_sae)
            own.append(codes.gather(2, features[:, None, None].expand(-1, codes.shape[1], 1)).squeeze(2))
        return torch.cat(own)

    def _forward(
        self,
        cells: EvaluatedCells,
        rows: Tensor,
        capture: bool = False,
        edit: Any = None,
        run_to_end: bool = True,
    ) -> Any:
        width = cells.width(rows)
        genes, values, real = (
            t[rows, :width].to(self.device) for t in (cells.genes, cells.values, cells.real)
        )
        drugs = None if self.drug_id is None else torch.full((len(rows),), self.drug_id, device=self.device)
        captured = {self.layer: {self.hook}} if capture else None
        edits = {self.layer: {self.hook: edit}} if edit else None
        with torch.no_grad():
            return self.model(
                genes, values, real, drug_ids=drugs, capture=captured, edit=edits, run_to_end=run_to_end
            )


def _stack(batches: list[TokenBatch], pad_id: int, pad_value: float) -> tuple[Tensor, Tensor, Tensor]:
    """The batches as one (cells × longest) input, padded at the end as each batch is."""
    width = max(b.genes.shape[1] for b in batches)

    def padded(tensors: list[Tensor], fill: float) -> Tensor:
        return torch.cat([F.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors])

    genes = padded([b.genes for b in batches], pad_id)
    values = padded([b.values for b in batches], pad_value)
    real = padded([b.key_padding_mask for b in batches], False)
    return genes, values, real


def plan_effects(cells: EvaluatedCells, features: np.ndarray, settings: EffectSettings) -> Plan:
    """Per feature: ablation on up to `cells` cells where it is active; each steering strength on those
    and on as many where it is silent. Rows are feature-major, so a feature's rows finish together."""
    rng = np.random.default_rng(settings.seed)
    parts: list[tuple[np.ndarray, int, bool, float, tuple[int, str, float, str]]] = []
    for feature in features:
        active = np.flatnonzero(cells.activity[:, feature] > 0)
        silent = np.flatnonzero(cells.activity[:, feature] == 0)
        active = np.sort(rng.permutation(active)[: settings.cells])
        silent = np.sort(rng.permutation(silent)[: settings.cells])
        if active.size:
            parts.append((active, int(feature), True, 0.0, (int(feature), ABLATE, 0.0, "active")))
        for strength in settings.strengths:
            amount = strength * cells.mean_when_firing[feature]
            for group, chosen in (("active", active), ("silent", silent)):
                if chosen.size:
                    parts.append(
                        (chosen, int(feature), False, amount, (int(feature), STEER, strength, group))
                    )
    return make_plan(parts)


def steering_plan(
    cells: EvaluatedCells, feature: int, strength: float, positions: np.ndarray, group: str
) -> Plan:
    """Steer one feature on the cells at `positions` (all labelled `group`)."""
    amount = strength * cells.mean_when_firing[feature]
    return make_plan([(positions, feature, False, amount, (feature, STEER, strength, group))])


def make_plan(parts: list[tuple[np.ndarray, int, bool, float, tuple[int, str, float, str]]]) -> Plan:
    sizes = [cells.size for cells, *_ in parts]
    return Plan(
        cell=np.concatenate([cells for cells, *_ in parts]) if parts else np.zeros(0, dtype=np.int64),
        feature=np.repeat([p[1] for p in parts], sizes).astype(np.int64),
        ablate=np.repeat([p[2] for p in parts], sizes).astype(bool),
        coefficient=np.repeat([p[3] for p in parts], sizes).astype(np.float64),
        key=[p[4] for p, size in zip(parts, sizes, strict=True) for _ in range(size)],
    )


GENE_SCHEMA = {
    "feature": pl.Int64,
    "intervention": pl.String,
    "strength": pl.Float64,
    "cells": pl.String,
    "direction": pl.String,
    "rank": pl.Int64,
    "gene_id": pl.Int64,
    "effect": pl.Float64,
    "effect_sd": pl.Float64,
    "consistency": pl.Float64,
    "n_cells": pl.Int64,
}
CELL_TYPE_SCHEMA = {
    "feature": pl.Int64,
    "intervention": pl.String,
    "strength": pl.Float64,
    "cells": pl.String,
    "cell_type": pl.String,
    "cosine_shift": pl.Float64,
    "n_cells": pl.Int64,
}


@dataclass
class EffectTables:
    genes: pl.DataFrame  # per feature × intervention: the top genes up and down (GENE_SCHEMA)
    cell_types: pl.DataFrame  # per feature × intervention × cell type: embedding shift (CELL_TYPE_SCHEMA)
    n_features: int


def feature_effects(
    intervener: Intervener,
    cells: EvaluatedCells,
    features: np.ndarray,
    cell_types: np.ndarray | None,  # per evaluated cell; None: no embedding shifts
    settings: EffectSettings,
) -> EffectTables:
    """Every planned intervention, run in batches; each feature × intervention reduced once its rows ran."""
    return run_plan(intervener, cells, plan_effects(cells, features, settings), cell_types, settings)


def run_plan(
    intervener: Intervener,
    cells: EvaluatedCells,
    plan: Plan,
    cell_types: np.ndarray | None,
    settings: EffectSettings,
    each_batch: Callable[[np.ndarray, Tensor, Tensor], None] | None = None,
) -> EffectTables:
    """A plan's rows in batches of `batch_rows`, reduced per key (feature × intervention × cells);
    `each_batch(rows, delta, embedding)` also sees every batch (per-row readouts)."""
    centroids = _centroids(cells.embedding, cell_types)
    reducer = _Reducer(plan, cells, centroids, settings.top_genes, intervener.gene_ids)
    for first in range(0, len(plan.key), settings.batch_rows):
        rows = np.arange(first, min(first + settings.batch_rows, len(plan.key)))
        delta, embedding = intervener.run(cells, plan, rows)
        if each_batch is not None:
            each_batch(rows, delta, embedding)
        reducer.add(rows, delta.cpu().double().numpy(), embedding)
    genes = pl.concat(reducer.genes) if reducer.genes else pl.DataFrame(schema=GENE_SCHEMA)
    types = pl.concat(reducer.types) if reducer.types else pl.DataFrame(schema=CELL_TYPE_SCHEMA)
    return EffectTables(genes, types, int(np.unique(plan.feature).size))


def _centroids(embedding: Tensor, cell_types: np.ndarray | None) -> dict[str, Tensor]:
    if cell_types is None:
        return {}
    known = [t for t in np.unique(cell_types.astype(str)) if t != "None"]
    labels = cell_types.astype(str)
    return {t: embedding[torch.as_tensor(labels == t, device=embedding.device)].mean(dim=0) for t in known}


class _Reducer:
    """Collects each key's rows (they are consecutive) and reduces a key as soon as its last row ran."""

    def __init__(
        self, plan: Plan, cells: EvaluatedCells, centroids: dict[str, Tensor], top: int, gene_ids: np.ndarray
    ) -> None:
        self.plan, self.cells, self.centroids, self.top, self.gene_ids = plan, cells, centroids, top, gene_ids
        self.deltas: list[np.ndarray] = []
        self.embeddings: list[Tensor] = []
        self.rows: list[int] = []
        self.genes: list[pl.DataFrame] = []
        self.types: list[pl.DataFrame] = []

    def add(self, rows: np.ndarray, delta: np.ndarray, embedding: Tensor) -> None:
        for offset, row in enumerate(rows):
            if self.rows and self.plan.key[row] != self.plan.key[self.rows[-1]]:
                self._reduce()
            self.rows.append(int(row))
            self.deltas.append(delta[offset])
            self.embeddings.append(embedding[offset])
        if rows.size and rows[-1] == len(self.plan.key) - 1:
            self._reduce()

    def _reduce(self) -> None:
        feature, intervention, strength, group = self.plan.key[self.rows[0]]
        label = {"feature": feature, "intervention": intervention, "strength": strength, "cells": group}
        self.genes.append(_top_genes(np.stack(self.deltas), self.gene_ids, self.top, label))
        if self.centroids:
            embedding = self.cells.embedding
            clean = embedding[torch.as_tensor(self.plan.cell[self.rows], device=embedding.device)]
            self.types.append(_embedding_shift(clean, torch.stack(self.embeddings), self.centroids, label))
        self.deltas, self.embeddings, self.rows = [], [], []


def _top_genes(delta: np.ndarray, gene_ids: np.ndarray, top: int, label: dict[str, Any]) -> pl.DataFrame:
    """Genes by mean change of their predicted expression over the cells, `top` up and `top` down."""
    n = delta.shape[0]
    effect = delta.mean(axis=0)
    spread = delta.std(axis=0, ddof=1) if n > 1 else np.full(effect.size, np.nan)
    agreeing = (np.sign(delta) == np.sign(effect)).mean(axis=0)
    frames = []
    for direction, order in (
        ("up", np.argsort(-effect, kind="stable")),
        ("down", np.argsort(effect, kind="stable")),
    ):
        chosen = order[: min(top, order.size)]
        chosen = chosen[effect[chosen] > 0] if direction == "up" else chosen[effect[chosen] < 0]
        frames.append(
            pl.DataFrame(
                {
                    **{name: [value] * chosen.size for name, value in label.items()},
                    "direction": [direction] * chosen.size,
                    "rank": np.arange(1, chosen.size + 1),
                    "gene_id": gene_ids[chosen].astype(np.int64),
                    "effect": effect[chosen],
                    "effect_sd": spread[chosen],
                    "consistency": agreeing[chosen],
                    "n_cells": np.full(chosen.size, n),
                },
                schema=GENE_SCHEMA,
            )
        )
    return pl.concat(frames).with_columns(pl.col("effect_sd").fill_nan(None))


def _embedding_shift(
    clean: Tensor, edited: Tensor, centroids: dict[str, Tensor], label: dict[str, Any]
) -> pl.DataFrame:
    """Per cell type: the mean change of the cells' cosine similarity to the type's centroid."""
    names = list(centroids)
    stacked = torch.stack([centroids[name] for name in names]).to(clean)
    before = F.cosine_similarity(clean[:, None, :], stacked[None], dim=-1)
    after = F.cosine_similarity(edited[:, None, :], stacked[None], dim=-1)
    shift = (after - before).mean(dim=0).cpu().double().numpy()
    return pl.DataFrame(
        {
            **{name: [value] * len(names) for name, value in label.items()},
            "cell_type": names,
            "cosine_shift": shift,
            "n_cells": [clean.shape[0]] * len(names),
        },
        schema=CELL_TYPE_SCHEMA,
    )


def choose_features(activity: np.ndarray, settings: EffectSettings, on_gpu: bool) -> np.ndarray:
    """Features that fire on an evaluated cell. Capped (on CPU by default) to those whose active and
    silent cells are most balanced, so that each has cells to ablate it on and cells to switch it on in."""
    active_cells = (activity > 0).sum(axis=0)
    candidates = np.flatnonzero(active_cells > 0)
    cap = (
        settings.max_features
        if settings.max_features is not None
        else None
        if on_gpu
        else settings.max_features_cpu
    )
    if cap is not None:
        balance = np.minimum(active_cells, activity.shape[0] - active_cells)[candidates]
        candidates = candidates[np.lexsort((-active_cells[candidates], -balance))[:cap]]
    return np.sort(candidates)
