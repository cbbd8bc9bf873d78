"""Verifiable shards: a manifest beside each output records what made it, so reruns can reuse it.

`part-00000.parquet` gets `part-00000.json` holding the SHA-256 of every file the step wrote,
the SHA-256 of every input it read, and the settings it ran with. A rerun reuses the outputs only
if the inputs and settings are unchanged and every output still matches its hash; otherwise the
step runs again. The manifest is written last, so an interrupted step never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DamagedFile
from .rundir import read_json, write_json

log = logging.getLogger("ulmfit")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_shard(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet shard. `pq.read_table` would go through pyarrow.dataset, which loads pandas
    into every worker that reads a shard."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def manifest_path(shard: str | Path) -> Path:
    """part-00000.parquet → part-00000.json; a JSON output (vocab.json) → vocab.manifest.json."""
    shard = Path(shard)
    return shard.with_name(f"{shard.stem}.manifest.json") if shard.suffix == ".json" else shard.with_suffix(".json")


def write_manifest(shard: str | Path, outputs: list[str | Path], inputs: dict[str, str],
                   settings: dict, summary: dict) -> dict:
    """Record `outputs` (by hash), the hashes of `inputs` and `settings` beside `shard`."""
    manifest = {"outputs": {Path(p).name: file_sha256(p) for p in outputs}, "inputs": inputs,
                "settings": settings, "summary": summary}
    write_json(manifest_path(shard), manifest)
    return manifest


def verify_outputs(output: str | Path) -> None:
    """Check every file the manifest beside `output` recorded against its SHA-256; a file
    without a manifest (written outside a stage) is not checked."""
    path = manifest_path(output)
    if not path.exists():
        return
    folder = path.parent
    for name, sha in read_json(path)["outputs"].items():
        if not (folder / name).exists():
            raise DamagedFile(f"{folder / name}: missing, though {path} records it: restore the "
                              "folder or rerun the stage that writes it")
        if file_sha256(folder / name) != sha:
            raise DamagedFile(f"{folder / name}: damaged (its SHA-256 differs from the one {path.name} "
                              "recorded when it was written): restore it or rerun the stage that writes it")


def reusable(shard: str | Path, inputs: dict[str, str], settings: dict) -> dict | None:
    """The shard's summary if it was made from the same inputs and settings and is intact."""
    path = manifest_path(shard)
    if not path.exists():
        return None
    manifest = read_json(path)
    settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
    if manifest.get("inputs") != inputs or manifest.get("settings") != settings:
        return None
    folder = path.parent
    for name, sha in manifest["outputs"].items():
        if not (folder / name).exists() or file_sha256(folder / name) != sha:
            log.warning("%s fails its hash check; recomputing it", folder / name)
            return None
    return manifest["summary"]
