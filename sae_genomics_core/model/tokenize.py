"""Cells → tahoe-x1 token sequences, exactly as tahoe-x1 was trained (notes §5).

Per cell: every entry stored in its sparse row for a gene in the vocab, in var order, explicitly
stored zeros included (upstream's CountDataset takes the row's stored entries as they are); per-cell
rank binning as upstream's `binning`: 50 quantile edges over the cell's non-zero values,
`bucketize(right=False)` + 1 in float32 with torch, so non-zero values get bins 1..num_bins-1 and
stored zeros bin 1; `<cls>` first with the pad value; when a cell has more genes than
`max_length - 1`, a subset sampled with a generator seeded by (seed, cell index), so the same cell
always gets the same tokens whatever the batch; padding with the pad token and value. A cell with no
non-zero value is skipped (upstream's binning fails on it). Dense matrices store no zeros (upstream
converts them to CSR the same way). With a drug token (the 3B model run with its chemical encoder) the
`<drug>` token follows `<cls>` with the pad value, and both are kept first (`keep_first_n_tokens` 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
# Bumped when the same cells would give other tokens (2: explicitly stored zeros became tokens), so that
# extractions made before are not reused.
TOKENIZER_VERSION = 2


@dataclass(frozen=True)
class GeneVocab:
    token_to_id: dict[str, int]

    @classmethod
    def from_file(cls, path: Path | str) -> GeneVocab:
        with open(path) as handle:
            mapping = json.load(handle)
        if not isinstance(mapping, dict) or "<cls>" not in mapping or "<pad>" not in mapping:
            raise ValueError(
                f"{path} is not a tahoe-x1 vocab.json (a JSON object token → id with <cls> and <pad>)"
            )
        return cls({str(k): int(v) for k, v in mapping.items()})

    @classmethod
    def from_genes(cls, genes: list[str]) -> GeneVocab:
        """A vocab over a dataset's own genes (for tiny-random): special tokens first, as tahoe-x1 appends them."""
        unique = list(dict.fromkeys(g for g in genes if g))
        tokens = [*unique, *SPECIAL_TOKENS]
        return cls({token: index for index, token in enumerate(tokens)})

    def __len__(self) -> int:
        return len(self.token_to_id)

    @property
    def cls_id(self) -> int:
        return self.token_to_id["<cls>"]

    @property
    def pad_id(self) -> int:
        return self.token_to_id["<pad>"]

    def ids_for(self, genes: list[str | None]) -> np.ndarray:
        """Vocab id per gene, -1 where the gene (or its missing id) is not in the vocab."""
        lookup = self.token_to_id
        return np.array(
            [lookup.get(g, -1) if g and g not in SPECIAL_TOKENS else -1 for g in genes], dtype=np.int64
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.token_to_id))


def bin_values(values: np.ndarray, num_bins: int) -> np.ndarray:
    """tahoe-x1's per-cell rank binning of non-negative values: float32 quantiles of the non-zero values
    give them bins 1..num_bins-1; zeros get bin 1 (as upstream's `binning`)."""
    row = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    positive = row > 0
    bins = torch.ones(row.shape, dtype=torch.int64)
    if bool(positive.any()):
        grades = torch.linspace(0, 1, num_bins - 1, dtype=torch.float32)
        edges = torch.quantile(row[positive], grades)
        bins[positive] = torch.bucketize(row[positive], edges, right=False) + 1
    return bins.numpy()


@dataclass
class TokenBatch:
    genes: torch.Tensor  # (B, S) vocab ids, pad id where padded
    values: torch.Tensor  # (B, S) float32 bins; pad value at <cls> and padding
    raw: torch.Tensor  # (B, S) float32 expression values before binning
    key_padding_mask: torch.Tensor  # (B, S) True for real tokens (<cls> included)
    cell_index: np.ndarray  # (B,) dataset row of each cell
    n_prefix: int = 1  # leading tokens that are not genes: <cls>, and <drug> when present

    @property
    def n_tokens(self) -> int:
        return int(self.key_padding_mask.sum())


@dataclass(frozen=True)
class Tokenizer:
    cls_id: int
    pad_id: int
    pad_value: float = -2.0
    num_bins: int = 51
    max_length: int = 1024
    seed: int = 0
    drug_token_id: int | None = None  # <drug> after <cls> (the chemical encoder fills its embedding)

    @property
    def prefix(self) -> list[int]:
        return [self.cls_id] if self.drug_token_id is None else [self.cls_id, self.drug_token_id]

    def cell_tokens(
        self, cell_index: int, columns: np.ndarray, values: np.ndarray, vocab_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Tokens of one cell from its sparse row (column indices and values); None when no value > 0 is left.

        Stored zeros stay tokens (bin 1), as upstream; validation refuses negative values.
        """
        keep = vocab_ids[columns] >= 0
        columns, values = columns[keep], values[keep]
        if not np.any(values > 0):
            return None
        order = np.argsort(columns, kind="stable")  # var order, whatever the storage order
        columns, values = columns[order], values[order].astype(np.float32)
        bins = bin_values(values, self.num_bins).astype(np.float32)
        prefix = self.prefix
        budget = self.max_length - len(prefix)
        if columns.size > budget:
            generator = np.random.default_rng((self.seed, int(cell_index)))
            chosen = np.sort(generator.choice(columns.size, size=budget, replace=False))
            columns, values, bins = columns[chosen], values[chosen], bins[chosen]
        genes = np.concatenate([prefix, vocab_ids[columns]])
        pads = [self.pad_value] * len(prefix)
        return genes, np.concatenate([pads, bins]), np.concatenate([pads, values])

    def batch(
        self, rows: sp.csr_matrix, cell_indices: np.ndarray, vocab_ids: np.ndarray
    ) -> tuple[TokenBatch | None, list[int]]:
        """Tokenise a block of cells; returns the batch (None if empty) and the cells skipped for having no gene."""
        sequences, kept, skipped = [], [], []
        for position, cell_index in enumerate(cell_indices):
            start, stop = rows.indptr[position], rows.indptr[position + 1]
            tokens = self.cell_tokens(
                int(cell_index), rows.indices[start:stop], rows.data[start:stop], vocab_ids
            )
            if tokens is None:
                skipped.append(int(cell_index))
            else:
                sequences.append(tokens)
                kept.append(int(cell_index))
        if not sequences:
            return None, skipped
        width = max(len(genes) for genes, _, _ in sequences)
        genes = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        values = np.full((len(sequences), width), self.pad_value, dtype=np.float32)
        raw = np.full((len(sequences), width), self.pad_value, dtype=np.float32)
        for row, (g, v, r) in enumerate(sequences):
            genes[row, : len(g)], values[row, : len(v)], raw[row, : len(r)] = g, v, r
        genes_tensor = torch.from_numpy(genes)
        return TokenBatch(
            genes=genes_tensor,
            values=torch.from_numpy(values),
            raw=torch.from_numpy(raw),
            key_padding_mask=genes_tensor != self.pad_id,
            cell_index=np.asarray(kept, dtype=np.int64),
            n_prefix=len(self.prefix),
        ), skipped
