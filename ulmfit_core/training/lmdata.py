"""The language model's batches as views of one token tensor on the training device.

fastai's `LMDataLoader` builds every batch in Python: bs slices of the document list, each
concatenated, then collated (about 5.7 ms for bs 128 x seq 80, a fifth of a GPU step). Yet its
batches depend on nothing but the epoch's document order: with the documents concatenated in
that order and `bl` tokens per row, row r of batch i is the stream from r * bl + i * seq_len,
and its target the same shifted by one token. So here each epoch lays the documents out once,
on the device, as `bs` rows of `bl + 1` tokens, and every batch is a pair of views of them.

Everything else is fastai's loader: the document shuffle (`ReindexCollection.shuffle`'s, with
Python's global `random` or the generator given to `shuffle_with`), the draws from `rng` each
epoch, the number of batches and the short last batch, so the batches are fastai's exactly, and
a checkpoint's saved document order (`items.idxs`, see `weights.rng_state`) resumes it as it
resumes fastai's.
"""

from __future__ import annotations

import random

import torch
from fastai.text.data import LMDataLoader, LMTensorText


class DeviceLMDataLoader(LMDataLoader):
    """fastai's `LMDataLoader` over documents of token ids (tensors or arrays), with each batch
    cut as views of the epoch's rows on `device` instead of collated from per-row slices."""

    def __init__(self, dataset, lens=None, cache=2, bs=64, seq_len=72, num_workers=0, **kwargs):
        super().__init__(dataset, lens=lens, cache=cache, bs=bs, seq_len=seq_len,
                         num_workers=num_workers, **kwargs)
        docs = [torch.as_tensor(self.items.tfm(d)) for d in self.items.coll]
        self.tokens = torch.cat(docs).long() if docs else torch.zeros(0, dtype=torch.long)
        self.doc_lens = torch.tensor(list(self.lens.coll), dtype=torch.long)
        self.doc_starts = self.doc_lens.cumsum(0) - self.doc_lens
        self.tokens_device = None  # where `tokens` is: moved to the loader's device once
        self.order_random: random.Random | None = None  # see `shuffle_with`

    def shuffle_with(self, generator: random.Random) -> None:
        """Shuffle the documents with `generator` instead of Python's global generator, which
        fastai draws from when an epoch starts: in a Dask worker other threads draw from that
        one too (timer jitter, dask.sizeof), so the order would depend on timing, and
        data-parallel ranks would disagree on it."""
        self.order_random = generator

    def shuffle_fn(self, idxs):
        if self.order_random is None:
            return super().shuffle_fn(idxs)
        self.order_random.shuffle(self.items.idxs)  # what ReindexCollection.shuffle does
        self.make_chunks()
        return idxs

    def rows(self) -> torch.Tensor:
        """The documents in their current order as a (bs, bl + 1) view on the device: row r is
        the stream from r * bl, one token longer than `bl` for the last target."""
        device = self.device or torch.device("cpu")
        if self.tokens_device != device:
            self.tokens, self.doc_lens, self.doc_starts = (
                t.to(device) for t in (self.tokens, self.doc_lens, self.doc_starts))
            self.tokens_device = device
        order = torch.tensor(list(self.items.idxs), dtype=torch.long).to(self.tokens.device)
        lens, starts = self.doc_lens[order], self.doc_starts[order]
        # Stream position p of document d (placed at offset o) reads tokens[starts[d] + p - o].
        shift = starts - (lens.cumsum(0) - lens)
        index = torch.repeat_interleave(shift, lens, output_size=len(self.tokens))
        index += torch.arange(len(index), device=index.device)
        stream = self.tokens[index[:self.bs * self.bl + 1]]
        return stream.unfold(0, self.bl + 1, self.bl)

    def __iter__(self):
        # DataLoader.__iter__'s steps, in its order, so the random draws are the same.
        self.randomize()
        self.before_iter()
        self.get_idxs()  # with shuffle, reorders items.idxs (LMDataLoader.shuffle_fn)
        rows = self.rows() if self.n_batches else None  # fewer tokens than rows: no batch
        for i in range(self.n_batches):
            start = i * self.seq_len
            sl = self.last_len if i == self.n_batches - 1 else self.seq_len
            yield self.after_batch((LMTensorText(rows[:, start:start + sl]),
                                    rows[:, start + 1:start + sl + 1]))
        self.after_iter()
