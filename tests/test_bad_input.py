"""Bad input, case by case: exit status 2, one line on stderr naming the problem, nothing
written that looks complete, and never a retry."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.errors import DamagedFile, DataError
from ulmfit_core.model.predict import Classifier, LanguageModel
from ulmfit_core.model.weights import load_checkpoint, save_checkpoint
from ulmfit_core.run.layout import RunDir, read_json

from conftest import error_line, ulmfit

# (options after `run --data SAMPLE --out OUT`, the error line after "ulmfit: error: ")
RUN_OPTIONS = [
    (["--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["--limit", "-5"], "--limit must be an integer >= 1, got -5"),
    (["--shard-docs", "0"], "--shard-docs must be an integer >= 1, got 0"),
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--train-workers", "0"], "--train-workers must be an integer >= 1, got 0"),
    (["--preset", "huge"], "unknown preset 'huge' (choose from tiny, cpu, gpu, paper)"),
    (["--tokenizer", "subword", "--vocab-size", "50"], "--vocab-size must be an integer >= 100, got 50"),
    (["--vocab-size", "500"], "--vocab-size sets the subword vocabulary: give it with --tokenizer subword"),
    (["--train-resource", "GPU"], "--train-resource routes training to Dask workers that declare it: "
                                  "give the scheduler with --dask-address"),
    (["--dask-address", "localhost"], "--dask-address 'localhost': expected tcp://HOST:PORT"),
    (["--pretrained", "/no/such/weights"], "--pretrained /no/such/weights: no such file or folder "
                                           "(give none, wt103, or fastai-format weights)"),
]


@pytest.mark.parametrize("options, message", RUN_OPTIONS, ids=[" ".join(o) for o, _ in RUN_OPTIONS])
def test_bad_run_options_fail_before_anything_starts(tmp_path, sample_tarball, options, message):
    out = tmp_path / "run"
    result = ulmfit("run", "--data", sample_tarball, "--out", out, *options)
    assert error_line(result) == f"ulmfit: error: {message}"
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no server, cluster or run directory was started


def test_bidirectional_with_a_weights_folder_is_refused(tmp_path, sample_tarball):
    weights = tmp_path / "weights"
    weights.mkdir()
    line = error_line(ulmfit("run", "--data", sample_tarball, "--out", tmp_path / "run",
                             "--bidirectional", "--pretrained", weights))
    assert line.startswith("ulmfit: error: --bidirectional with --pretrained PATH")


def test_a_text_column_that_is_not_text_is_refused(tmp_path):
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3], "label": ["pos", "neg", "pos"]}), numbers)
    result = ulmfit("preprocess", "--data", numbers, "--out", tmp_path / "run")
    assert error_line(result) == f"ulmfit: error: {numbers}: the 'text' column holds int64, not text"
    assert not (tmp_path / "run").exists()


PREDICT_OPTIONS = [
    (["--bs", "0", "fine"], "--bs must be an integer >= 1, got 0"),
    (["--output", "x.csv", "fine"], "predict: --output writes the rows of --input; plain texts are printed"),
    ([], "predict: give texts, or --input FILE --output FILE"),
    (["--input", "{csv}"], "predict: --input needs --output"),
    (["--input", "{csv}", "--output", "preds.txt"], "preds.txt: expected a .csv or .parquet output file"),
    (["", "   "], "predict: nothing to classify (every text is empty)"),
]


@pytest.mark.parametrize("options, message", PREDICT_OPTIONS, ids=range(len(PREDICT_OPTIONS)))
def test_bad_predict_options(tmp_path, trained, options, message):
    csv = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"text": ["Loved it"]}), csv)
    result = ulmfit("predict", "--model", trained.root, *[o.format(csv=csv) for o in options])
    assert error_line(result) == f"ulmfit: error: {message}"
    assert not (tmp_path / "preds.txt").exists()


@pytest.mark.parametrize("options, message", [
    (["--words", "0"], "--words must be an integer >= 1, got 0"),
    (["--n", "0"], "--n must be an integer >= 1, got 0"),
    (["--temperature", "0"], "--temperature must be > 0, got 0.0"),
])
def test_bad_generate_options(trained, options, message):
    result = ulmfit("generate", "--model", trained.root, "The film", *options)
    assert error_line(result) == f"ulmfit: error: {message}"
    assert result.stdout == ""


def test_empty_and_undecodable_texts_get_no_label(tmp_path, trained):
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,text\n1,A wonderful film\n2,\n3,   \n4,\xff\xfe broken\n5,Dreadful.\n")
    out = tmp_path / "out.parquet"
    result = ulmfit("predict", "--model", trained.root, "--input", src, "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 3 of 5 rows (empty: 2, not_utf8: 1)" in result.stderr
    table = pq.read_table(out).to_pydict()
    assert table["skipped"] == [None, "empty", "empty", "not_utf8", None]
    assert [p is None for p in table["pred"]] == [False, True, True, True, False]
    assert table["p_pos"][1] is None and table["p_pos"][0] is not None
    assert table["text"][0] == "A wonderful film" and table["text"][3] is None
    plain = ulmfit("predict", "--model", trained.root, "Great!", "")
    assert plain.returncode == 0
    assert len(plain.stdout.strip().splitlines()) == 1
    assert "text 2 skipped (empty): no label" in plain.stderr
    # The same rule in the library: a missing text is skipped, not given a confident label.
    probs, skipped = Classifier.load(trained.root).predict_raw(["Fine.", None, " \n"])
    assert skipped == [None, "empty", "empty"] and torch.isnan(torch.from_numpy(probs[1:])).all()


def _damage(path, at: int = 2000) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + 256] = bytes(range(256))
    path.write_bytes(bytes(data))


def test_damaged_and_truncated_model_files_are_refused(tmp_path, trained):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.root, run.root)
    _damage(run.classifier / "model.pth")
    with pytest.raises(DamagedFile, match=rf"classifier/model\.pth: damaged .* rebuild it with `ulmfit "
                                          rf"train-classifier --out {run.root}`"):
        Classifier.load(run.root)
    line = error_line(ulmfit("predict", "--model", run.root, "Fine."))
    assert "classifier/model.pth: damaged" in line
    _damage(run.lm / "model.pth")
    with pytest.raises(DamagedFile, match=r"lm/model\.pth: damaged"):
        LanguageModel.load(run.root)
    with pytest.raises(DamagedFile, match=r"lm/model\.pth: damaged"):
        stages.export_stage(run)  # the LM changed, so the encoder is exported again: from a bad file
    data = (run.export / "encoder.pth").read_bytes()
    (run.export / "encoder.json").unlink()  # no manifest: the file itself must be readable
    (run.export / "encoder.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFile, match=r"encoder\.pth: unreadable model file"):
        stages.classifier_stage(run, get_preset("tiny"), 0)


def test_an_error_after_start_up_is_one_line_and_the_traceback_goes_to_the_log(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    out = tmp_path / "run"
    result = ulmfit("run", "--data", empty, "--out", out, "--workers", 1)
    assert error_line(result) == f"ulmfit: error: {empty}: empty corpus (no usable documents; skipped: {{}})"
    assert "Traceback" not in result.stderr and "telemetry" not in result.stderr
    assert len(result.stderr.splitlines()) < 20
    assert "Traceback (most recent call last)" in (out / "logs" / "ulmfit.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "logs", "run.json"]  # no partial raw/
    assert read_json(out / "run.json")["status"] == "failed"


def test_too_little_labelled_data_is_found_before_the_language_model(tmp_path, sample_texts):
    src = tmp_path / "one_label.csv"
    pacsv.write_csv(pa.table({"text": sample_texts[:60], "label": ["pos"] * 60}), src)
    out = tmp_path / "run"
    result = ulmfit("run", "--data", src, "--out", out, "--workers", 1)
    assert error_line(result) == (f"ulmfit: error: {src}: label column 'label': the classifier "
                                  "needs train documents of at least two labels, found ['pos']; add "
                                  "labelled train rows to the corpus")
    assert not (out / "lm").exists()  # the LM never started
    assert read_json(out / "run.json")["status"] == "failed"


def test_a_failed_ingest_leaves_the_earlier_run_as_it_was(tmp_path, preprocessed, sample_tarball):
    run = RunDir(tmp_path / "run")
    shutil.copytree(preprocessed, run.root)
    before = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    data = sample_tarball.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable or truncated archive"):
        stages.ingest_stage(run, str(cut), limit=None, seed=0, shard_docs=60)
    after = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    assert after == before  # raw shards, _ingest.json, tokens and ids all still of one source


def test_a_damaged_checkpoint_is_refused_not_resumed(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, "fp", phase=0, epoch=1, model={"w": torch.arange(4000.0)})
    assert load_checkpoint(path, "fp")["epoch"] == 1 and load_checkpoint(path, "other") is None
    _damage(path, at=len(path.read_bytes()) // 2)
    with pytest.raises(DamagedFile, match=r"checkpoint\.pth: damaged checkpoint \(its SHA-256 differs"):
        load_checkpoint(path, "fp")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DamagedFile, match=r"damaged checkpoint \(unreadable.*delete it to train this stage"):
        load_checkpoint(path, "fp")


def test_a_classifier_preset_other_than_the_encoders_is_refused(tmp_path, trained):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.root, run.root)
    with pytest.raises(ValueError, match=r"the exported encoder has model .*, but preset 'cpu' builds "
                                         r".*: use the LM's preset"):
        stages.classifier_stage(run, get_preset("cpu"), 0)


def test_an_ensemble_of_predictions_for_different_reviews_is_refused(tmp_path, trained):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.root, run.root)
    stages.evaluate_stage(run)
    predictions = pq.read_table(run.classifier.predictions)
    backward = run.direction(True)
    backward.classifier.path.mkdir(parents=True)
    pq.write_table(predictions.slice(1), backward.classifier.predictions)
    with pytest.raises(ValueError, match="forward and backward test predictions cover different reviews"):
        stages.ensemble_stage(run)
