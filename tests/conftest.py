"""Shared fixtures: a small aclImdb-layout tarball of real reviews.

With ULMFIT_IMDB set (CI sets it), the sample is streamed from the real IMDB tarball; otherwise
it is built from a small set of hand-written reviews so the suite still runs anywhere.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

# Tests run flows in this process and call stage functions outside them, as the `ulmfit` command
# does: its setting (flows.cli._prefect_settings), so that a core log line outside a flow run,
# once a flow has given the "ulmfit" logger Prefect's API handler, warns of nothing.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.rendezvous import free_port
from ulmfit_core.run.layout import RunDir
from ulmfit_core.text.ingest import SkipLog, iter_documents
from ulmfit_core.text.sources import IMDB_ENV

GROUPS = ["train/pos", "train/neg", "train/unsup", "test/pos", "test/neg"]
PER_GROUP = 40

_GOOD = ["a wonderful film", "brilliant acting", "I loved every minute", "a true masterpiece",
         "the cast is superb", "beautifully shot", "great fun", "highly recommended"]
_BAD = ["a terrible film", "awful acting", "I hated every minute", "a complete waste of time",
        "the cast is dreadful", "badly shot", "boring and dull", "avoid it"]
_FILL = ["The plot follows a family in Ohio.", "It runs about two hours.",
         "The director's earlier work was different.", "I watched it on a Sunday.",
         "The music is by a famous composer.", "My friends saw it too."]


def _handmade(group: str, i: int) -> str:
    rng = random.Random(f"{group}:{i}")
    words = _GOOD if group.endswith("pos") else _BAD if group.endswith("neg") else _GOOD + _BAD
    parts = [rng.choice(_FILL)] + [f"{rng.choice(words).capitalize()}!" for _ in range(3)]
    rng.shuffle(parts)
    return " ".join(parts) + "<br /><br />" + rng.choice(_FILL)


def real_reviews(per_group: int) -> dict[str, list[tuple[str, bytes]]]:
    """First `per_group` reviews of each group: from $ULMFIT_IMDB, else hand-written."""
    out: dict[str, list] = defaultdict(list)
    source = os.environ.get(IMDB_ENV)
    if source:
        with tarfile.open(source, "r|gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) == 4 and member.name.endswith(".txt"):
                    group = f"{parts[1]}/{parts[2]}"
                    if group in GROUPS and len(out[group]) < per_group:
                        out[group].append((parts[3], tar.extractfile(member).read()))
                if all(len(out[g]) >= per_group for g in GROUPS):
                    break
    else:
        for group in GROUPS:
            for i in range(per_group):
                out[group].append((f"{i}_{7 if 'pos' in group else 2}.txt",
                                   _handmade(group, i).encode()))
    return out


def write_tarball(path: Path, reviews: dict[str, list[tuple[str, bytes]]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for group, files in reviews.items():
            for name, data in files:
                info = tarfile.TarInfo(f"aclImdb/{group}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def until(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


class Server:
    """`prefect server start` on a free loopback port, with a Prefect home of its own; `env` is
    the environment of a process that uses it."""

    def __init__(self, home: Path) -> None:
        port = free_port()
        self.ui = f"http://127.0.0.1:{port}"
        self.api = f"{self.ui}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        self.log = open(home / "server.log", "w")
        self.proc = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(port)], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def healthy():
            try:
                return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        until(healthy, 120, "prefect server health")

    def cli(self, *args: str, **env) -> str:
        result = subprocess.run([BIN / "prefect", *args], env={**self.env, **env}, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    def request(self, method: str, path: str, body: dict | None = None):
        """One API call, retried like Prefect's own client does when the server answers 503
        (a retryable error, e.g. its SQLite database busy with a scheduler's writes)."""
        for attempt in range(10):
            response = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        response.raise_for_status()
        return response.json()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def start_deployment(self, deployment_id: str, parameters: dict | None = None) -> dict:
        """Create a flow run of the deployment through the API (with its own parameters when
        `parameters` is None)."""
        body = {} if parameters is None else {"parameters": parameters}
        return self.post(f"/deployments/{deployment_id}/create_flow_run", body)

    def ended(self, flow_run: dict, what: str, timeout: float = 400) -> dict:
        """The flow run once it has ended."""
        def state():
            now = self.get(f"/flow_runs/{flow_run['id']}")
            return now if now["state_type"] in TERMINAL else None

        return until(state, timeout, what)

    def run_deployment(self, deployment_id: str, parameters: dict | None, what: str) -> dict:
        """A flow run of the deployment, once it has ended."""
        return self.ended(self.start_deployment(deployment_id, parameters), what)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def ulmfit(*args, timeout=900) -> subprocess.CompletedProcess:
    """The `ulmfit` command, run as a user runs it, in a process of its own."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


class Command:
    """The `ulmfit` command started as a terminal starts it: the leader of a process group of its
    own, which a terminal's Ctrl-C (or a container's stop) signals as a whole. What it prints
    (stdout and stderr, as on a terminal) is read as it comes."""

    def __init__(self, *args, **env: str) -> None:
        import psutil

        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        self.started: list = []  # what the command started, seen while it ran
        self.psutil = psutil

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready, timeout: float = 300) -> None:
        """Until `ready()` (a check, or a text the command prints); fails if the command ends first."""
        check = (lambda: ready in self.output) if isinstance(ready, str) else ready
        deadline = time.time() + timeout
        while not check():
            assert self.proc.poll() is None and time.time() < deadline, self.output[-3000:]
            time.sleep(0.02)
        self.started = self.psutil.Process(self.proc.pid).children(recursive=True)

    def signal_group(self, sig: signal.Signals) -> float:
        """Signal every process of the command's group, as a terminal does; returns when."""
        os.killpg(self.proc.pid, sig)
        return time.time()

    def finish(self, timeout: float = 120) -> int:
        self.proc.wait(timeout)
        self.reader.join(10)
        return self.proc.returncode

    def leftovers(self, timeout: float = 15) -> list:
        """What the command started that is still running `timeout` s after it ended."""
        return self.psutil.wait_procs(self.started, timeout=timeout)[1]


