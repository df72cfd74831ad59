from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sae_genomics_core.model.tokenize import GeneVocab, Tokenizer, bin_values

GENES = [f"ENSG{i:011d}" for i in range(60)]


def test_bins_are_ranks_from_1_to_50() -> None:
    values = np.random.default_rng(0).gamma(1.0, 5.0, size=300) + 0.1
    bins = bin_values(values, 51)
    assert bins.min() == 1 and bins.max() == 50
    order = np.argsort(values)
    assert np.all(np.diff(bins[order]) >= 0)  # monotone in the value


def test_bins_do_not_change_under_log1p() -> None:
    counts = np.random.default_rng(1).integers(1, 200, size=500).astype(np.float32)
    assert np.array_equal(bin_values(counts, 51), bin_values(np.log1p(counts), 51))


def _tokenizer(vocab: GeneVocab, max_length: int = 1024) -> Tokenizer:
    return Tokenizer(cls_id=vocab.cls_id, pad_id=vocab.pad_id, max_length=max_length, seed=5)


def test_cell_tokens_keep_vocab_genes_in_var_order_with_cls_first() -> None:
    vocab = GeneVocab.from_genes(GENES[:50])  # genes 50..59 are not in the vocab
    ids = vocab.ids_for([*GENES, None])
    columns = np.array([55, 7, 3, 20, 9])
    values = np.array([4.0, 0.0, 2.0, 9.0, 1.0])  # an explicit zero is a token with bin 1 (as upstream)
    genes, bins, raw = _tokenizer(vocab).cell_tokens(0, columns, values, ids)
    assert genes.tolist() == [vocab.cls_id, ids[3], ids[7], ids[9], ids[20]]
    assert bins[0] == raw[0] == -2.0
    assert raw[1:].tolist() == [2.0, 0.0, 1.0, 9.0]
    positive = bin_values(np.array([2.0, 1.0, 9.0]), 51).tolist()
    assert bins[1:].tolist() == [positive[0], 1.0, positive[1], positive[2]]


def test_long_cells_are_sampled_deterministically_per_cell() -> None:
    vocab = GeneVocab.from_genes(GENES)
    ids = vocab.ids_for(GENES)
    rng = np.random.default_rng(2)
    dense = rng.integers(1, 30, size=(3, 60)).astype(np.float32)
    tokenizer = _tokenizer(vocab, max_length=11)
    rows = sp.csr_matrix(dense)
    full, _ = tokenizer.batch(rows, np.array([10, 11, 12]), ids)
    alone, _ = tokenizer.batch(sp.csr_matrix(dense[1:2]), np.array([11]), ids)
    assert full.genes.shape == (3, 11)
    assert np.array_equal(full.genes[1].numpy(), alone.genes[0].numpy())  # batch composition does not matter
    assert not np.array_equal(full.genes[0].numpy()[1:], full.genes[2].numpy()[1:])  # cells differ
    # bins come from the whole cell, before sampling (vocab ids equal column indices here)
    kept_columns = [int(g) for g in full.genes[0, 1:]]
    whole = bin_values(dense[0], 51)
    assert full.values[0, 1:].numpy().tolist() == [float(whole[c]) for c in kept_columns]


def test_batch_pads_and_reports_skipped_cells() -> None:
    vocab = GeneVocab.from_genes(GENES[:10])
    ids = vocab.ids_for(GENES)
    dense = np.zeros((3, 60), dtype=np.float32)
    dense[0, [1, 2, 3]] = [5, 6, 7]
    dense[1, 40] = 3  # only a gene outside the vocab
    dense[2, 4] = 1
    batch, skipped = _tokenizer(vocab).batch(sp.csr_matrix(dense), np.array([0, 1, 2]), ids)
    assert skipped == [1]
    assert batch.cell_index.tolist() == [0, 2]
    assert batch.genes.shape == (2, 4)
    assert batch.genes[1].tolist() == [vocab.cls_id, ids[4], vocab.pad_id, vocab.pad_id]
    assert batch.values[1, 2:].tolist() == [-2.0, -2.0]
    assert batch.key_padding_mask.sum().item() == 6


def test_vocab_file_is_checked(tmp_path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text('{"ENSG00000000001": 0}')
    with pytest.raises(ValueError, match="not a tahoe-x1 vocab"):
        GeneVocab.from_file(path)
