"""What a GPU node runs: training, export, evaluation and id prediction without spaCy; the
Prefect concurrency limit that keeps training tasks to one per GPU; and the wheelhouse that
installs the project there without internet."""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.testing.utilities import prefect_test_harness

from tasks.gpu import GPU_LIMIT, ensure_gpu_limit, gpu_limit_slot, training_slot
from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.run.layout import RunDir

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter where `import spacy` (and thinc, which spaCy loads) raises
# ImportError, as on a node without them. On one core: training uses every core it may, and
# two threads on a machine busy with other work spend most of their time waiting for each other.
WITHOUT_SPACY = textwrap.dedent("""
    import sys
    sys.modules["spacy"] = None
    sys.modules["thinc"] = None

    import json
    import os
    os.sched_setaffinity(0, [min(os.sched_getaffinity(0))])
    from dataclasses import replace

    from ulmfit_core import stages
    from ulmfit_core.config import get_preset
    from ulmfit_core.text.data import load_docs
    from ulmfit_core.model.predict import Classifier
    from ulmfit_core.run.layout import RunDir

    run = RunDir(sys.argv[1])
    tiny = get_preset("tiny")
    preset = replace(tiny, lm=replace(tiny.lm, epochs=1))
    stages.lm_stage(run, preset, 0)
    stages.export_stage(run)
    stages.classifier_stage(run, preset, 0)
    test = stages.evaluate_stage(run)
    docs = load_docs(run.shards(run.ids), splits=["test"], labelled=True)
    classifier = Classifier.load(run.root)
    probs = classifier.predict_ids(docs.ids[:8])
    try:
        classifier.predict_texts(["Raw text needs the tokenizer."])
        raw_text = "tokenized"
    except ImportError as exc:
        raw_text = str(exc)
    print(json.dumps({"test": test, "ids": docs.doc_ids[:8], "probs": probs.tolist(),
                      "raw_text": raw_text}))
""")


@pytest.fixture
def run(tmp_path, sample_tarball) -> RunDir:
    """Twenty reviews per (split, label) group preprocessed here, where spaCy may load: enough
    text for a batch of the tiny LM (the hand-written fallback reviews are short), trained in
    seconds."""
    run = RunDir(tmp_path / "run")
    stages.preprocess_in_process(run, str(sample_tarball), get_preset("tiny"), limit=20)
    return run


def test_training_and_evaluation_run_without_spacy(run):
    result = subprocess.run([sys.executable, "-c", WITHOUT_SPACY, str(run.root)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    for path in ("lm/model.pth", "export/encoder.pth", "classifier/model.pth", "classifier/test.json",
                 "classifier/test-predictions.parquet"):
        assert (run.root / path).exists(), path
    assert out["test"]["n"] == 40 and not out["test"]["reused"]
    # predict_ids gives the probabilities the evaluation stored for the same reviews.
    stored = pq.read_table(run.classifier / "test-predictions.parquet").to_pylist()
    by_id = {row["id"]: [row[f"p_{y}"] for y in out["test"]["labels"]] for row in stored}
    np.testing.assert_allclose(out["probs"], [by_id[i] for i in out["ids"]], atol=1e-5)
    # The block is real: the one path that tokenizes raw text is the one that needs spaCy.
    assert "spacy" in out["raw_text"]


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _limit():
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(GPU_LIMIT)


def _delete_limit():
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            pass


def test_gpu_slot_creates_the_limit_with_one_slot_and_occupies_it(prefect_server):
    _delete_limit()
    with gpu_limit_slot():
        held = _limit()
        # A second training task waits for the slot (here: gives up after a second).
        with pytest.raises(TimeoutError):
            with concurrency(GPU_LIMIT, timeout_seconds=1, strict=True):
                pass
    assert held.limit == 1 and held.active and held.active_slots == 1
    assert _limit().active_slots == 0


def test_an_existing_limit_keeps_its_size(prefect_server):
    _delete_limit()
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=3))
    ensure_gpu_limit()
    assert _limit().limit == 3
    with gpu_limit_slot(), gpu_limit_slot():  # two GPU workers train at once
        assert _limit().active_slots == 2
    assert _limit().limit == 3 and _limit().active_slots == 0


def test_training_takes_the_slot_only_on_cuda(prefect_server, monkeypatch):
    _delete_limit()
    monkeypatch.setattr("ulmfit_core.model.networks.pick_device", lambda: torch.device("cpu"))
    with training_slot():  # no limit needed, none created
        pass
    with pytest.raises(ObjectNotFound):
        _limit()
    monkeypatch.setattr("ulmfit_core.model.networks.pick_device", lambda: torch.device("cuda"))
    with training_slot():
        assert _limit().active_slots == 1
    assert _limit().active_slots == 0


def _wheelhouse_module():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "deployments" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolved(name, version, *requires):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_wheelhouse_ships_what_the_project_needs_but_torch_and_what_only_torch_needs():
    wheelhouse = _wheelhouse_module()
    report = {"environment": {"python_version": "3.11", "python_full_version": "3.11.7",
                              "sys_platform": "linux", "platform_machine": "x86_64"},
              "install": [
                  _resolved("ulmfit-pipeline", "0.1.0", "torch>=2.2", "fastai", "dask[distributed]"),
                  _resolved("fastai", "2.8.12", "torch<3", "torchvision>=0.11", "Jinja2"),
                  _resolved("torch", "2.13.0", "jinja2", "sympy", "nvidia-cublas; platform_system == 'Linux'"),
                  _resolved("torchvision", "0.28.0", "torch==2.13.0"),
                  _resolved("nvidia-cublas", "13.1"), _resolved("sympy", "1.14"), _resolved("jinja2", "3.1"),
                  _resolved("dask", "2026.8.0", "importlib_metadata; python_version < '3.12'",
                            "distributed; extra == 'distributed'"),
                  _resolved("distributed", "2026.8.0"), _resolved("importlib-metadata", "10.2")]}
    shipped, missing = wheelhouse._runtime_closure(report, "3.11")
    assert sorted(shipped) == ["dask", "distributed", "fastai", "importlib-metadata", "jinja2",
                               "ulmfit-pipeline"] and not missing
    shipped, missing = wheelhouse._runtime_closure(report, "3.12")  # markers read for 3.12
    assert "importlib-metadata" not in shipped and not missing
    report["install"] = [i for i in report["install"] if i["metadata"]["name"] != "distributed"]
    assert wheelhouse._runtime_closure(report, "3.11")[1] == {"distributed"}


def test_manylinux_tags_cover_every_older_glibc():
    glibc, machine, tags = _wheelhouse_module().platform_tags("manylinux_2_28_x86_64")
    assert glibc == (2, 28) and machine == "x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux_2_5_x86_64",
            "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert _wheelhouse_module().platform_tags("manylinux2014_x86_64")[0] == (2, 17)


def test_a_wheelhouse_for_another_python_is_refused_in_one_line(tmp_path):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    stamp = {"python": here, "platform": "manylinux_2_17_x86_64", "glibc": "2.17",
             "machine": platform.machine(), "not_included": ["torch", "torchvision"]}
    check = [sys.executable, str(ROOT / "deployments" / "wheelhouse.py"), "check", str(tmp_path)]
    (tmp_path / "wheelhouse.json").write_text(json.dumps(stamp))
    fits = subprocess.run(check, capture_output=True, text=True)
    assert fits.returncode == 0 and fits.stderr == ""
    (tmp_path / "wheelhouse.json").write_text(json.dumps({**stamp, "python": "3.99"}))
    refused = subprocess.run(check, capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert f"for Python 3.99, but {sys.executable} is Python {here}" in refused.stderr
