"""The device language-model loader gives fastai's LMDataLoader batches exactly, epoch after epoch."""

from __future__ import annotations

import random

import pytest
import torch
from fastai.text.data import LMDataLoader, LMTensorText
from fastai.torch_core import set_seed

from ulmfit_core.model.weights import rng_state, set_rng_state
from ulmfit_core.run.layout import RunDir
from ulmfit_core.text.data import load_docs
from ulmfit_core.training.lmdata import DeviceLMDataLoader

EPOCHS = 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def epochs_of(cls, docs, bs: int, seq_len: int, shuffle: bool, seed: int, device: str = "cpu"):
    """(batches of each epoch, Python's random state after, the loader's rng state after)."""
    set_seed(seed)
    dl = cls(docs, bs=bs, seq_len=seq_len, shuffle=shuffle, device=device)
    batches = [[(x.cpu().clone(), y.cpu().clone(), type(x), type(y)) for x, y in dl]
               for _ in range(EPOCHS)]
    return batches, random.getstate(), dl.rng.getstate()


def assert_same_as_fastai(docs, bs: int, seq_len: int, shuffle: bool, seed: int, device: str = "cpu"):
    want, want_random, want_rng = epochs_of(LMDataLoader, docs, bs, seq_len, shuffle, seed)
    got, got_random, got_rng = epochs_of(DeviceLMDataLoader, docs, bs, seq_len, shuffle, seed, device)
    assert got_random == want_random and got_rng == want_rng  # the same random draws
    assert any(len(epoch) for epoch in want), "a case without batches checks nothing"
    for epoch, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(w), f"epoch {epoch + 1}: {len(g)} batches, fastai {len(w)}"
        for i, ((gx, gy, gtx, gty), (wx, wy, wtx, wty)) in enumerate(zip(g, w)):
            assert (gtx, gty) == (wtx, wty) == (LMTensorText, torch.Tensor)
            assert torch.equal(gx.as_subclass(torch.Tensor), wx.as_subclass(torch.Tensor)), \
                f"epoch {epoch + 1}, batch {i + 1}: x differs"
            assert torch.equal(gy, wy), f"epoch {epoch + 1}, batch {i + 1}: y differs"
    return want


@pytest.fixture(scope="module")
def imdb_ids(preprocessed) -> list[torch.Tensor]:
    """Real reviews' token ids (the conftest sample: IMDB when ULMFIT_IMDB is set)."""
    run = RunDir(preprocessed)
    return [torch.from_numpy(d.astype("int64")) for d in load_docs(run.shards(run.ids)).ids]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,bs,seq_len", [(0, 32, 48), (1, 64, 72), (7, 13, 80), (3, 1, 200)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_real_reviews_give_fastais_batches(imdb_ids, seed, bs, seq_len, shuffle, device):
    batches = assert_same_as_fastai(imdb_ids, bs, seq_len, shuffle, seed, device)
    streams = {tuple(torch.cat([x.flatten() for x, *_ in epoch]).tolist()) for epoch in batches}
    assert len(streams) == (EPOCHS if shuffle else 1)  # each epoch its own document order


def _docs(lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 500, (n,), generator=g) for n in lengths]


# (document lengths, bs, seq_len): what each case makes fastai do at the edges.
EDGE_CASES = {
    # 81 tokens = bs * 5 * seq_len + 1: whole batches only, nothing left over
    "exact": ([20, 21, 40], 2, 8),
    # 83 tokens: 82 // 4 = 20 per row, batches of 6, 6, 6 and a short 2; two tokens unused
    "short last batch": ([30, 20, 33], 4, 6),
    # rows shorter than seq_len: a single short batch
    "one short batch": ([9, 4, 4], 3, 50),
    # empty documents between others, a one-token document, one row
    "empty documents": ([5, 0, 1, 0, 12, 7, 0], 1, 4),
    # many small documents, so the shuffle moves document edges inside every batch
    "many documents": ([3, 1, 7, 2, 9, 4, 4, 6, 1, 8] * 6, 5, 7),
    # the stream one token longer than a multiple of bs (all used), and one shorter (bs - 2 unused)
    "stream 1 over": ([17, 9, 7], 8, 3),
    "stream 1 under": ([16, 8, 7], 8, 3),
}


