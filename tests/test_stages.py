"""The pipeline's stages called as plain functions on real reviews (no Prefect, no Dask)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ulmfit_core import stages
from ulmfit_core.config import LMConfig, get_preset
from ulmfit_core.errors import RunInUse
from ulmfit_core.model.networks import pad_front
from ulmfit_core.model.predict import Classifier, LanguageModel
from ulmfit_core.model.weights import load_model_file
from ulmfit_core.reporting import headline_figures, write_report
from ulmfit_core.run.layout import RunDir, read_json
from ulmfit_core.run.manifests import file_sha256
from ulmfit_core.run.status import tracked_run
from ulmfit_core.text.data import Docs, load_docs
from ulmfit_core.text.vocab import PAD_ID
from ulmfit_core.training import classifier_dataloaders, lm_dataloaders, train_language_model

SEED = 3


@pytest.fixture(scope="module")
def preset():
    tiny = get_preset("tiny")
    return replace(tiny, lm=replace(tiny.lm, epochs=2))


@pytest.fixture(scope="module")
def run(tmp_path_factory, preprocessed, preset) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("stages") / "run")
    shutil.copytree(preprocessed, run.root)
    stages.lm_stage(run, preset, SEED)
    stages.samples_stage(run, SEED)
    stages.export_stage(run)
    stages.classifier_stage(run, preset, SEED)
    stages.evaluate_stage(run)
    stages.baseline_stage(run)
    write_report(run, {"preset": preset.name, "seed": SEED})
    return run


def test_preprocess_summary(run):
    pre = read_json(run.preprocess_metrics)
    assert pre["docs"] == 200 and pre["shards"] == 4 and pre["skipped"] == 0
    assert pre["vocab_size"] == len(read_json(run.vocab))
    assert pre["tokens"] > 200 * 10


def test_language_model_learns(run):
    lm = read_json(run.lm / "metrics.json")
    vocab_size = len(read_json(run.vocab))
    assert lm["valid_loss"] < math.log(vocab_size) - 1.0
    assert lm["history"][-1]["valid_loss"] < lm["history"][0]["valid_loss"]
    assert math.isclose(lm["perplexity"], math.exp(lm["valid_loss"]), rel_tol=1e-3)
    assert 0 < lm["accuracy"] < 1


def test_exported_encoder_loads_without_pickled_code(run, preset):
    payload = torch.load(run.export / "encoder.pth", weights_only=True)
    assert payload["kind"] == "encoder" and payload["model"] == vars(preset.model)
    assert payload["state_dict"]["encoder.weight"].shape == (payload["vocab_size"], preset.model.emb_sz)
    assert read_json(run.export / "vocab.json") == read_json(run.vocab)
    with pytest.raises(ValueError, match="expected a 'classifier'"):
        load_model_file(run.export / "encoder.pth", "classifier")


def test_classifier_stages_and_test_metrics(run, preset):
    clas = read_json(run.classifier / "metrics.json")
    assert [s["name"] for s in clas["stages"]] == [s.name for s in preset.classifier.stages]
    assert clas["labels"] == ["neg", "pos"]
    test = read_json(run.classifier / "test.json")
    assert test["n"] == 80 and sum(map(sum, test["confusion"])) == 80
    assert test["label_counts"] == {"neg": 40, "pos": 40}


def test_metrics_and_report(run):
    metrics = read_json(run.metrics)
    for key in ("docs", "tokens", "skipped"):
        assert key in metrics["preprocess"]
    assert metrics["vocab"]["size"] > 8
    assert {"valid_loss", "accuracy", "perplexity"} <= set(metrics["lm"])
    assert metrics["test"]["n"] == 80 and metrics["device"] == "cpu"
    assert set(metrics["seconds"]) == {"preprocess", "lm forward", "classifier forward",
                                       "evaluate forward", "total"}
    assert all(isinstance(v, float) and v > 0 for v in metrics["seconds"].values())
    report = run.report.read_text()
    assert "Test accuracy" in report and "freeze_to(-2)" in report
    assert "NB-LR baseline on the same split" in report and "![training curves](curves.png)" in report
    assert (run.root / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["baseline"]["n"] == 80 and 0 <= metrics["baseline"]["accuracy"] <= 1
    figures = {row["figure"]: row["value"] for row in headline_figures(metrics)}  # the UI's table
    assert figures["test accuracy"] == metrics["test"]["accuracy"] and figures["test reviews"] == 80
    assert figures["NB-LR baseline accuracy"] == metrics["baseline"]["accuracy"]
    worst = metrics["test"]["top_losses"]
    assert len(worst) == 5
    assert [w["p_label"] for w in worst] == sorted(w["p_label"] for w in worst)
    assert all(w["id"].startswith("test/") and len(w["text"]) > 20 for w in worst)
    assert len(metrics["samples"]) == 2 and all(s.startswith("I liked this movie because")
                                                for s in metrics["samples"])
    # The report shows what the stages left: each training's first batch, the LM's samples.
    assert "Language model: input `x`" in report and "Classifier: padded review and label" in report
    assert metrics["samples"][0] in report and stages.samples_stage(run, SEED)["reused"]


def test_batched_and_single_predictions_agree(run):
    classifier = Classifier.load(run.root)
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    batched = classifier.predict_ids(docs.ids[:24], bs=8)
    single = np.concatenate([classifier.predict_ids([d], bs=1) for d in docs.ids[:24]])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(1), 1, atol=1e-5)
    texts = classifier.predict_texts(["What a wonderful, moving film.", "Dull."])
    assert texts.shape == (2, 2)


def test_predictions_do_not_depend_on_the_batch(run, preset):
    """Texts of every length from 1 token to 3 x bptt, predicted alone, in mixed batches and in
    the classifier's validation loop, get the same probabilities."""
    classifier = Classifier.load(run.root)
    bptt = preset.classifier.seq_len
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    longest = sorted(docs.ids, key=len)[-1]
    assert len(longest) >= 3 * bptt
    # Real review tokens; each length cut from a different offset so that no two rows coincide.
    texts = [longest[i % 7:i % 7 + n].copy() for i, n in enumerate(range(1, 3 * bptt + 1))]
    alone = np.concatenate([classifier.predict_ids([t], bs=1) for t in texts])
    for bs in (len(texts), 16, 5):  # all lengths in one batch; and in length-sorted batches
        np.testing.assert_allclose(classifier.predict_ids(texts, bs=bs), alone, atol=1e-5)
    rng = np.random.default_rng(0)
    model = classifier.model
    with torch.no_grad():
        for _ in range(10):  # short texts beside long ones, in any order
            pick = rng.choice(len(texts), size=6, replace=False)
            x = torch.stack([s[0] for s in pad_front([(torch.from_numpy(texts[i].astype(np.int64)),)
                                                      for i in pick], PAD_ID)])
            probs = torch.softmax(model(x)[0].float(), -1).numpy()
            np.testing.assert_allclose(probs, alone[pick], atol=1e-5)
        valid = Docs([str(i) for i in range(len(texts))], texts, ["pos"] * len(texts))
        dls = classifier_dataloaders(valid, valid, {y: i for i, y in enumerate(classifier.labels)},
                                     preset.classifier, torch.device("cpu"))
        row_of = {tuple(t.tolist()): i for i, t in enumerate(texts)}
        seen = 0
        for x, _ in dls.valid:
            probs = torch.softmax(model(x)[0].float(), -1).numpy()
            rows = [row_of[tuple(r[r != PAD_ID].tolist())] for r in x]
            np.testing.assert_allclose(probs, alone[rows], atol=1e-5)
            seen += len(rows)
    assert seen == len(texts)


