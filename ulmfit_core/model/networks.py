"""The networks: fastai's AWD-LSTM language model and classifier, as this project builds them
(saving and loading them is `weights`'s)."""

from __future__ import annotations

import torch
from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config, awd_lstm_lm_config
from fastai.text.models.core import SentenceEncoder, get_language_model, get_text_classifier
from torch import nn

from ..config import ClassifierConfig, ModelConfig



def pick_device() -> torch.device:
    """CUDA whenever this process can see a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lm_config(model: ModelConfig) -> dict:
    return {**awd_lstm_lm_config, **vars(model)}


def clas_config(model: ModelConfig) -> dict:
    return {**awd_lstm_clas_config, **vars(model)}


def build_language_model(vocab_size: int, model: ModelConfig, drop_mult: float) -> torch.nn.Module:
    return get_language_model(AWD_LSTM, vocab_size, config=lm_config(model), drop_mult=drop_mult)


class AlignedSentenceEncoder(SentenceEncoder):
    """fastai's SentenceEncoder for batches padded at the front, that loses no token.

    fastai pads a batch "first, by chunks of bptt" and runs every chunk on the rows whose first
    position in that chunk is not padding. A row that ends before the longest row gets padding at
    its end, and a shorter row after it then loses its tokens in that chunk (fastai #3379); rows
    also see different chunking than when predicted alone. Here every row is padded at the front
    only, so all rows end together, and a row joins the LSTM exactly where its text begins (its
    hidden state starts at zero, as for a single text). Chunks of at most bptt tokens are cut
    backwards from the end. Only the last `max_len` positions feed the pooling, for every row.
    With `FrontPaddedPooling` as the head, the result for a text does not depend on the batch
    it is in.

    The LSTM's state is detached between chunks (truncated backpropagation, as in fastai), so
    the gradients depend on where the chunks are cut. `batch_starts`, when set, are the text
    starts of a whole batch of which `input` holds some rows (data-parallel training): the
    chunks are then cut as for the whole batch, and so are the gradients.
    """

    batch_starts: set[int] | None = None

    def forward(self, input: torch.Tensor):  # input: (bs, sl), padded at the front
        bs, sl = input.shape
        self.reset()
        mask = input == self.pad_idx
        starts = mask.long().sum(1)  # first text position of each row
        order = torch.argsort(starts, stable=True)  # rows that start first come first
        x, starts = input[order], starts[order]
        keep = 0 if self.max_len is None else max(0, sl - self.max_len)
        cuts = set(range(sl, 0, -self.bptt)) | set(starts.tolist()) | {0, keep} | (self.batch_starts or set())
        cuts = sorted(c for c in cuts if 0 <= c <= sl)
        outs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            n = int((starts <= a).sum())  # rows whose text has begun
            if n == 0:
                continue
            out = self.module(x[:n, a:b])  # (n, b - a, emb)
            if a >= keep:
                outs.append((a, torch.cat([out, out.new_zeros(bs - n, *out.shape[1:])])))
        first = outs[0][0]
        out = torch.cat([o for _, o in outs], dim=1)  # (bs, sl - first, emb)
        out = out[torch.argsort(order)]  # back to the input's row order
        return out, mask[:, first:]


def pad_front(samples: list[tuple], pad_idx: int = 1) -> list[tuple]:
    """Pad the first field of each (tokens, ...) sample at the front to the batch's longest."""
    width = max(len(s[0]) for s in samples)
    return [(torch.cat([s[0].new_full((width - len(s[0]),), pad_idx), s[0]]), *s[1:]) for s in samples]


def concat_pool(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[last token, max, mean] over each row's real tokens, for rows padded at the front.

    fastai's `masked_concat_pool` takes the last state at `-last_lens-1`, counting padding in
    the last bptt positions: right for its chunked end padding, but with front padding a row
    shorter than bptt would pool a position that is not its last token, so its prediction
    would depend on the longest text in its batch. Here every row ends at the last position.
    """
    # output: (bs, sl, emb); mask: (bs, sl), True on padding
    lens = (~mask).sum(1, keepdim=True).to(output.dtype)  # (bs, 1)
    avg_pool = output.masked_fill(mask[:, :, None], 0).sum(1) / lens
    max_pool = output.masked_fill(mask[:, :, None], -float("inf")).max(1)[0]
    return torch.cat([output[:, -1], max_pool, avg_pool], 1)  # (bs, 3 * emb)


class FrontPaddedPooling(nn.Module):
    """fastai's `PoolingLinearClassifier` head (same layers, same weights) with `concat_pool`."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, input: tuple[torch.Tensor, torch.Tensor]):
        out, mask = input
        return self.layers(concat_pool(out, mask)), out, out


def build_classifier(vocab_size: int, n_classes: int, model: ModelConfig,
                     cfg: ClassifierConfig) -> torch.nn.Module:
    clas = get_text_classifier(AWD_LSTM, vocab_size, n_classes, seq_len=cfg.seq_len,
                               config=clas_config(model), drop_mult=cfg.drop_mult, max_len=cfg.max_len)
    clas[0] = AlignedSentenceEncoder(cfg.seq_len, clas[0].module, pad_idx=clas[0].pad_idx,
                                     max_len=cfg.max_len)
    clas[1] = FrontPaddedPooling(clas[1].layers)
    return clas


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The AWD_LSTM inside a language model or a classifier."""
    encoder = model[0]
    return getattr(encoder, "module", encoder)
