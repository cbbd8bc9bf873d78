"""Full preprocessing wall time and peak memory: `ulmfit preprocess` on a corpus, start to finish.

    python bench/preprocess.py [--data imdb] [--limit N] [--workers 2] [--keep DIR]

Runs the real command (Prefect temporary server and Dask LocalCluster start-up included) and
samples the resident memory of the whole process tree (CLI, Prefect server, Dask scheduler and
workers) every 0.1 s. Prints wall seconds, documents per second and the peak of the summed RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process, peaks: dict) -> int:
    """Summed RSS of `proc` and its descendants; records each process's own peak in `peaks`."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
            name = " ".join(p.cmdline()[1:4])[:70]
        except psutil.Error:
            continue
        total += rss
        peaks[(p.pid, name)] = max(peaks.get((p.pid, name), 0), rss)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", default=None, help="run directory to keep (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or Path(tmp) / "run")
        cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--data", args.data, "--out", str(out)]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        cmd += ["--workers", str(args.workers)] if args.workers else []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ps, peak, peaks = psutil.Process(proc.pid), 0, {}
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps, peaks))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        stderr = proc.stderr.read()
        if proc.returncode:
            sys.exit(f"preprocess failed ({proc.returncode}):\n{stderr[-3000:]}")
        pre = json.loads((out / "preprocess.json").read_text())
    print(f"documents: {pre['docs']}  tokens: {pre['tokens']}  shards: {pre['shards']}  "
          f"vocab: {pre['vocab_size']}  skipped: {pre['skipped']}")
    print(f"wall: {wall:.1f} s (stages {pre['seconds']:.1f} s)  {pre['docs'] / wall:.0f} docs/s end to end")
    print(f"peak RSS, all processes: {peak / 2**30:.2f} GiB; each process's own peak:")
    for (pid, name), rss in sorted(peaks.items(), key=lambda kv: -kv[1]):
        print(f"  {rss / 2**20:6.0f} MiB  {name}")


if __name__ == "__main__":
    main()
