"""Operating the pipeline for real: a `prefect server start` on loopback, the `cpu` work pool, the
preprocessing deployment from deployments/prefect.yaml, a `prefect worker`, a run triggered through
the API, and the Prefect UI checked in headless Chromium (Selenium with Debian's chromedriver)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import BIN, ROOT, Server, until as _until

pytestmark = pytest.mark.slow
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("prefect-home"))
    yield s
    s.close()


# What every run rewrites, reused or not: its status, its summaries (with this run's timings),
# the lock.
SUMMARY = {"run.json", "preprocess.json", "metrics.json", "report.md", "curves.png", "lineage.json",
           ".lock", "score.json"}


def _written(out: Path) -> dict[str, int]:
    """When each artifact of a run directory was written (ns), but the summary."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name not in SUMMARY}


@pytest.fixture(scope="module")
def deployed(server, tmp_path_factory, sample_tarball) -> dict:
    """Every deployment of deployments/prefect.yaml, deployed to the server and run twice, one
    run after the other, through the API by real workers of the `cpu` and `gpu` pools, each
    into its own directory, on the sample with the tiny preset; the scoring deployment last,
    with the nightly deployment's model, on a dataset of two files."""
    root = tmp_path_factory.mktemp("deployed")
    incoming = root / "incoming"
    incoming.mkdir()
    for name, reviews in (("a.csv", ["A wonderful film.", "Dreadful."]), ("b.csv", ["Fine, I suppose."])):
        (incoming / name).write_text("text\n" + "".join(f'"{r}"\n' for r in reviews))
    for pool in ("cpu", "gpu"):
        server.cli("work-pool", "create", pool, "--type", "process")
    server.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all",
               ULMFIT_HOME=str(ROOT))
    deployments = {d["name"]: d for d in server.post("/deployments/filter", {})}
    logs = {pool: open(root / f"worker-{pool}.log", "w") for pool in ("cpu", "gpu")}
    workers = [subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", pool], env=server.env,
                                stdout=log, stderr=subprocess.STDOUT) for pool, log in logs.items()]
    results = {}
    try:
        for name in sorted(deployments, key=lambda name: name.startswith("score")):
            deployment, out = deployments[name], root / name
            asked = {"out": str(out), "data": str(sample_tarball), "preset": "tiny", "workers": 1,
                     "shard_docs": 50}
            if name.startswith("score"):
                asked = {"model": str(root / "ulmfit-nightly"), "data": str(incoming), "out": str(out),
                         "workers": 1}
            first = server.run_deployment(deployment["id"], {"job": asked}, f"the first run of {name}")
            written = _written(out)
            second = server.run_deployment(deployment["id"], {"job": asked}, f"the second run of {name}")
            results[name] = {"deployment": deployment, "runs": [first, second], "out": out,
                             "written": [written, _written(out)]}
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)
        for log in logs.values():
            log.close()
    worker_logs = "".join((root / f"worker-{pool}.log").read_text()[-3000:] for pool in logs)
    for result in results.values():
        assert [r["state_type"] for r in result["runs"]] == ["COMPLETED"] * 2, worker_logs
    return results


@pytest.fixture(scope="module")
def finished(deployed) -> dict:
    """The first run of the preprocessing deployment."""
    hourly = deployed["preprocess-hourly"]
    return {"deployment": hourly["deployment"], "flow_run": hourly["runs"][0], "out": hourly["out"]}


def test_every_deployment_has_its_own_directory_and_a_second_run_reuses_everything(deployed):
    import yaml

    shipped = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    assert sorted(deployed) == sorted(d["name"] for d in shipped)
    outs = [d["parameters"]["job"]["out"] for d in shipped]
    assert len(set(outs)) == len(outs)  # one directory, one preset: no two schedules clash
    for name, result in deployed.items():
        first, second = result["written"]
        assert second == first, (name, {k for k in first if second.get(k) != first[k]})
        if name.startswith("score"):  # a predictions file and its manifest per input file
            assert sorted(first) == ["a.csv.json", "a.csv.parquet", "b.csv.json", "b.csv.parquet"]
            assert json.loads((result["out"] / "score.json").read_text())["rows"] == 3
            continue
        assert len(first) > 10, name
        assert read_status(result["out"])["status"] == "complete"


def read_status(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_core_progress_lines_reach_the_flow_run_logs(server, deployed):
    """The ulmfit logger's lines (here the LM's epochs, logged in a training task) are in the
    logs of the nightly flow run and its subflows, sent by the worker's flow-run process with
    nothing but the project's own code setting it up."""
    flow_run = deployed["ulmfit-nightly"]["runs"][0]
    subflows = server.post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {
        "any_": [flow_run["id"]]}}})
    ids = [flow_run["id"], *(f["id"] for f in subflows)]

    def core_lines():
        logs = server.post("/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200})
        lines = [log["message"] for log in logs if log["name"] == "ulmfit"]
        return lines if any("epoch 1/" in line for line in lines) else None

    lines = _until(core_lines, 30, "the ulmfit log lines of the nightly run")
    assert any(line.startswith("lm: ") and "batches per epoch" in line for line in lines)
    assert any(line.startswith("classifier: ") for line in lines)


def test_deployment_has_its_schedule_pool_and_parameters(finished):
    deployment = finished["deployment"]
    assert deployment["work_pool_name"] == "cpu"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 * * * *"]
    assert deployment["parameters"]["job"]["preset"] == "cpu"
    assert deployment["parameters"]["job"]["out"] == "runs/preprocess-hourly"  # its own run directory
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
        "directory"] == str(ROOT)