def test_generation(run):
    lm = LanguageModel.load(run.root)
    a = lm.generate("The acting was", n_words=12, temperature=0.75, n=2, seed=5)
    b = lm.generate("The acting was", n_words=12, temperature=0.75, n=2, seed=5)
    assert a == b and len(a) == 2 and a[0] != a[1]
    assert all(t.startswith("The acting was ") and len(t.split()) > 5 for t in a)
    assert "xxunk" not in " ".join(a) and "xxpad" not in " ".join(a)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate("x", temperature=0)


def test_lm_batches_are_one_contiguous_stream(run, preset):
    docs = load_docs(run.shards(run.ids))
    cfg = LMConfig(bs=4, seq_len=10)
    dls = lm_dataloaders(docs, docs, cfg, torch.device("cpu"), seed=0)
    x, y = dls.valid.one_batch()  # valid: unshuffled
    stream = np.concatenate(docs.ids)
    row_len = (len(stream) - 1) // cfg.bs
    for row in range(cfg.bs):
        start = row * row_len
        assert x[row].tolist() == stream[start:start + cfg.seq_len].tolist()
        assert y[row].tolist() == stream[start + 1:start + cfg.seq_len + 1].tolist()


def test_classifier_batches_are_bucketed_and_lose_no_tokens(run, preset):
    docs = load_docs(run.shards(run.ids), splits=["train"], labelled=True)
    dls = classifier_dataloaders(docs, docs, {"neg": 0, "pos": 1}, preset.classifier, torch.device("cpu"))
    by_content = {tuple(d.tolist()) for d in docs.ids}
    seen = 0
    for dl in (dls.train, dls.valid):
        for x, _ in dl:
            lengths = (x != PAD_ID).sum(1).tolist()
            assert lengths == sorted(lengths, reverse=True)  # longest first, as the encoder needs
            for row in x:
                assert tuple(row[row != PAD_ID].tolist()) in by_content
                seen += 1
    assert seen >= len(docs)


