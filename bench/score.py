"""Scoring's memory against the size of the file scored: peak resident memory of classifying a
file read in batches (`predict_file`: `ulmfit predict --input`, and `ulmfit score` per file)
against reading it whole and classifying every row at once, on Parquet files of 1× and
`--times`× the sentences of a sample's test reviews.

    python bench/score.py [--data imdb] [--preset tiny] [--reviews 4000] [--times 5]

One classifier at the preset's size with seeded weights (`predict.seeded_classifier`). The texts
are the sentences of `--reviews` test reviews, a row each, and the larger file repeats them:
short texts, so that what a file's size can change (the rows read) is not hidden by the LSTM's
activations over a batch of long reviews. Each measurement is a fresh process that loads the
classifier and classifies one sentence (its RSS then is `loaded`), then classifies the file;
growth is its peak RSS from then on (the kernel's high-water mark, reset after loading) above
`loaded`, and the ratio is the larger file's growth over the smaller's (1.0: memory does not
grow with the file). oneDNN's primitive cache is turned off in those processes: it keeps up to
1,024 LSTM shapes (batch size by length), which on CPU adds up to a few hundred MiB whatever the
file, and would hide what grows with it (it also makes them slower, so they are not timed).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from predict import seeded_classifier
from ulmfit_core.config import get_preset
from ulmfit_core.run.layout import RunDir
from ulmfit_core.text.data import load_raw_labelled

CHILD = """
import sys
from pathlib import Path
import pyarrow.parquet as pq
from ulmfit_core.model.predict import Classifier
from ulmfit_core.stages.scoring import predict_file

def status(key):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))

mode, model, source = sys.argv[1:]
classifier = Classifier.load(model, device="cpu")
classifier.predict_raw(["A short review to warm the model up."])
loaded = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
if mode == "batches":
    predict_file(classifier, Path(source), Path(source).with_suffix(".scored.parquet"))
elif mode == "whole":
    classifier.predict_raw(pq.read_table(source).column("text").to_pylist())
print(loaded // 1024, status("VmHWM") // 1024)
"""


def measure(mode: str, model: Path, source: Path) -> tuple[int, int]:
    """(RSS with the classifier loaded, peak RSS after that), in MiB, of one fresh process
    classifying `source` in `mode`."""
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(source)],
                         env={**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--reviews", type=int, default=4000, help="test reviews whose sentences make the 1× file")
    parser.add_argument("--times", type=int, default=5, help="the larger file's size, in 1× files")
    args = parser.parse_args()
    logging.getLogger("ulmfit").setLevel(logging.WARNING)

    base = get_preset(args.preset)
    preset = replace(base, classifier=replace(base.classifier, max_len=1_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        seeded_classifier(run, args.data, preset, args.reviews)
        _, reviews, _ = load_raw_labelled(run.shards(run.raw), "test")
        texts = [s for review in reviews for s in review.split(". ") if s.strip()]
        files = {}
        for k in (1, args.times):
            files[k] = Path(tmp) / f"reviews-{k}x.parquet"
            pq.write_table(pa.table({"text": texts * k}), files[k])
        print(f"{args.preset} classifier; 1x: {len(texts)} sentences of {len(reviews)} reviews")
        for mode in ("whole", "batches"):
            (base_1, peak_1), (base_k, peak_k) = (measure(mode, run.root, files[k]) for k in files)
            growth = (peak_1 - base_1, peak_k - base_k)
            print(f"{mode:8} 1x: +{growth[0]:4} MiB   {args.times}x: +{growth[1]:4} MiB   "
                  f"growth {growth[1] / max(growth[0], 1):.2f}x   (loaded: {base_1}, {base_k} MiB)")

if __name__ == "__main__":
    main()
