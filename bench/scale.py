"""How preprocessing scales with the corpus: time and peak memory of the driver and of each Dask
worker at 1×, 4× and 10× a corpus, with 1 and 2 workers.

    python bench/scale.py [--data imdb] [--base 20000] [--times 1 4 10] [--workers 1 2]
                          [--file-docs 10000] [--preset cpu] [--keep DIR]

Builds each corpus from the first `--base` reviews of `--data` (all of them with `--base 0`):
copy k of a review has its sentences rotated by k places and the id `<id>~k`, so every copy is
new text of the same vocabulary. A corpus is a dataset of Parquet files of `--file-docs` rows
(what a partitioned corpus looks like), read by `ulmfit preprocess --data DIR`, one ingest task
per file. While the command runs, the resident memory of its processes is sampled every 0.2 s:
the driver (the command: flow, Dask scheduler, ingest's join), each Dask worker, and the
temporary Prefect server. Prints, per size and worker count, the wall time and each one's peak,
with ratios against the smallest corpus measured with the same workers in this run.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.text.ingest import RAW_SCHEMA, SkipLog, iter_documents
from ulmfit_core.text.sources import open_source

from preprocess import timed  # bench/, this script's folder

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rotated(text: str, k: int) -> str:
    sentences = SENTENCE_END.split(text)
    k %= len(sentences)
    return " ".join(sentences[k:] + sentences[:k])


def base_docs(data: str, base: int) -> list[dict]:
    docs = []
    for path in open_source(data).files:
        for doc in iter_documents(path, SkipLog()):
            docs.append(doc)
            if len(docs) == base:
                return docs
    return docs


def write_corpus(docs: list[dict], times: int, folder: Path, file_docs: int) -> int:
    """`times` copies of `docs` as Parquet files of `file_docs` rows; returns the documents."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, n_files = [], 0

    def flush():
        nonlocal n_files
        pq.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), folder / f"part-{n_files:05d}.parquet")
        n_files += 1
        rows.clear()

    for k in range(times):
        for doc in docs:
            rows.append({**doc, "id": f"{doc['id']}~{k}", "text": rotated(doc["text"], k)})
            if len(rows) == file_docs:
                flush()
    if rows:
        flush()
    return times * len(docs)


def role(proc: psutil.Process, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    return "server" if "uvicorn" in " ".join(proc.cmdline()) else "worker"


def measure(corpus: Path, out: Path, workers: int, preset: str) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--data", str(corpus), "--out", str(out),
           "--preset", preset, "--workers", str(workers)]
    peaks, roles = {}, {}  # (role, pid) -> peak RSS; pid -> role

    def sample(driver: psutil.Process) -> None:
        for p in [driver, *driver.children(recursive=True)]:
            try:
                roles.setdefault(p.pid, role(p, driver.pid))
                key = (roles[p.pid], p.pid)
                peaks[key] = max(peaks.get(key, 0), p.memory_info().rss)
            except psutil.Error:
                continue

    wall = timed(cmd, sample, 0.2)
    pre = read_json(RunDir(out).preprocess_metrics)
    by_role = {r: max((v for (r2, _), v in peaks.items() if r2 == r), default=0)
               for r in ("driver", "worker", "server")}
    return {"docs": pre["docs"], "tokens": pre["tokens"], "wall": wall, **by_role,
            "workers_seen": sum(r == "worker" for r, _ in peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--base", type=int, default=20_000, help="reviews in the 1x corpus (0: all)")
    parser.add_argument("--times", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--file-docs", type=int, default=10_000, help="rows per Parquet file")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--keep", default=None, help="folder to keep the corpora and runs in")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        docs = base_docs(args.data, args.base or -1)
        corpora = {k: root / f"corpus-{k}x" for k in args.times}
        for k, folder in corpora.items():
            print(f"writing the {k}x corpus: {write_corpus(docs, k, folder, args.file_docs)} reviews",
                  flush=True)
        rows = []
        for workers in args.workers:
            for k, folder in corpora.items():
                row = measure(folder, root / f"run-{k}x-{workers}w", workers, args.preset)
                rows.append({"times": k, "workers": workers, **row})
                print(f"{k}x, {workers} workers: {row['docs']} reviews in {row['wall']:.1f} s, peak RSS "
                      f"driver {row['driver'] / 2**20:.0f} MiB, worker {row['worker'] / 2**20:.0f} MiB",
                      flush=True)
    mib = 2**20
    print(f"\n{'size':>5} {'workers':>7} {'reviews':>9} {'wall s':>8} {'x time':>7} "
          f"{'driver MiB':>10} {'x driver':>8} {'worker MiB':>10} {'x worker':>8} {'server MiB':>10}")
    for row in rows:
        first = next(r for r in rows if r["workers"] == row["workers"])
        print(f"{row['times']:>4}x {row['workers']:>7} {row['docs']:>9} {row['wall']:>8.1f} "
              f"{row['wall'] / first['wall']:>7.2f} {row['driver'] / mib:>10.0f} "
              f"{row['driver'] / first['driver']:>8.2f} {row['worker'] / mib:>10.0f} "
              f"{row['worker'] / first['worker']:>8.2f} {row['server'] / mib:>10.0f}")


if __name__ == "__main__":
    main()
