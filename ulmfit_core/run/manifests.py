"""Manifests: beside each stage's outputs, a record of what made them, so reruns can reuse them.

`part-00000.parquet` gets `part-00000.json` (`vocab.json` gets `vocab.manifest.json`) holding
the SHA-256 of every file the stage wrote, the SHA-256 of every input it read, and the settings
it ran with. A rerun reuses the outputs only if the inputs and settings are unchanged and every
output still matches its hash; otherwise the stage runs again (`made_once`). The manifest is
written last, so an interrupted stage never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from ..errors import DamagedFile
from .layout import read_json, write_json

log = logging.getLogger("ulmfit")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(stream) -> str:
    """The SHA-256 of what a binary stream gives to its end."""
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def file_inputs(run, paths) -> dict[str, str]:
    """{path relative to the run directory `run`: SHA-256} of the files a stage reads."""
    return {run.rel(p): file_sha256(p) for p in paths}


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


def verify_outputs(output: str | Path, remedy: str = "restore it or rerun the stage that writes it") -> None:
    """Check every file the manifest beside `output` recorded against its SHA-256; a file
    without a manifest (written outside a stage) is not checked. A damaged or missing file is
    named with `remedy`, what makes it again."""
    path = manifest_path(output)
    if not path.exists():
        return
    folder = path.parent
    for name, sha in read_json(path)["outputs"].items():
        if not (folder / name).exists():
            raise DamagedFile(f"{folder / name}: missing, though {path} records it: {remedy}")
        if file_sha256(folder / name) != sha:
            raise DamagedFile(f"{folder / name}: damaged (its SHA-256 differs from the one {path.name} "
                              f"recorded when it was written): {remedy}")


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


Made = tuple[dict, "list[str | Path] | None"]  # (summary, outputs): what a stage's work returns


def made_once(anchor: str | Path, inputs: dict[str, str], settings: dict,
              make: Callable[[], Made]) -> dict:
    """Every stage's reuse protocol. The summary recorded beside `anchor` when its outputs were
    made from the same `inputs` and `settings` and are intact ("reused": True); otherwise
    `make()` runs and returns (summary, outputs), which the manifest records ("reused": False).
    Outputs None record nothing (a rank other than 0 of a data-parallel training)."""
    summary = reusable(anchor, inputs, settings)
    if summary is not None:
        return {**summary, "reused": True}
    summary, outputs = make()
    if outputs is not None:
        write_manifest(anchor, outputs, inputs, settings, summary)
    return {**summary, "reused": False}
