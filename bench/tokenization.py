"""Word tokenization throughput: fastai's parallel_tokenize against this project, same texts, one run.

    python bench/tokenization.py [--data PATH] [--docs 5000] [--workers 2]

fastai: `parallel_tokenize(texts, WordTokenizer(), rules=defaults.text_proc_rules, n_workers=N)`.
Project: the same texts written as raw shards, tokenized into token shards by `tokenize_shard`
tasks on a Dask LocalCluster of N single-threaded process workers (cluster start-up excluded,
shard reading and writing included). Prints both throughputs, the ratio, and whether every
document's tokens are identical.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from distributed import Client, LocalCluster
from fastai.text.core import WordTokenizer, defaults, parallel_tokenize

from ulmfit_core.config import TokenizerConfig
from ulmfit_core.text.ingest import SkipLog, iter_documents, write_raw_shards
from ulmfit_core.text.sources import open_source
from ulmfit_core.text.tokenize import tokenize_shard


def load_texts(data: str, n: int) -> list[dict]:
    return list(itertools.islice(iter_documents(open_source(data).files[0], SkipLog()), n))


def run_fastai(texts: list[str], workers: int) -> tuple[float, list[list[str]]]:
    t0 = time.perf_counter()
    out = sorted(parallel_tokenize(texts, WordTokenizer(), rules=defaults.text_proc_rules,
                                   n_workers=workers))
    return time.perf_counter() - t0, [list(toks) for _, toks in out]


def run_project(docs: list[dict], workers: int, shard_docs: int, tmp: Path) -> tuple[float, list]:
    raw = write_raw_shards(docs, tmp / "raw", shard_docs)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("ulmfit_core.text.tokenize"))  # warm imports, like fastai's pool
        t0 = time.perf_counter()
        futures = [client.submit(tokenize_shard, str(p), str(tmp / "tok" / p.name),
                                 str(tmp / "tok" / f"counts-{p.name}"), TokenizerConfig(), pure=False)
                   for p in raw]
        client.gather(futures)
        seconds = time.perf_counter() - t0
    tokens = [t for p in raw for t in pq.read_table(tmp / "tok" / p.name).column("tokens").to_pylist()]
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shard-docs", type=int, default=500)
    args = parser.parse_args()

    docs = load_texts(args.data, args.docs)
    texts = [d["text"] for d in docs]
    print(f"{len(texts)} reviews, {sum(map(len, texts)) / 1e6:.1f} M characters, {args.workers} workers")
    fastai_s, fastai_tokens = run_fastai(texts, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        ours_s, our_tokens = run_project(docs, args.workers, args.shard_docs, Path(tmp))
    same = our_tokens == fastai_tokens
    mismatches = sum(a != b for a, b in zip(our_tokens, fastai_tokens))
    n_tokens = sum(map(len, fastai_tokens))
    print(f"fastai parallel_tokenize: {len(texts) / fastai_s:8.0f} docs/s ({fastai_s:.1f} s, {n_tokens} tokens)")
    print(f"project (Dask shards):    {len(texts) / ours_s:8.0f} docs/s ({ours_s:.1f} s)")
    print(f"ratio: {fastai_s / ours_s:.2f}x   tokens identical: {same} ({mismatches} documents differ)")


if __name__ == "__main__":
    main()
