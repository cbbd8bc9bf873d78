"""Full preprocessing wall time and peak memory: `ulmfit preprocess` on a corpus, start to finish.

    python bench/preprocess.py [--data imdb] [--limits 1000 all] [--workers 2] [--keep DIR]

Runs the real command (Prefect temporary server and Dask LocalCluster start-up included) once per
corpus size (`--limit` per split and label; "all" is the whole corpus) and samples the resident
memory of the whole process tree (CLI, Prefect server, Dask scheduler and workers) every 0.1 s.
Prints wall seconds, documents per second and the peak of the summed RSS for each size, so that
memory staying flat as the corpus grows shows in one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

from ulmfit_core.run.layout import RunDir, read_json


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


def timed(cmd: list[str], sample: Callable[[psutil.Process], None], every_s: float) -> float:
    """Run the command `cmd`, calling `sample(its process)` every `every_s` seconds while it
    runs; returns its wall time, or exits with its error output if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        sample(ps)
        time.sleep(every_s)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[2:4])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall


def run(data: str, limit: int | None, workers: int | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--data", data, "--out", str(out)]
    cmd += ["--limit", str(limit)] if limit else []
    cmd += ["--workers", str(workers)] if workers else []
    peak, peaks = 0, {}

    def sample(ps: psutil.Process) -> None:
        nonlocal peak
        peak = max(peak, tree_rss(ps, peaks))

    wall = timed(cmd, sample, 0.1)
    pre = read_json(RunDir(out).preprocess_metrics)
    print(f"documents: {pre['docs']}  tokens: {pre['tokens']}  shards: {pre['shards']}  "
          f"vocab: {pre['vocab_size']}  skipped: {pre['skipped']}")
    print(f"wall: {wall:.1f} s (stages {pre['seconds']:.1f} s)  {pre['docs'] / wall:.0f} docs/s end to end")
    print(f"peak RSS, all processes: {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB); each process's own peak:")
    for (pid, name), rss in sorted(peaks.items(), key=lambda kv: -kv[1]):
        print(f"  {rss / 2**20:6.0f} MiB  {name}")
    return {"docs": pre["docs"], "wall": wall, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--limits", nargs="+", default=["1000", "all"],
                        help="documents per split and label for each run, or 'all'")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", default=None, help="folder to keep the run directories in")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in args.limits:
            out = Path(args.keep or tmp) / f"limit-{limit}"
            print(f"== limit {limit}")
            rows.append(run(args.data, None if limit == "all" else int(limit), args.workers, out))
    print("\ndocuments   wall s   peak RSS GiB")
    for row in rows:
        print(f"{row['docs']:9d} {row['wall']:8.1f} {row['peak'] / 2**30:10.2f}")


if __name__ == "__main__":
    main()
