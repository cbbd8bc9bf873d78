"""lineage.json: every artifact of a run, its content hash, and what made it from what.

Every stage leaves a manifest beside its outputs (output hashes, input hashes, settings; see
`manifests`). The lineage joins them: an input is linked to the artifact whose content hash it
has, so for any classifier the chain back to its encoder, LM, vocab, id/token/raw shards and the
source is explicit. The code version (package version, git commit) and library versions are
recorded once for the run.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from .. import __version__
from .layout import SUBWORD_MODEL, RunDir, read_json, write_json
from .manifests import file_sha256, manifest_path

LIBRARIES = ("torch", "fastai", "spacy", "sentencepiece", "pyarrow", "numpy", "prefect",
             "prefect-dask", "dask", "distributed")


def _made(run: RunDir) -> Iterator[tuple[str, list[Path]]]:
    """Each kind of artifact a stage makes, with the files its manifests lie beside."""
    directions = (run.direction(False), run.direction(True))
    yield "subword model", [run.tokenizer / SUBWORD_MODEL]
    yield "token shard", run.shards(run.tokens)
    yield "vocab", [run.vocab]
    yield "id shard", run.shards(run.ids)
    yield "language model", [d.lm.model for d in directions]
    yield "encoder", [d.export.encoder for d in directions]
    yield "classifier", [d.classifier.model for d in directions]
    yield "evaluation", [d.classifier.test_scores for d in directions]
    yield "NB-LR baseline", [d.classifier.baseline for d in directions]


def code_version() -> dict:
    """This package's version and, from a git checkout, its commit (and whether it is dirty)."""
    version = {"ulmfit": __version__, "python": platform.python_version()}
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()

        try:
            version["git_commit"] = git("rev-parse", "HEAD")
            version["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _raw_artifacts(run: RunDir) -> dict:
    manifest_file = run.ingest_summary
    if not manifest_file.exists():
        return {}
    manifest = read_json(manifest_file)
    settings = {k: manifest[k] for k in ("limit", "seed")}
    # each shard's source file (a run ingested before files were recorded: the source)
    files = manifest.get("files") or [{"file": manifest["source"],
                                       "shards": [Path(p).name for p in manifest["shards"]]}]
    artifacts, sources = {}, {}  # a file read in parts is hashed once
    for entry in files:
        if entry["file"] not in sources:
            source = Path(entry["file"])
            sources[entry["file"]] = {"path": str(source),
                                      **({"sha256": file_sha256(source)} if source.is_file() else {})}
        source_entry = sources[entry["file"]]
        for p in (run.raw / name for name in entry["shards"]):  # where they are now
            if p.exists():
                artifacts[f"raw/{p.name}"] = {"kind": "raw shard", "sha256": file_sha256(p),
                                              "made_by": "raw/_ingest.json", "settings": settings,
                                              "source": source_entry, "inputs": []}
    return artifacts


def build_lineage(run: RunDir, location: str | None = None) -> dict:
    """Every artifact under `run` with its hash, settings and inputs (linked by content hash);
    `location`: where the run is, when `run` is a local copy of it."""
    artifacts = _raw_artifacts(run)
    raw_inputs = {}
    for kind, anchors in _made(run):
        for manifest_file in filter(Path.exists, map(manifest_path, anchors)):
            manifest = read_json(manifest_file)
            folder = manifest_file.parent.relative_to(run.root)
            for name, sha in manifest["outputs"].items():
                path = (folder / name).as_posix()
                artifacts[path] = {"kind": kind, "sha256": sha,
                                   "made_by": manifest_file.relative_to(run.root).as_posix(),
                                   "settings": manifest.get("settings", {})}
                raw_inputs[path] = manifest.get("inputs", {})
    by_hash: dict[str, str] = {}
    for path, a in artifacts.items():  # the first writer of a content: model folders hold copies
        by_hash.setdefault(a["sha256"], path)
    for path, inputs in raw_inputs.items():
        artifacts[path]["inputs"] = [{"path": by_hash.get(sha, name), "sha256": sha}
                                     for name, sha in inputs.items()]
    for path, kind in ((run.metrics, "run metrics"), (run.report, "report")):
        if path.exists():
            finals = [p for p, a in artifacts.items() if a["kind"] in ("evaluation", "language model")]
            artifacts[run.rel(path)] = {"kind": kind, "sha256": file_sha256(path), "settings": {},
                               "inputs": [{"path": p, "sha256": artifacts[p]["sha256"]} for p in finals]}
    return {"run": location or str(run.root), "code": code_version(), "libraries": library_versions(),
            "artifacts": artifacts}


def write_lineage(run: RunDir, location: str | None = None) -> dict:
    lineage = build_lineage(run, location)
    write_json(run.lineage, lineage)
    return lineage


def _group(paths: list[str], artifacts: dict) -> list[tuple[str, list[str]]]:
    """Inputs of one kind in one folder become one line: ("ids/ 50 id shards", their paths)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in paths:
        kind = artifacts.get(p, {}).get("kind", "external")
        groups[(str(Path(p).parent), kind)].append(p)
    out = []
    for (folder, kind), members in groups.items():
        if len(members) == 1:
            label = f"{members[0]}  [{kind}]"
        else:
            label = f"{folder}/ {len(members)} × {kind}"
        out.append((label, sorted(members)))
    return out


def _flat(settings: dict, prefix: str = "") -> list[str]:
    """Nested settings as `key.sub=value` items, in order."""
    items = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items.extend(_flat(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={json.dumps(value) if isinstance(value, (list, str)) else value}")
    return items


def render_lineage(lineage: dict, target: str | None = None) -> str:
    """The lineage as an indented tree, from `target` (default: the run's final artifacts)."""
    artifacts = lineage["artifacts"]
    if target is None:
        used = {i["path"] for a in artifacts.values() for i in a.get("inputs", [])}
        roots = [p for p in artifacts if p not in used]
    else:
        if target not in artifacts:
            raise ValueError(f"no artifact '{target}' in this run's lineage (known: "
                             f"{', '.join(sorted(p for p in artifacts if '/part-' not in p))})")
        roots = [target]
    code = lineage["code"]
    lines = [f"run {lineage['run']}  (ulmfit {code['ulmfit']}"
             + (f", commit {code['git_commit'][:10]}{'+dirty' if code.get('git_dirty') else ''}"
                if code.get("git_commit") else "") + ")"]

    def walk(paths: list[str], prefix: str, seen: set) -> None:
        groups = _group(paths, artifacts)
        for i, (label, members) in enumerate(groups):
            last = i == len(groups) - 1
            first = artifacts.get(members[0], {})
            sha = f"  sha256:{first['sha256'][:12]}" if len(members) == 1 and "sha256" in first else ""
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label}{sha}")
            child_prefix = prefix + ("    " if last else "│   ")
            if first.get("settings"):
                lines.append(f"{child_prefix}   settings: {', '.join(_flat(first['settings']))}")
            inputs = sorted({i["path"] for m in members for i in artifacts.get(m, {}).get("inputs", [])})
            sources = {artifacts[m]["source"]["path"] for m in members if "source" in artifacts.get(m, {})}
            for s in sorted(sources):
                lines.append(f"{child_prefix}└── {s}  [source]")
            key = tuple(members)
            if inputs and key not in seen:
                walk(inputs, child_prefix, seen | {key})

    walk(roots, "", set())
    return "\n".join(lines)