def test_triggered_run_writes_its_outputs_artifacts_and_assets(server, finished):
    out, flow_run = finished["out"], finished["flow_run"]
    assert (out / "run.json").exists() and (out / "lineage.json").exists()
    assert len(list((out / "ids").glob("part-*.parquet"))) == 4
    artifacts = server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    by_type = {a["type"]: a for a in artifacts}
    assert by_type["markdown"]["key"] == "ulmfit-report"
    assert by_type["markdown"]["data"].startswith("# ULMFiT run report")
    assert by_type["table"]["key"] == "ulmfit-metrics"
    # the tokenization progress artifact belongs to the preprocessing subflow, and reached 100%
    progress = server.post("/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}})
    assert any(a["data"] == 100 and "shards tokenized" in a["description"] for a in progress)
    run = f"file://{out}"

    def materialized() -> dict | None:  # events reach the server shortly after the run ends
        events = server.post("/events/filter", {"filter": {
            "event": {"prefix": ["prefect.asset.materialization.succeeded"]},
            "resource": {"id_prefix": [f"{run}/"]}}, "limit": 50})["events"]
        upstream: dict[str, set] = {}
        for event in events:
            upstream.setdefault(event["resource"]["prefect.resource.id"], set()).update(
                r["prefect.resource.id"] for r in event["related"] if r.get("prefect.resource.role") == "asset")
        return upstream if f"{run}/lineage.json" in upstream else None

    upstream = _until(materialized, 60, "the summary files' asset events")
    assert upstream[f"{run}/tokens"] == {f"{run}/raw", f"{run}/tokenizer"}
    assert upstream[f"{run}/vocab.json"] == {f"{run}/tokens"}
    assert upstream[f"{run}/ids"] == {f"{run}/tokens", f"{run}/vocab.json"}
    source = json.loads((out / "raw" / "_ingest.json").read_text())["source"]
    assert upstream[f"{run}/raw"] == {f"file://{Path(source).resolve()}"}
    assert upstream[f"{run}/report.md"] == {f"{run}/preprocess.json"}


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_ui_shows_the_finished_run_and_its_artifacts(server, finished, tmp_path):
    flow_run = finished["flow_run"]
    browser = _chromium()
    try:
        browser.get(f"{server.ui}/runs/flow-run/{flow_run['id']}")
        text = lambda: browser.find_element("tag name", "body").text  # noqa: E731
        _until(lambda: flow_run["name"] in text() and "Completed" in text(), 60,
               "the flow run page to show the run")
        shots = Path(os.environ.get("ULMFIT_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shots / "prefect-ui-flow-run.png"))
        click_tab = ("const tab = [...document.querySelectorAll('button, [role=tab], a, li, span')]"
                     ".find(e => e.textContent.trim() === 'Artifacts'); if (tab) tab.click(); return !!tab;")
        _until(lambda: browser.execute_script(click_tab), 30, "the Artifacts tab")
        try:
            _until(lambda: "ulmfit-report" in text() and "ulmfit-metrics" in text(), 60,
                   "the artifacts tab to list the report and metrics")
        finally:
            shot = shots / "prefect-ui-flow-run-artifacts.png"
            assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()


def test_serve_schedules_both_flows_and_runs_them(server, tmp_path, sample_tarball):
    out = tmp_path / "served"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--data", str(sample_tarball),
                             "--out", str(out), "--preset", "tiny", "--workers", "1", "--shard-docs", "50",
                             "--cron", "0 3 * * *", "--preprocess-cron", "*/30 * * * *"],
                            env=server.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def deployment(name: str):
        try:
            return server.get(f"/deployments/name/{name}")
        except httpx.HTTPStatusError:
            return None

    try:
        pre = _until(lambda: deployment("ulmfit-preprocess-job/preprocess-scheduled"), 120, "served deployments")
        full = _until(lambda: deployment("ulmfit/ulmfit-scheduled"), 30, "the pipeline deployment")
        assert [s["schedule"]["cron"] for s in pre["schedules"]] == ["*/30 * * * *"]
        assert [s["schedule"]["cron"] for s in full["schedules"]] == ["0 3 * * *"]
        assert full["parameters"]["job"]["out"] == str(out) and full["parameters"]["job"]["preset"] == "tiny"
        # Preprocessing fires while the pipeline holds their one run directory (the default
        # crons both fire at 02:00): it waits for the pipeline instead of failing on its lock.
        pipeline = server.start_deployment(full["id"])
        _until(lambda: server.get(f"/flow_runs/{pipeline['id']}")["state_type"] == "RUNNING", 120,
               "the pipeline to start")
        preprocess = server.start_deployment(pre["id"])
        ended = [server.ended(r, "the served runs to end", timeout=600) for r in (pipeline, preprocess)]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    served = (tmp_path / "serve.log").read_text()
    assert [r["state_type"] for r in ended] == ["COMPLETED", "COMPLETED"], served[-4000:]
    assert proc.returncode == 143 and served.strip().splitlines()[-1].startswith(
        "ulmfit: stopped serving (SIGTERM)"), served[-4000:]
    assert "is in use by a run still going" in served and "waiting up to 43200 s" in served
    assert len(list((out / "ids").glob("part-*.parquet"))) == 4
    status = json.loads((out / "run.json").read_text())  # the preprocessing's, which ended last
    assert status["status"] == "complete" and status["params"]["command"] == "preprocess"
    assert (out / "classifier" / "model.pth").exists()
