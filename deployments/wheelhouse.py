"""A wheelhouse for installing the project on GPU nodes without internet, and its check.

    python deployments/wheelhouse.py build --python 3.12 --platform manylinux_2_28_x86_64 --out wheelhouse
    python deployments/wheelhouse.py check wheelhouse     # on the node, with the Python to install into

`build` (with internet, run by the project's venv: it needs a recent pip and `packaging`) puts
into `--out` the project's wheel and a wheel of every package it needs at run time for that
Python version and platform, resolved through constraints.txt, except torch and torchvision and
what only they need (CUDA libraries, triton): a GPU node keeps the torch built for its CUDA, and
torchvision must match that torch exactly. `wheelhouse.json` records what the wheels are for. `check` compares it with
the Python it runs under and fails with one line when the two do not fit, before pip would fail
with many. The check uses the standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = "wheelhouse.json"
PROJECT = "ulmfit-pipeline"
# Installed on the node with its CUDA build, never from the wheelhouse (see the module docstring).
NODE_OWN = ("torch", "torchvision")
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
_LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def platform_tags(platform_tag: str) -> tuple[tuple[int, int], str, list[str]]:
    """The glibc version and machine a manylinux tag names, and every tag a node with that glibc
    accepts: pip takes the given tag literally, and wheels carry all sorts of older ones."""
    match = _MANYLINUX.fullmatch(platform_tag)
    legacy, _, machine = platform_tag.partition("_")
    if match:
        glibc, machine = (int(match[1]), int(match[2])), match[3]
    elif legacy in _LEGACY and machine:
        glibc = _LEGACY[legacy]
    else:
        raise SystemExit(f"wheelhouse: {platform_tag!r} is not a manylinux platform tag "
                         "(like manylinux_2_28_x86_64)")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc[1], 4, -1)]
    tags += [f"{name}_{machine}" for name, floor in _LEGACY.items() if glibc >= floor]
    return glibc, machine, tags


def _runtime_closure(report: dict, python: str) -> tuple[dict[str, dict], set[str]]:
    """The resolved packages the project needs at run time on `python`, without NODE_OWN and
    what is reachable only through them. pip evaluates environment markers for the Python that
    runs it, not for --python-version, so the graph is walked again here with the target's."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    items = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    env = dict(report["environment"])  # the markers' values pip used
    if env["python_version"] != python:
        # Markers on the patch release (backports for early ones) are read for a current one.
        env.update(python_version=python, python_full_version=f"{python}.99")
    needed: dict[str, set[str]] = {}
    todo = [(PROJECT, frozenset())]
    missing: set[str] = set()
    while todo:
        name, extras = todo.pop()
        if name in needed and extras <= needed[name]:
            continue
        needed[name] = needed.get(name, set()) | extras
        if name not in items:
            missing.add(name)
            continue
        for line in items[name]["metadata"].get("requires_dist", []):
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({**env, "extra": e})
                                      for e in ("", *needed[name])):
                continue
            dep = canonicalize_name(req.name)
            if dep not in NODE_OWN:
                todo.append((dep, frozenset(req.extras)))
    return {n: items[n] for n in needed if n in items}, missing


def _pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, **kwargs)


def _project_wheel(out: Path) -> Path:
    # setuptools builds in the checkout's build/ and would package stale files left there by an
    # earlier build into later wheels: a build/ made here does not stay.
    scratch = ROOT / "build"
    made_scratch = not scratch.exists()
    try:
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT))
    finally:
        if made_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return next(out.glob(PROJECT.replace("-", "_") + "-*.whl"))


def build(python: str, platform_tag: str, out: Path, constraints: Path) -> None:
    glibc, machine, tags = platform_tags(platform_tag)
    if machine != platform.machine():
        # Markers such as platform_machine are evaluated for this machine (see _runtime_closure).
        raise SystemExit(f"wheelhouse: a wheelhouse for {machine} is built on {machine} "
                         f"(this machine is {platform.machine()})")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.whl"), out / STAMP]:  # a wheelhouse for one target only
        stale.unlink(missing_ok=True)
    target = ["--only-binary=:all:", "--python-version", python,
              *(arg for tag in tags for arg in ("--platform", tag))]
    wheel = _project_wheel(out)
    resolved = _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-",
                    *target, "--constraint", str(constraints), str(wheel),
                    stdout=subprocess.PIPE, text=True)
    packages, missing = _runtime_closure(json.loads(resolved.stdout), python)
    if missing:
        raise SystemExit(f"wheelhouse: Python {python} needs {', '.join(sorted(missing))}, which "
                         f"pip left out, reading the markers for the Python it runs on: build "
                         f"with a Python {python}")
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}"
            for name, i in sorted(packages.items()) if name != PROJECT]
    _pip("download", "--quiet", "--no-deps", *target, "--dest", str(out), *pins)
    stamp = {"python": python, "platform": platform_tag, "glibc": ".".join(map(str, glibc)),
             "machine": machine, "project": wheel.name, "packages": pins,
             "not_included": list(NODE_OWN)}
    (out / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    print(f"{out}: {len(pins) + 1} wheels, {size / 2**20:.0f} MiB, for Python {python} on "
          f"{platform_tag} (glibc >= {stamp['glibc']}); torch and torchvision come from the node")


def check(wheelhouse: Path) -> str | None:
    """Why the Python running this cannot install from `wheelhouse`, or None when it can."""
    try:
        stamp = json.loads((wheelhouse / STAMP).read_text())
    except FileNotFoundError:
        return f"{wheelhouse}: no {STAMP}: not a complete wheelhouse (make wheelhouse)"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if stamp["python"] != here:
        return (f"{wheelhouse} holds wheels for Python {stamp['python']}, but {sys.executable} is "
                f"Python {here}: make wheelhouse PY={here}")
    if stamp["machine"] != platform.machine():
        return f"{wheelhouse} is for {stamp['machine']}, this machine is {platform.machine()}"
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(map(int, version.split("."))) < tuple(map(int, stamp["glibc"].split("."))):
        return (f"{wheelhouse} needs glibc >= {stamp['glibc']}, this system has "
                f"{libc or 'no glibc'} {version}: make wheelhouse with an older PLATFORM")
    for name in stamp["not_included"]:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return (f"{name} is not installed in {sys.executable}: install this node's CUDA build "
                    f"of torch (>= 2.2) and the torchvision made for it first")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fill a wheelhouse (needs the package index)")
    b.add_argument("--python", required=True, help="the node's Python version, like 3.12")
    b.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="the newest manylinux tag the node runs (its glibc: ldd --version)")
    b.add_argument("--out", type=Path, default=Path("wheelhouse"))
    b.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    c = sub.add_parser("check", help="whether this Python can install from a wheelhouse")
    c.add_argument("wheelhouse", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        if not re.fullmatch(r"3\.\d+", args.python):
            parser.error(f"--python {args.python!r}: give a version like 3.12")
        build(args.python, args.platform, args.out, args.constraints)
    elif problem := check(args.wheelhouse):
        print(problem, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
