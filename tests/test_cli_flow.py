"""The `ulmfit` command end to end: Prefect flows on a Dask LocalCluster, then predict/generate."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import error_line, ulmfit
from ulmfit_core.run.layout import read_json


def test_bad_input_fails_fast_with_one_line(tmp_path, sample_tarball):
    out = tmp_path / "run"
    assert error_line(ulmfit("run", "--data", sample_tarball, "--out", out, "--preset", "huge")) == (
        "ulmfit: error: unknown preset 'huge' (choose from tiny, cpu, gpu, paper)")
    line = error_line(ulmfit("run", "--data", tmp_path / "nope.tar.gz", "--out", out))
    assert line == f"ulmfit: error: {tmp_path / 'nope.tar.gz'}: no such file or folder"
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("review,label\ngood,pos\n")
    assert error_line(ulmfit("preprocess", "--data", no_text, "--out", out)) == (
        f"ulmfit: error: {no_text}: no 'text' column (columns: review, label)")
    not_tar = tmp_path / "fake.tar.gz"
    not_tar.write_bytes(b"\x00" * 100)
    assert "fake.tar.gz: unreadable or truncated archive" in error_line(
        ulmfit("run", "--data", not_tar, "--out", out))
    assert not out.exists()  # nothing started, nothing written
    assert "no classifier model here" in error_line(ulmfit("predict", "--model", tmp_path, "hi"))


@pytest.mark.slow
def test_run_predict_generate(tmp_path, sample_tarball):
    out = tmp_path / "run"
    result = ulmfit("run", "--data", sample_tarball, "--out", out, "--preset", "tiny", "--limit", 25,
                    "--workers", 2, "--shard-docs", 40, "--seed", 1, "--bidirectional", "--lm-epochs", 2)
    assert result.returncode == 0, result.stderr[-5000:]
    for noise in ("Traceback", "| ERROR", "| WARNING", "telemetry"):  # a clean run's terminal
        assert noise not in result.stderr, result.stderr[-5000:]
    assert read_json(out / "run.json")["status"] == "complete"
    metrics = read_json(out / "metrics.json")
    assert metrics["preprocess"]["docs"] == 125 and metrics["preprocess"]["shards"] == 4
    assert metrics["preprocess"]["skipped"] == 0
    assert metrics["vocab"]["size"] == len(read_json(out / "vocab.json"))
    assert metrics["lm"]["valid_loss"] < 7 and metrics["test"]["n"] == 50
    # An option of the job spec reaches the training loop: 2 epochs, not the tiny preset's 3.
    assert len(metrics["lm"]["history"]) == 2 and read_json(out / "run.json")["params"]["lm_epochs"] == 2
    assert [s["name"] for s in metrics["classifier"]["stages"]] == ["freeze", "freeze_to(-2)", "unfreeze"]
    assert metrics["device"] == "cpu" and metrics["seconds"]["total"] > 0
    report = (out / "report.md").read_text()
    assert "Test accuracy" in report and "(forward + backward)" in report
    ensemble = metrics["ensemble"]
    assert set(ensemble) == {"forward", "backward", "ensemble"}
    assert ensemble["forward"]["accuracy"] == metrics["test"]["accuracy"]
    assert ensemble["backward"]["accuracy"] == metrics["backward"]["test"]["accuracy"]
    assert metrics["lm"]["precision"] == "bf16" and metrics["backward"]["lm"]["perplexity"] > 1
    lineage = read_json(out / "lineage.json")["artifacts"]
    assert {"lm-bwd/model.pth", "export-bwd/encoder.pth", "classifier-bwd/model.pth"} <= set(lineage)
    assert len(list((out / "tokens").glob("part-*.parquet"))) == 4
    assert len(list((out / "ids").glob("part-*.parquet"))) == 4

    pred = ulmfit("predict", "--model", out, "A superb, moving film.", "Worst movie ever.")
    assert pred.returncode == 0, pred.stderr[-3000:]
    lines = pred.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["A superb, moving film.", "Worst movie ever."]):
        label, prob, echoed = line.split("\t")
        assert label in ("neg", "pos") and 0.5 <= float(prob) <= 1 and echoed == text

    src = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"id": [7, 8, 9], "text": ["Loved it", "Hated it", None]}), src)
    pred = ulmfit("predict", "--model", out / "classifier", "--input", src, "--output", tmp_path / "o.parquet")
    assert pred.returncode == 0, pred.stderr[-3000:]
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column_names == ["id", "text", "pred", "p_neg", "p_pos", "skipped"]
    assert table.column("id").to_pylist() == [7, 8, 9]
    assert table.column("skipped").to_pylist() == [None, None, "empty"]  # a missing text: no label
    p_neg, p_pos = table.column("p_neg").to_pylist(), table.column("p_pos").to_pylist()
    assert p_neg[2] is None and p_pos[2] is None and table.column("pred").to_pylist()[2] is None
    for a, b in zip(p_neg[:2], p_pos[:2]):
        assert abs(a + b - 1) < 1e-5

    gen = ulmfit("generate", "--model", out, "I liked this movie because", "--words", 10,
                 "--temperature", 0.75, "--n", 2, "--seed", 0)
    assert gen.returncode == 0, gen.stderr[-3000:]
    texts = [t for t in gen.stdout.split("\n\n") if t.strip()]
    assert len(texts) == 2 and all(t.startswith("I liked this movie because ") for t in texts)

    # A copied run directory is a run of its own: every stage command reruns into the copy and
    # reuses everything, with the same outputs.
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(out, copy)  # copytree keeps modification times
    for command in (["preprocess", "--data", sample_tarball, "--limit", 25, "--shard-docs", 40],
                    ["train-lm", "--bidirectional", "--lm-epochs", 2], ["train-classifier", "--bidirectional"]):
        result = ulmfit(*command, "--out", copy, "--preset", "tiny", "--seed", 1)
        assert result.returncode == 0, result.stderr[-3000:]
    kept = [p.relative_to(out) for pattern in ("tokens/*", "ids/*", "vocab.json", "*/model.pth",
                                               "export*/encoder.pth", "classifier*/test.json")
            for p in out.glob(pattern)]
    assert len(kept) > 20
    for rel in kept:  # not written again
        assert (copy / rel).stat().st_mtime_ns == (out / rel).stat().st_mtime_ns, rel
    def hashes(run):  # every artifact but the summary the last command rewrote (its timings)
        return {k: v["sha256"] for k, v in read_json(run / "lineage.json")["artifacts"].items()
                if k not in ("metrics.json", "report.md")}

    assert hashes(copy) == hashes(out)
    assert str(out) not in "".join(p.read_text() for p in copy.rglob("*.json") if p.name not in (
        "run.json", "metrics.json", "lineage.json"))  # manifests hold paths relative to the run

    # Another seed into the same run directory is refused, unless asked for with --reset; then a
    # stage command reruns its part into the directory and refreshes the summary.
    clash = ulmfit("train-classifier", "--out", out, "--preset", "tiny", "--seed", 2)
    assert error_line(clash) == (f"ulmfit: error: {out} holds a run made with seed 1; this run asks "
                                 "for seed 2: give another --out, or --reset to rebuild it with the "
                                 "new settings")
    assert read_json(out / "run.json")["status"] == "complete"  # the finished run is as it was
    again = ulmfit("train-classifier", "--out", out, "--preset", "tiny", "--seed", 2, "--reset")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_json(out / "run.json")["params"]["command"] == "train-classifier"
    rerun = read_json(out / "metrics.json")
    assert rerun["test"]["n"] == 50
    assert rerun["ensemble"] is None  # the forward classifier changed: the old ensemble is gone


@pytest.mark.slow
def test_failed_run_never_looks_complete(tmp_path, sample_tarball):
    data = sample_tarball.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "run"
    line = error_line(ulmfit("run", "--data", cut, "--out", out, "--workers", 1))
    assert "cut.tar.gz: unreadable or truncated archive" in line
    status = read_json(out / "run.json")
    assert status["status"] == "failed" and "truncated" in status["error"]
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()
    assert not list((out / "raw").glob("*.tmp"))