def test_non_finite_loss_stops_training(run, preset):
    docs = load_docs(run.shards(run.ids))
    broken = replace(preset, lm=replace(preset.lm, lr=float("nan"), epochs=1))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_language_model(docs, len(read_json(run.vocab)), broken, seed=0)


def test_core_imports_no_orchestrator():
    code = ("import importlib, pkgutil, sys, ulmfit_core\n"  # every module of the core
            "for m in pkgutil.walk_packages(ulmfit_core.__path__, 'ulmfit_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(any(m == 'prefect' or m.startswith(('prefect.', 'dask', 'distributed')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_flows_load_no_model_stack():
    """Importing the flows (what the command, a flow run and every Dask worker that unpickles a
    task import, tasks and stages with them) loads neither torch, fastai, spaCy nor matplotlib:
    those load in the processes that train, tokenize or plot, when they do."""
    code = ("import sys, flows.cli, flows.pipeline\n"
            "print(sorted(m for m in ('torch', 'fastai', 'spacy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_layout_names_every_room_of_the_core():
    """README's layout section names each folder of the core (`text/`) and each module in it
    (`tokenize`), and nothing that is no longer there."""
    import ulmfit_core

    root = Path(ulmfit_core.__file__).parent
    readme = (root.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    core = layout.split("- `ulmfit_core/`", 1)[1].split("\n- `tasks/`", 1)[0]
    folders = {p.parent.name for p in root.glob("*/__init__.py")}
    modules = {p.stem for p in root.rglob("*.py") if p.stem != "__init__"}
    assert {f for f in folders if f"`{f}/`" not in core} == set()
    assert {m for m in modules if f"`{m}`" not in core} == set()
    named = set(re.findall(r"`([a-z_]+)/`", core))
    assert named <= folders, named - folders


def test_seeded_training_repeats_exactly(run, preset):
    docs = load_docs(run.shards(run.ids))
    one_epoch = replace(preset, lm=replace(preset.lm, epochs=1))
    vocab_size = len(read_json(run.vocab))
    _, first = train_language_model(docs, vocab_size, one_epoch, seed=11)
    _, again = train_language_model(docs, vocab_size, one_epoch, seed=11)
    def drop_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert drop_time(first["history"]) == drop_time(again["history"])


def test_rerun_reuses_every_unchanged_stage(run, preset):
    counts = sorted(str(p) for p in run.tokens.glob("counts-*.parquet"))
    assert stages.vocab_stage(run, preset, counts)["reused"]
    assert stages.lm_stage(run, preset, SEED)["reused"]
    assert stages.export_stage(run)["reused"]
    assert stages.classifier_stage(run, preset, SEED)["reused"]
    assert stages.evaluate_stage(run)["reused"]


def test_a_changed_setting_recomputes_that_stage_and_what_follows(run, preset, tmp_path):
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.root, copy.root)
    before = read_json(copy.classifier / "test.json")
    assert stages.lm_stage(copy, preset, SEED)["reused"]
    changed = replace(preset, classifier=replace(preset.classifier, drop_mult=0.3))
    assert not stages.classifier_stage(copy, changed, SEED)["reused"]
    after = stages.evaluate_stage(copy)
    assert not after["reused"] and after["n"] == before["n"]
    assert stages.classifier_stage(copy, changed, SEED)["reused"]  # and now that one is current


def test_lineage_links_every_artifact_to_its_inputs(run):
    lineage = read_json(run.root / "lineage.json")
    assert lineage["code"]["ulmfit"] and "torch" in lineage["libraries"]
    art = lineage["artifacts"]

    def inputs(path):
        return {i["path"] for i in art[path]["inputs"]}

    ids = {f"ids/{p.name}" for p in run.shards(run.ids)}
    assert inputs("classifier/model.pth") == {"export/encoder.pth"} | ids
    assert inputs("export/encoder.pth") == {"lm/model.pth"}
    assert inputs("lm/model.pth") == {"vocab.json"} | ids
    assert inputs("vocab.json") == {f"tokens/{p.name}" for p in run.tokens.glob("counts-*.parquet")}
    assert inputs("ids/part-00000.parquet") == {"tokens/part-00000.parquet", "vocab.json"}
    assert inputs("tokens/part-00000.parquet") == {"raw/part-00000.parquet"}
    assert inputs("classifier/baseline.json") == {f"raw/{p.name}" for p in run.shards(run.raw)}
    assert art["raw/part-00000.parquet"]["source"]["path"].endswith(".tar.gz")
    assert art["lm/model.pth"]["settings"]["seed"] == SEED
    for path, entry in art.items():  # every recorded hash is the file's
        if (run.root / path).is_file() and path not in ("lineage.json",):
            assert entry["sha256"] == file_sha256(run.root / path), path
    tree = subprocess.run([sys.executable, "-m", "flows.cli", "lineage", str(run.root),
                           "--artifact", "classifier/model.pth"], capture_output=True, text=True)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[1].startswith("└── classifier/model.pth  [classifier]  sha256:")
    assert any("export/encoder.pth" in line for line in lines)
    assert any(f"ids/ {len(ids)} × id shard" in line for line in lines)
    assert any("[source]" in line for line in lines)
    assert lines[2].strip().startswith("settings: model.emb_sz=96, model.n_hid=192")
    assert f"seed={SEED}" in lines[2] and "classifier.bs=32" in lines[2]


def test_a_run_directory_in_use_is_refused(tmp_path):
    code = ("import sys, time; from ulmfit_core.run.layout import RunDir; from ulmfit_core.run.status import tracked_run\n"
            "with tracked_run(RunDir(sys.argv[1]), {}):\n"
            "    print('holding', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunInUse, match=f"pid {holder.pid} on"):
            with tracked_run(RunDir(tmp_path), {}):
                pass
    finally:
        holder.kill()
        holder.wait()
    with tracked_run(RunDir(tmp_path), {"again": True}):  # a dead holder leaves the lock free
        assert read_json(tmp_path / "run.json")["status"] == "running"
    assert read_json(tmp_path / "run.json")["status"] == "complete"


def test_a_scheduled_run_waits_for_the_run_holding_its_directory(tmp_path):
    code = ("import sys, time; from ulmfit_core.run.layout import RunDir; from ulmfit_core.run.status import tracked_run\n"
            "with tracked_run(RunDir(sys.argv[1]), {}):\n"
            "    print('holding', flush=True); time.sleep(float(sys.argv[2]))\n")

    def hold(seconds: float) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        return holder

    holder = hold(60)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunInUse, match=r"in use by a run still going .* \(waited 1 s\)"):
            with tracked_run(RunDir(tmp_path), {}, wait_s=1):
                pass
        assert 1 <= time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    holder, t0 = hold(3), time.monotonic()
    with tracked_run(RunDir(tmp_path), {"waited": True}, wait_s=120):
        assert time.monotonic() - t0 >= 2  # the directory became this run's once the other ended
    assert holder.wait(timeout=30) == 0
    assert read_json(tmp_path / "run.json")["params"] == {"waited": True}


def test_a_run_directory_keeps_the_settings_it_was_made_with(tmp_path):
    run = RunDir(tmp_path)
    with tracked_run(run, {"preset": "cpu", "seed": 0, "tokenizer": "word"}):
        pass
    with pytest.raises(ValueError, match=r"holds a run made with preset 'cpu'; this run asks for "
                                         r"preset 'gpu': give another --out, or --reset"):
        with tracked_run(run, {"preset": "gpu", "seed": 0}):
            pass
    assert read_json(run.status)["status"] == "complete"  # the refused run changed nothing
    with tracked_run(run, {"preset": "cpu", "seed": 0, "command": "train-lm"}):
        pass  # a stage command with the same settings
    with tracked_run(run, {"preset": "gpu", "seed": 0}, reset=True):
        pass
    assert read_json(run.status)["settings"] == {"preset": "gpu", "seed": 0, "tokenizer": "word"}


def test_show_batch_is_the_batch_training_starts_with(run, preset, monkeypatch):
    """`first_batch` against what the model's first forward pass receives in training."""
    import ulmfit_core.training.learners as train_module
    from ulmfit_core.reporting.show import first_batch, format_batch

    seen = {}

    def spy(build):
        def built(*args, **kwargs):
            model = build(*args, **kwargs)
            def record(module, inputs):  # returns None: the input goes on unchanged
                seen.setdefault(build.__name__, inputs[0].clone())

            model.register_forward_pre_hook(record)
            return model
        return built

    for name in ("build_language_model", "build_classifier"):
        monkeypatch.setattr(train_module, name, spy(getattr(train_module, name)))
    one_epoch = replace(preset, lm=replace(preset.lm, epochs=1), classifier=replace(
        preset.classifier, stages=preset.classifier.stages[:1]))
    vocab = read_json(run.vocab)
    lm_rows = first_batch(run, one_epoch, SEED, "lm", n=4)
    train_language_model(stages.training_docs(run), len(vocab), one_epoch, seed=SEED)
    x = seen["build_language_model"]
    assert [r["x"] for r in lm_rows] == [[vocab[i] for i in row] for row in x[:4].tolist()]
    for row in lm_rows:
        assert row["y"][:-1] == row["x"][1:] and len(row["x"]) == preset.lm.seq_len

    clas_rows = first_batch(run, one_epoch, SEED, "classifier", n=3)
    encoder = load_model_file(run.export / "encoder.pth", "encoder")["state_dict"]
    train_module.train_classifier(stages.training_docs(run, splits=["train"], labelled=True),
                                  encoder, len(vocab), one_epoch, seed=SEED)
    x = seen["build_classifier"]
    assert [r["tokens"] for r in clas_rows] == [[vocab[i] for i in row] for row in x[:3].tolist()]
    assert {r["label"] for r in clas_rows} <= {"neg", "pos"}
    text = format_batch(clas_rows)
    assert text.startswith("[0] ") and "xxbos" in text and "xxpad ×" in format_batch(clas_rows[1:])

    shown = subprocess.run([sys.executable, "-m", "flows.cli", "show-batch", str(run.root),
                            "--classifier", "--n", "2", "--preset", "tiny", "--seed", str(SEED)],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("[0] ") and "\n[1] " in shown.stdout and "[2]" not in shown.stdout
    assert "What the models see" in (run.root / "report.md").read_text()


def test_a_preprocessing_report_says_what_there_is(tmp_path, preprocessed):
    run = RunDir(tmp_path / "run")
    shutil.copytree(preprocessed, run.root)
    write_report(run, {"command": "preprocess", "preset": "tiny", "seed": 0})
    report = run.report.read_text()
    assert report.splitlines()[2].startswith("**Preprocessed, no model trained yet:** 200 documents")
    assert "None" not in report and "Test accuracy" not in report
    assert "What the models see" not in report  # no model trained: no batch loaded from every document
    assert not (run.root / "curves.png").exists()
