"""Stops and faults as they come: a signal to the command's whole process group (what Ctrl-C in a
terminal and `docker stop` send), SIGKILL, a Prefect server that goes away, a full disk, a
damaged shard. Each ends in one line, leaves nothing running and nothing half-written that
looks complete, and a rerun resumes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Command, error_line, ulmfit
from ulmfit_core.errors import DamagedFile, DiskFull
from ulmfit_core.run.layout import atomic_path, read_json, write_json, write_text

STOPS = [signal.SIGINT, signal.SIGTERM]


def _worker_processes(command: Command) -> int:
    """How many Dask worker processes the command has spawned so far."""
    import psutil

    try:
        children = command.psutil.Process(command.proc.pid).children(recursive=True)
        return sum("spawn_main" in " ".join(p.cmdline()) for p in children)
    except psutil.Error:
        return 0


def _stopped_cleanly(command: Command, stop: signal.Signals, signalled: float, out: Path) -> None:
    assert command.finish() == 128 + stop.value, command.output[-3000:]
    assert time.time() - signalled <= 30, command.output[-3000:]
    for noise in ("Traceback", "Logging error", "EventsWorker", "ConnectError"):
        assert noise not in command.output, command.output[-3000:]
    assert command.output.strip().splitlines()[-1].startswith(f"ulmfit: stopped ({stop.name}); {out} keeps")
    assert read_json(out / "run.json")["status"] == "stopped"
    assert command.leftovers() == []  # the temporary server, the cluster's workers


@pytest.mark.usefixtures("own_prefect_server")  # the temporary server is theirs to end
@pytest.mark.slow
@pytest.mark.parametrize("stop", STOPS, ids=lambda s: s.name)
def test_a_signal_to_the_process_group_during_tokenization_stops_the_run(tmp_path, sample_tarball, stop):
    """Every process of the group gets the signal, the Dask workers just spawned too: the
    command alone acts on it, and ends what it started."""
    out = tmp_path / "run"
    args = ("run", "--data", sample_tarball, "--out", out, "--preset", "tiny", "--limit", 25,
            "--workers", 2, "--shard-docs", 10, "--seed", 1)
    command = Command(*args)
    command.wait_for(lambda: _worker_processes(command) >= 2)  # the workers are starting
    _stopped_cleanly(command, stop, command.signal_group(stop), out)
    assert not (out / "preprocess.json").exists()  # stopped before preprocessing finished
    if stop == signal.SIGINT:
        return
    rerun = ulmfit(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert read_json(out / "run.json")["status"] == "complete"
    assert read_json(out / "metrics.json")["preprocess"]["docs"] == 125


@pytest.mark.usefixtures("own_prefect_server")  # the temporary server is theirs to end
@pytest.mark.slow
@pytest.mark.parametrize("stop", STOPS, ids=lambda s: s.name)
def test_a_signal_to_the_process_group_during_training_stops_after_its_batch_and_a_rerun_resumes(
        tmp_path, long_texts_run, stop):
    out = tmp_path / "run"
    shutil.copytree(long_texts_run, out)
    checkpoint = out / "lm" / "checkpoint.pth"
    command = Command("train-lm", "--out", out, "--preset", "tiny")
    command.wait_for(checkpoint.exists)  # the LM finished its first epoch
    _stopped_cleanly(command, stop, command.signal_group(stop), out)
    assert "lm: stopped at epoch 2, batch" in (out / "logs" / "ulmfit.log").read_text()
    assert checkpoint.exists() and not (out / "lm" / "model.pth").exists()
    if stop == signal.SIGINT:
        return  # the rerun is the same after either signal
    stopped = read_json(out / "run.json")

    result = ulmfit("train-lm", "--out", out, "--preset", "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and "after 1 finished epoch(s)" in result.stderr
    assert read_json(out / "run.json")["status"] == "complete"
    assert [e["epoch"] for e in read_json(out / "lm" / "metrics.json")["history"]] == [1, 2, 3]
    assert (out / "lm" / "model.pth").exists() and not checkpoint.exists()
    assert read_json(out / "run.json")["started"] > stopped["started"]


@pytest.mark.usefixtures("own_prefect_server")  # the temporary server is theirs to end
@pytest.mark.slow
def test_a_killed_command_leaves_nothing_running_and_the_next_says_it_died(tmp_path, sample_tarball):
    out = tmp_path / "run"
    args = ("preprocess", "--data", sample_tarball, "--out", out, "--limit", 25, "--workers", 2,
            "--shard-docs", 10)
    command = Command(*args)
    command.wait_for(lambda: _worker_processes(command) >= 2)
    assert len(command.started) >= 3  # the temporary server and the workers
    command.proc.kill()
    assert command.finish() == -signal.SIGKILL
    assert command.leftovers(timeout=15) == []
    assert read_json(out / "run.json")["status"] == "running"  # as the killed command left it

    again = ulmfit(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"the run started {time.strftime('%Y-%m-%d')}" in again.stderr
            and f"died without finishing (pid {command.proc.pid} on {socket.gethostname()} is gone)"
            in again.stderr), again.stderr[-3000:]
    assert read_json(out / "run.json")["status"] == "complete"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_prefect_server_that_goes_away_stops_the_command_with_one_line(tmp_path, long_texts_run):
    """The user's server (PREFECT_API_URL) is stopped during LM training: the command neither
    hangs on Prefect's retries nor prints them; it stops, and a rerun resumes."""
    out = tmp_path / "run"
    shutil.copytree(long_texts_run, out)
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api}
    server = subprocess.Popen([Path(sys.executable).parent / "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", api.split(":")[-1].split("/")[0]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.time() < deadline, "the Prefect server did not start"
                time.sleep(0.5)
        command = Command("train-lm", "--out", out, "--preset", "tiny", PREFECT_API_URL=api,
                          ULMFIT_API_PATIENCE_S="5")
        command.wait_for((out / "lm" / "checkpoint.pth").exists)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        assert command.finish(timeout=120) == 75, command.output[-3000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    last = command.output.strip().splitlines()[-1]
    assert last == (f"ulmfit: stopped: the Prefect API at {api} has not answered for 5 s; {out} "
                    "keeps what was finished (shards, each training's last finished epoch): run the "
                    "same command again to resume"), command.output[-3000:]
    assert "Traceback" not in command.output and command.output.count("Service 'EventsWorker'") < 5
    status = read_json(out / "run.json")
    assert status["status"] == "stopped" and "has not answered" in status["error"]
    assert (out / "lm" / "checkpoint.pth").exists() and command.leftovers() == []

    rerun = ulmfit("train-lm", "--out", out, "--preset", "tiny")  # on the tests' server
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    assert read_json(out / "run.json")["status"] == "complete"


@pytest.mark.usefixtures("own_prefect_server")  # the temporary server is theirs to end
@pytest.mark.slow
def test_serve_stops_on_ctrl_c_in_its_terminal(tmp_path, sample_tarball):
    out = tmp_path / "served"
    command = Command("serve", "--data", sample_tarball, "--out", out, "--preset", "tiny",
                      "--cron", "0 3 1 1 *", "--preprocess-cron", "0 3 1 1 *")
    command.wait_for("serving on the Prefect API", timeout=120)
    time.sleep(3)  # the runner polls for its scheduled runs
    signalled = command.signal_group(signal.SIGINT)
    assert command.finish(timeout=60) == 130, command.output[-3000:]
    assert time.time() - signalled <= 30
    assert "Traceback" not in command.output and "ConnectError" not in command.output
    assert command.output.strip().splitlines()[-1] == (
        f"ulmfit: stopped serving (SIGINT); a run it had started resumes from {out} with the next one")
    assert command.leftovers() == []


# A full disk: a small tmpfs where this machine lets the tests mount one, and a write failing
# with ENOSPC at the file system call everywhere.

@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of `size` bytes at a new folder; unmounted after the test."""
    mounts = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"no tmpfs can be mounted here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _one_line_of_no_space(result, path: Path, stage: str) -> str:
    line = error_line(result)
    assert line.startswith(f"ulmfit: error: {stage}: {path}: no space left on its device"), line
    assert line.endswith("free some space, or give another --out, then run the same command again "
                         "to resume"), line
    for noise in ("Traceback", "Logging error", "RecursionError", "Retrying"):
        assert noise not in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) < 80, result.stderr[-3000:]
    return line


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_never_retried(tmp_path, long_texts_run, small_disk):
    """The LM's first checkpoint does not fit: exit 2 with one line naming the file and the
    stage, once, and nothing half-written left."""
    disk = small_disk(_tree_size(long_texts_run) + (512 << 10))
    out = disk / "run"
    shutil.copytree(long_texts_run, out)
    result = ulmfit("train-lm", "--out", out, "--preset", "tiny")
    _one_line_of_no_space(result, out / "lm" / "checkpoint.pth", "train lm")
    log = (out / "logs" / "ulmfit.log").read_text()
    assert log.count("lm: fit epoch 1/3 done") == 0 and log.count("batches per epoch") == 1  # one try
    status = read_json(out / "run.json")
    assert status["status"] == "failed" and "no space left" in status["error"]
    assert not list(out.rglob("*.tmp")) and not (out / "lm" / "model.pth").exists()


@pytest.mark.slow
def test_a_full_disk_during_ingest_keeps_nothing_half_written(tmp_path, sample_tarball, small_disk):
    out = small_disk(96 << 10) / "run"
    result = ulmfit("preprocess", "--data", sample_tarball, "--out", out, "--workers", 1)
    _one_line_of_no_space(result, out / ".raw.partial" / "part-00000.parquet", "ingest")
    assert not (out / "raw").exists() and not list(out.rglob("*.tmp"))
    assert read_json(out / "run.json")["status"] == "failed"


def test_a_write_that_meets_a_full_disk_keeps_the_earlier_file(tmp_path):
    path = write_text(tmp_path / "model.json", "the complete earlier one")
    with pytest.raises(DiskFull, match=rf"^{path}: no space left on its device \([\d.,]+ [KMG]?B(ytes)? "
                                       r"free without this file, 5 bytes of which had been written\): "
                                       "free some space"):
        with atomic_path(path) as tmp:
            tmp.write_text("half-")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "the complete earlier one"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
    with pytest.raises(OSError, match="Permission denied"):  # other errors are left as they are
        with atomic_path(path):
            raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_take_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_json(tmp_path / "run.json", {"status": "complete"})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# A damaged file under each stage command: named, with the command that rebuilds it, before the
# run directory changes.

def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = b"\x00" * 16
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_tarball) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = ulmfit("run", "--data", sample_tarball, "--out", out, "--preset", "tiny", "--limit", 20,
                    "--workers", 1, "--seed", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command,damaged,remedy", [
    (["train-lm"], "ids/part-00000.parquet", "ulmfit preprocess --out {out} --data {data}"),
    (["train-classifier"], "ids/part-00000.parquet", "ulmfit preprocess --out {out} --data {data}"),
    (["train-classifier"], "export/encoder.pth", "ulmfit train-lm --out {out}"),
    (["label-curve", "--labels", "20"], "vocab.json", "ulmfit preprocess --out {out} --data {data}"),
], ids=["train-lm-ids", "train-classifier-ids", "train-classifier-encoder", "label-curve-vocab"])
def test_a_damaged_file_under_a_stage_command_is_named_with_its_remedy(tmp_path, trained, sample_tarball,
                                                                      command, damaged, remedy):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    _damage(out / damaged)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    result = ulmfit(*command, "--out", out, "--preset", "tiny", "--seed", 1)
    line = error_line(result)
    assert line.startswith(f"ulmfit: error: {out / damaged}: damaged (its SHA-256 differs"), line
    assert line.endswith(f"rebuild it with `{remedy.format(out=out, data=sample_tarball)}`"
                         + (" and the other options the run was made with" if "preprocess" in remedy
                            else "")), line
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    changed = {p.relative_to(out).as_posix() for p in set(before) | set(after)
               if before.get(p) != after.get(p)}
    assert changed <= {".lock"}, changed  # nothing else; the finished run's report stays
    assert (out / "classifier" / "test.json").exists() and (out / "classifier" / "baseline.json").exists()
    assert read_json(out / "run.json")["status"] == "complete"


def test_a_damaged_model_file_names_the_command_that_rebuilds_it(tmp_path, trained):
    from ulmfit_core.model.weights import load_model_file

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    _damage(out / "classifier" / "model.pth")
    with pytest.raises(DamagedFile, match=rf"rebuild it with `ulmfit train-classifier --out {out}`$"):
        load_model_file(out / "classifier" / "model.pth", "classifier")
    assert "rebuild it with `ulmfit train-classifier" in error_line(
        ulmfit("predict", "--model", out, "a fine film"))


def test_help_says_each_default_once_and_truly():
    from flows.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert not re.search(r"default[^()]*\) \(default:", text), name  # said twice
    run_help = " ".join(commands["run"].format_help().split())
    assert "--out OUT run directory, or an s3:// prefix (created if missing) --reset" in run_help  # required: no default
    assert "(text reversed) --bidirectional" in run_help  # a flag: no default
    assert "--seed SEED seeds sampling, splits and training: the same seed repeats a run (default: 0)" in run_help
    assert "(default: one per core) --shard-docs" in run_help