def error_line(result) -> str:
    """The last line of a command that ended with exit status 2 (bad input)."""
    assert result.returncode == 2, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def reviews() -> dict[str, list[tuple[str, bytes]]]:
    return real_reviews(PER_GROUP)


@pytest.fixture(scope="session")
def sample_tarball(tmp_path_factory, reviews) -> Path:
    return write_tarball(tmp_path_factory.mktemp("imdb") / "aclImdb_sample.tar.gz", reviews)


@pytest.fixture(scope="session")
def sample_texts(sample_tarball) -> list[str]:
    return [d["text"] for d in iter_documents(sample_tarball, SkipLog())]


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, sample_tarball) -> Path:
    """The sample preprocessed once (word tokens, 4 shards), by the stage functions; tests that
    write into a run copy it first (shutil.copytree)."""
    run = RunDir(tmp_path_factory.mktemp("preprocessed") / "run")
    stages.preprocess_in_process(run, str(sample_tarball), get_preset("tiny"), shard_docs=60)
    return run.root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, preprocessed) -> RunDir:
    """The sample's tiny run trained (LM, encoder, classifier) by the stage functions; tests that
    write into it copy it first."""
    run = RunDir(tmp_path_factory.mktemp("trained") / "run")
    shutil.copytree(preprocessed, run.root)
    preset = get_preset("tiny")
    stages.lm_stage(run, preset, 0)
    stages.export_stage(run)
    stages.classifier_stage(run, preset, 0)
    return run


@pytest.fixture(scope="session")
def long_texts_run(tmp_path_factory, sample_texts):
    """A run directory preprocessed (by the stage functions) from 16 long texts that hold the
    sample's reviews, as many times over as makes about 50k words: a few seconds per
    tiny-preset LM epoch here. Tests copy it."""
    tmp_path = tmp_path_factory.mktemp("long-texts")
    times = max(1, round(50_000 / sum(len(t.split()) for t in sample_texts)))
    texts = [" ".join(sample_texts[i::16] * times) for i in range(16)]
    corpus = tmp_path / "long.csv"
    pacsv.write_csv(pa.table({"text": texts}), corpus)
    run = RunDir(tmp_path / "run")
    stages.preprocess_in_process(run, str(corpus), get_preset("tiny"))
    return run.root


