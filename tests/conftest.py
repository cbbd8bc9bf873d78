"""Shared fixtures: a small aclImdb-layout tarball of real reviews.

With ULMFIT_IMDB set (CI sets it), the sample is streamed from the real IMDB tarball; otherwise
it is built from a small set of hand-written reviews so the suite still runs anywhere.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from ulmfit_core import stages
from ulmfit_core.config import get_preset
from ulmfit_core.ingest import IMDB_ENV, SkipLog, iter_documents
from ulmfit_core.rundir import RunDir

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