@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("seed", [0, 5, 42])
@pytest.mark.parametrize("shuffle", [True, False])
def test_edge_cases_give_fastais_batches(case, seed, shuffle):
    lengths, bs, seq_len = EDGE_CASES[case]
    assert_same_as_fastai(_docs(lengths, seed), bs, seq_len, shuffle, seed)


def test_the_edge_cases_reach_the_edges():
    """The cases above do what their names say, in fastai's own loader."""
    def loader(case):
        lengths, bs, seq_len = EDGE_CASES[case]
        return LMDataLoader(_docs(lengths, 0), bs=bs, seq_len=seq_len)
    exact = loader("exact")
    assert exact.last_len == exact.seq_len and exact.bl * exact.bs + 1 == 81
    short = loader("short last batch")
    assert (short.n_batches, short.last_len) == (4, 2)
    one = loader("one short batch")
    assert (one.n_batches, one.last_len) == (1, 5)
    assert loader("stream 1 over").bl == loader("stream 1 under").bl + 1


def test_batches_are_views_of_one_tensor_per_epoch(imdb_ids):
    dl = DeviceLMDataLoader(imdb_ids, bs=16, seq_len=40, shuffle=True)
    assert len(dl) == dl.n_batches > 2
    for _ in range(2):
        storages = {t.untyped_storage().data_ptr() for batch in dl for t in batch}
        assert len(storages) == 1  # no per-batch copies: every x and y views the epoch's rows
    x, y = dl.one_batch()
    assert x.shape == y.shape == (16, 40) and torch.equal(x[:, 1:], y[:, :-1])
    again = dl.new(shuffle=False)
    assert type(again) is DeviceLMDataLoader and len(again) == len(dl)


def test_checkpointed_loader_state_resumes_the_same_batches(imdb_ids):
    """`rng_state` after an epoch, restored into a fresh loader (as a resumed run does), gives
    the batches the first loader gives next."""
    set_seed(3)
    dl = DeviceLMDataLoader(imdb_ids, bs=24, seq_len=30, shuffle=True)
    list(dl)
    saved = rng_state({"train": dl})
    expected = [[x.clone() for x, _ in dl] for _ in range(2)]

    set_seed(99)  # a new process: other generator states, documents in their first order
    fresh = DeviceLMDataLoader(imdb_ids, bs=24, seq_len=30, shuffle=True)
    set_rng_state(saved, {"train": fresh})
    resumed = [[x.clone() for x, _ in fresh] for _ in range(2)]
    for want, got in zip(expected, resumed):
        assert len(want) == len(got)
        assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_the_project_loaders_draw_fastais_numbers_whatever_other_threads_draw(preprocessed):
    """`train.lm_dataloaders` gives, for a seed, the batches of fastai's loaders built right
    after `set_seed` in one thread, even when Python's generator is drawn from meanwhile (as
    a Dask worker's other threads do): data-parallel ranks must agree on every batch."""
    from ulmfit_core.config import LMConfig
    from ulmfit_core.training import lm_dataloaders

    docs = load_docs(RunDir(preprocessed).shards(RunDir(preprocessed).ids))
    train, valid = docs.split(0.1, 0, "lm-valid")
    cfg, seed = LMConfig(bs=8, seq_len=20), 5

    def epochs(dl) -> list[list[torch.Tensor]]:
        return [[x.as_subclass(torch.Tensor).clone() for x, _ in dl] for _ in range(EPOCHS)]

    set_seed(seed)
    fastai = LMDataLoader([torch.from_numpy(d.astype("int64")) for d in train.ids], bs=cfg.bs,
                          seq_len=cfg.seq_len, shuffle=True)
    LMDataLoader([torch.from_numpy(d.astype("int64")) for d in valid.ids], bs=cfg.bs, seq_len=cfg.seq_len)
    want = epochs(fastai)
    set_seed(seed)
    random.random()  # another thread's draws, before the loaders are built and between epochs
    ours = lm_dataloaders(train, valid, cfg, torch.device("cpu"), seed).train
    got = []
    for _ in range(EPOCHS):
        got.append([x.as_subclass(torch.Tensor).clone() for x, _ in ours])
        random.random()
    assert len(want[0]) > 2 and len({tuple(e[0].flatten().tolist()) for e in want}) == EPOCHS
    assert all(torch.equal(g, w) for ge, we in zip(got, want) for g, w in zip(ge, we))