class Cluster:
    """A `dask scheduler` and single-threaded `dask worker` processes on loopback, each its own
    OS process, which can import the test modules; with `nanny`, a killed worker is restarted
    by its nanny."""

    def __init__(self, tmp: Path, workers: int, resources: dict[int, str] | None = None,
                 nanny: bool = False, env: dict | None = None) -> None:
        """`env`: more environment variables, for every process; a value may hold `{worker}`,
        the worker's own folder (its working directory)."""
        resources = resources or {}
        bin_dir = Path(sys.executable).parent
        tmp.mkdir(parents=True, exist_ok=True)
        self.file = tmp / "scheduler.json"
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        env, more = {**os.environ, "PYTHONPATH": path}, env
        self.procs = [subprocess.Popen(
            [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", self.file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
        self.wait_for(self.file.exists, 60, "scheduler file")
        self.address = json.loads(self.file.read_text())["address"]
        self.folders = [tmp / f"w{i}" for i in range(workers)]
        for folder in self.folders:
            folder.mkdir(exist_ok=True)
        self.workers = [subprocess.Popen(
            [bin_dir / "dask", "worker", self.address, "--nthreads", "1",
             "--nanny" if nanny else "--no-nanny", "--host", "127.0.0.1", "--name", f"w{i}",
             *(["--resources", resources[i]] if i in resources else [])],
            stdout=subprocess.DEVNULL, stderr=(tmp / f"w{i}.log").open("w"), cwd=self.folders[i],
            env={**env, **{k: v.format(worker=self.folders[i]) for k, v in (more or {}).items()}})
            for i in range(workers)]
        self.procs += self.workers
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    @staticmethod
    def wait_for(predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(what)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)  # a worker may wait half a minute for its gone scheduler
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def dask_cluster(tmp_path):
    """Start clusters (`dask_cluster(workers=2, resources={1: "GPU=1"}, nanny=False)`), stopped
    when the test ends."""
    clusters = []

    def start(**kwargs) -> Cluster:
        clusters.append(Cluster(tmp_path / f"cluster{len(clusters)}", **kwargs))
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.close()


@pytest.fixture(scope="session")
def table_rows(reviews) -> list[dict]:
    """The sample's reviews as rows with an id, split and label; one with an empty text."""
    out = [{"id": f"{group}/{name}", "split": group.split("/")[0] if "unsup" not in group else "unsup",
            "label": None if "unsup" in group else group.split("/")[1], "text": data.decode()}
           for group, files in reviews.items() for name, data in files]
    out[7]["text"] = "   "
    return out


def write_table(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    (pacsv.write_csv if path.suffix == ".csv" else pq.write_table)(table, path)


def write_dataset(folder, rows: list[dict], cuts=(0.3, 0.55)) -> list:
    """`rows` cut into three files in two subfolders, a CSV and Parquet mix, beside files that
    are not tables; returns the files in dataset order."""
    a, b = (int(c * len(rows)) for c in cuts)
    files = [folder / "2024" / "a.csv", folder / "2024" / "b.parquet", folder / "2025" / "c.csv"]
    for file, part in zip(files, (rows[:a], rows[a:b], rows[b:])):
        write_table(file, part)
    (folder / "2024" / "_SUCCESS").write_text("")
    (folder / "README.txt").write_text("reviews, by year")
    return files


class ObjectStore:
    """An S3-compatible object store (SeaweedFS's `weed server -s3`) on loopback ports, with one
    identity allowed everything; `env` holds the AWS variables a client of it needs."""

    KEY, SECRET = "ulmfit-test", "ulmfit-test-secret"

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        config = home / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": self.KEY, "secretKey": self.SECRET}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        ports = {}
        for role in ("master", "volume", "filer", "s3"):  # each also listens on port + 10000 (gRPC)
            ports[role] = until(lambda: _free_pair(set(ports.values())), 10, "a free port pair")
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        self.env = {"AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET,
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}
        self.log = open(home / "weed.log", "w")
        self.proc = subprocess.Popen(
            [BIN / "weed", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={home}",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
             f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
             f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=8"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        until(self._ready, 90, "the object store")

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=self.KEY, secret_key=self.SECRET, scheme="http",
                                 endpoint_override=self.endpoint[len("http://"):], region="us-east-1",
                                 allow_bucket_creation=True)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.log.flush(), Path(self.log.name).read_text()[-3000:])
        try:
            self.filesystem().create_dir("ready")
            return True
        except OSError:
            return False

    def put(self, key: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(key) as out:
            out.write(data)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)  # its servers take longer than that to say goodbye: nothing kept
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _free_pair(taken: set[int]) -> int | None:
    """A free loopback port whose port + 10000 is free too, neither near one `taken`."""
    port = free_port()
    if port >= 55535 or any(abs(port - t) in (0, 10000) for t in taken):
        return None
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port + 10000))
        except OSError:
            return None
    return port


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    store = ObjectStore(tmp_path_factory.mktemp("object-store"))
    yield store
    store.close()


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory):
    """One Prefect server for the commands the tests run, as a user's PREFECT_API_URL: each
    command would otherwise start a temporary server of its own (about 7 s a command here).
    Tests of that temporary server ask for `own_prefect_server`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = Server(tmp_path_factory.mktemp("prefect-home"))
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update(PREFECT_API_URL=server.api, PREFECT_HOME=server.env["PREFECT_HOME"])
    # Prefect read its settings when the test modules imported it: the flows this process runs
    # use the server too, not a temporary one of their own.
    with temporary_settings(updates={PREFECT_API_URL: server.api}):
        yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.close()


@pytest.fixture
def own_prefect_server(monkeypatch):
    """Commands of this test start their own temporary Prefect server, as without PREFECT_API_URL."""
    monkeypatch.delenv("PREFECT_API_URL")
