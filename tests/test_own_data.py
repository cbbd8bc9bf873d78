"""The user's own labelled data: any number of classes, columns named the user's way, a test split
held out when the corpus has none, text fields of any length, per-class scores; real IMDB
reviews relabelled by their star rating (in each file's name) into 3 and 5 classes, and a binary
set skewed 90/10."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ulmfit_core.config import Columns
from ulmfit_core.errors import DataError
from ulmfit_core.model.baseline import nb_logistic_regression
from ulmfit_core.model.metrics import classification_scores
from ulmfit_core.reporting import headline_figures
from ulmfit_core.run.layout import read_json
from ulmfit_core.text.data import read_shard
from ulmfit_core.text.ingest import ingest
from ulmfit_core.text.sources import IMDB_ENV
from ulmfit_core.text.tables import table_batches, texts_of

from conftest import error_line, real_reviews, ulmfit

# Star ratings (1-4 negative, 7-10 positive) grouped into classes.
CLASSES = {3: {1: "bad", 2: "bad", 3: "mixed", 4: "mixed", 7: "mixed", 8: "mixed", 9: "good", 10: "good"},
           5: {1: "1", 2: "2", 3: "2", 4: "3", 7: "3", 8: "4", 9: "4", 10: "5"}}


@pytest.fixture(scope="session")
def rated() -> list[dict]:
    """Real reviews with their split and star rating: 60 of each of train/pos, train/neg,
    test/pos, test/neg, and 60 unlabelled. Without the IMDB tarball the hand-written reviews
    take ratings in turn (their texts then say nothing of the classes: the tests check the
    mechanics, not the accuracy)."""
    rows = []
    for group, files in real_reviews(60).items():
        split, polarity = group.split("/")
        for i, (name, data) in enumerate(files):
            rating = None
            if polarity != "unsup":
                rating = int(name.rsplit("_", 1)[1][:-4]) if os.environ.get(IMDB_ENV) else \
                    [1, 3, 4, 2][i % 4] + (6 * (polarity == "pos"))
            rows.append({"id": f"{group}/{name}", "split": "unsup" if rating is None else split,
                         "rating": rating, "text": data.decode()})
    return rows


def _by_hand(predictions: pa.Table) -> dict:
    """Accuracy, confusion, per-class precision/recall/F1 and macro-F1 from a predictions file,
    counted one review at a time."""
    labels = [c[2:] for c in predictions.column_names if c.startswith("p_")]
    truth = predictions.column("label").to_pylist()
    probs = [predictions.column(f"p_{y}").to_pylist() for y in labels]
    pred = [labels[max(range(len(labels)), key=lambda j: probs[j][i])] for i in range(len(truth))]
    confusion = [[sum(1 for t, p in zip(truth, pred) if t == a and p == b) for b in labels] for a in labels]
    per_class, f1s = {}, []
    for y in labels:
        hit = sum(1 for t, p in zip(truth, pred) if t == p == y)
        precision = hit / pred.count(y) if pred.count(y) else 0.0
        recall = hit / truth.count(y) if truth.count(y) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[y] = (precision, recall, f1, truth.count(y))
        if truth.count(y) or pred.count(y):
            f1s.append(f1)
    return {"labels": labels, "accuracy": sum(t == p for t, p in zip(truth, pred)) / len(truth),
            "confusion": confusion, "per_class": per_class, "macro_f1": sum(f1s) / len(f1s)}


def _run(tmp_path, source, *options) -> tuple:
    """`ulmfit run` on `source` (tiny preset); its metrics, checked against a hand computation
    from the predictions file, and its report."""
    out = tmp_path / "run"
    result = ulmfit("run", "--data", source, "--out", out, "--preset", "tiny", "--workers", 1,
                    "--seed", 1, *options)
    assert result.returncode == 0, result.stderr[-5000:]
    test = read_json(out / "classifier" / "test.json")
    hand = _by_hand(pq.read_table(out / "classifier" / "test-predictions.parquet"))
    assert test["labels"] == hand["labels"] and test["confusion"] == hand["confusion"]
    assert test["accuracy"] == pytest.approx(hand["accuracy"])
    assert test["macro_f1"] == pytest.approx(hand["macro_f1"])
    for scores in test["per_class"]:
        assert (scores["precision"], scores["recall"], scores["f1"], scores["support"]) == \
            pytest.approx(hand["per_class"][scores["label"]])
    metrics = read_json(out / "metrics.json")
    assert metrics["test"]["per_class"] == test["per_class"]
    assert metrics["test"]["macro_f1"] == test["macro_f1"]
    baseline = metrics["baseline"]
    assert [c["label"] for c in baseline["per_class"]] == hand["labels"] and baseline["n"] == test["n"]
    return out, metrics, (out / "report.md").read_text(), result.stdout + result.stderr


@pytest.mark.slow
def test_three_classes_from_a_csv_with_its_own_column_names_and_no_test_split(tmp_path, rated):
    """Columns named otherwise, no split column (the test split is held out: 25% of each label),
    unlabelled rows among them."""
    label = CLASSES[3]
    rows = [r for r in rated if r["rating"] is None or r["id"].startswith("train/")]
    src = tmp_path / "reviews.csv"
    pacsv.write_csv(pa.table({"review_id": [r["id"] for r in rows], "review": [r["text"] for r in rows],
                              "stars": [label.get(r["rating"], "") for r in rows]}), src)
    out, metrics, report, said = _run(tmp_path, src, "--text-column", "review", "--label-column",
                                      "stars", "--id-column", "review_id", "--test-share", 0.25)
    train = {y: sum(label.get(r["rating"]) == y for r in rows) for y in ("bad", "good", "mixed")}
    held = {y: int(0.25 * n + 0.5) for y, n in train.items()}
    test_split = metrics["preprocess"]["test_split"]
    assert test_split == {"from": "held out", "share": 0.25, "seed": 1, "docs": held}
    assert metrics["test"]["n"] == sum(held.values()) and metrics["test"]["labels"] == ["bad", "good", "mixed"]
    # The held-out reviews are the test split of every shard, and no classifier trained on them.
    tested = set(pq.read_table(out / "classifier" / "test-predictions.parquet").column("id").to_pylist())
    ids = pa.concat_tables(read_shard(p, ["id", "split"]) for p in sorted((out / "ids").glob("part-*.parquet")))
    assert tested == {i for i, s in zip(*(c.to_pylist() for c in ids.columns)) if s == "test"}
    assert all(i.startswith("train/") for i in tested)
    assert metrics["baseline"]["model"].endswith("one-vs-rest over 3 classes")
    assert metrics["baseline"]["train_n"] == sum(train.values()) - sum(held.values())
    assert "- test split: held out from the labelled train documents, 25% of each label" in report
    assert "| label | train | test | unsup |" in report and "| (none) | 0 | 0 | 60 |" in report
    assert "| label | precision | recall | F1 | NB-LR F1 | test reviews |" in report
    assert "no labelled test split: held out 25% of each label's train documents" in said

    texts, scored = tmp_path / "texts.csv", tmp_path / "scored.csv"
    pacsv.write_csv(pa.table({"review": ["A masterpiece, ten stars.", "Dull and too long."]}), texts)
    result = ulmfit("predict", "--model", out, "--input", texts, "--text-column", "review",
                    "--output", scored)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pacsv.read_csv(scored)
    assert table.column_names == ["review", "pred", "p_bad", "p_good", "p_mixed", "skipped"]
    for i in range(2):
        assert sum(table.column(f"p_{y}")[i].as_py() for y in ("bad", "good", "mixed")) == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_five_classes_from_parquet_with_a_split_column(tmp_path, rated):
    label = CLASSES[5]
    src = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in rated],
                             "sentiment": [label.get(r["rating"]) for r in rated],
                             "part": [r["split"] for r in rated]}), src)
    out, metrics, report, _ = _run(tmp_path, src, "--label-column", "sentiment", "--split-column", "part")
    assert metrics["preprocess"]["test_split"] == {"from": "corpus"}
    assert metrics["test"]["labels"] == ["1", "2", "3", "4", "5"]
    assert metrics["test"]["n"] == sum(1 for r in rated if r["split"] == "test")
    assert len(metrics["test"]["confusion"]) == 5 and len(metrics["baseline"]["per_class"]) == 5
    assert "- test split: the corpus's own" in report
    rows = {row.split(" | ")[0]: row for row in report.splitlines() if row.startswith("| ")}
    assert all(f"| {y}" in rows for y in "12345")


@pytest.mark.slow
def test_a_skewed_binary_set_is_scored_per_class(tmp_path, rated):
    """90% positive: accuracy alone would hide a classifier that ignores the rare class."""
    def skewed(split):
        pos = [r for r in rated if r["split"] == split and r["rating"] >= 7]
        neg = [r for r in rated if r["split"] == split and r["rating"] <= 4][: len(pos) // 9]
        return pos + neg

    rows = skewed("train") + skewed("test")
    src = tmp_path / "skewed.csv"
    pacsv.write_csv(pa.table({"text": [r["text"] for r in rows], "split": [r["split"] for r in rows],
                              "label": ["pos" if r["rating"] >= 7 else "neg" for r in rows]}), src)
    out, metrics, report, _ = _run(tmp_path, src)
    support = {c["label"]: c["support"] for c in metrics["test"]["per_class"]}
    assert support == {"neg": 6, "pos": 60}
    assert "macro-F1" in report.splitlines()[2]  # in the headline
    figures = {row["figure"] for row in headline_figures(metrics)}  # the UI's table artifact
    assert {"test macro-F1", "test F1: neg", "test F1: pos", "NB-LR baseline macro-F1"} <= figures


def test_scores_match_scikit_learn():
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    truth = [0, 0, 1, 1, 1, 2, 2, 3]  # class 3 never predicted; class 4 never in the truth
    pred = [0, 1, 1, 1, 2, 2, 4, 0]
    scores = classification_scores(pred, truth, ["a", "b", "c", "d", "e"])
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=range(5), zero_division=0)
    assert [c["precision"] for c in scores["per_class"]] == pytest.approx(p)
    assert [c["recall"] for c in scores["per_class"]] == pytest.approx(r)
    assert [c["f1"] for c in scores["per_class"]] == pytest.approx(f)
    assert [c["support"] for c in scores["per_class"]] == list(s)
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert scores["confusion"] == confusion_matrix(truth, pred, labels=range(5)).tolist()
    assert scores["accuracy"] == 4 / 8


def test_nblr_takes_k_classes_and_keeps_its_binary_model(rated):
    label = CLASSES[5]
    train = [r for r in rated if r["split"] == "train"]
    test = [r for r in rated if r["split"] == "test"]
    five = nb_logistic_regression([r["text"] for r in train], [label[r["rating"]] for r in train],
                                  [r["text"] for r in test], [label[r["rating"]] for r in test])
    assert five["labels"] == ["1", "2", "3", "4", "5"] and five["n"] == len(test)
    assert five["model"].endswith("one-vs-rest over 5 classes")
    assert sum(map(sum, five["confusion"])) == len(test)
    binary = nb_logistic_regression([r["text"] for r in train], [str(r["rating"] >= 7) for r in train],
                                    [r["text"] for r in test], [str(r["rating"] >= 7) for r in test])
    assert binary["model"] == "NB-weighted logistic regression, binary uni+bigrams"
    if os.environ.get(IMDB_ENV):  # real reviews, 120 to learn from: above chance
        assert binary["accuracy"] > 0.65 and five["accuracy"] > 0.2


def test_the_held_out_test_split_is_stratified_seeded_and_stable(tmp_path, rated):
    label = CLASSES[3]
    rows = [r for r in rated if r["rating"] is not None]
    src = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                             "label": [label[r["rating"]] for r in rows]}), src)

    def held_out(seed, shard_docs=50):
        result = ingest(src, tmp_path / f"raw-{seed}-{shard_docs}", seed=seed, shard_docs=shard_docs,
                        test_share=0.2)
        table = pa.concat_tables(read_shard(p) for p in result.shards)
        return result, {i for i, s in zip(table.column("id").to_pylist(), table.column("split").to_pylist())
                        if s == "test"}

    result, test = held_out(0)
    per_label = {y: sum(label[r["rating"]] == y for r in rows) for y in ("bad", "good", "mixed")}
    assert result.test_split["docs"] == {y: int(0.2 * n + 0.5) for y, n in per_label.items()}
    assert result.groups == {**{f"test/{y}": int(0.2 * n + 0.5) for y, n in per_label.items()},
                             **{f"train/{y}": n - int(0.2 * n + 0.5) for y, n in per_label.items()}}
    assert held_out(0, shard_docs=7)[1] == test  # shards do not decide
    assert held_out(1)[1] != test


def test_columns_named_otherwise_and_fields_of_any_length(tmp_path):
    long = " ".join(["A long, long review of a very long film."] * 60_000)  # 2.5 MB in one field
    src = tmp_path / "long.csv"
    pacsv.write_csv(pa.table({"body": ["Short and fine.", long, "Fine too."],
                              "sentiment": ["pos", "neg", "pos"], "fold": ["train", "train", "test"]}), src)
    with pytest.raises(pa.ArrowInvalid, match="straddling object"):  # pyarrow's own reader fails
        pacsv.read_csv(src)
    result = ingest(src, tmp_path / "raw", columns=Columns(text="body", label="sentiment", split="fold"))
    texts = pa.concat_tables(read_shard(p) for p in result.shards).column("text").to_pylist()
    assert texts == ["Short and fine.", long, "Fine too."]
    assert result.groups == {"test/pos": 1, "train/neg": 1, "train/pos": 1}
    raw = [t for rows in table_batches(src, "body") for t in texts_of(rows, "body")[1]]
    assert len(raw) == 3 and raw[1] == long.encode()  # what `ulmfit predict --input` reads

    with pytest.raises(DataError, match=r"long\.csv: no 'stars' column \(--label-column; columns: "
                                        r"body, sentiment, fold\)"):
        ingest(src, tmp_path / "raw2", columns=Columns(text="body", label="stars"))
    with pytest.raises(DataError, match=r"long\.csv: no 'text' column \(columns: body"):
        ingest(src, tmp_path / "raw2")
    gap = tmp_path / "gap.csv"
    gap.write_text("text,label,split\nGood.,pos,train\nBad.,,train\nMore.,,unsup\n")
    with pytest.raises(DataError, match=r"gap\.csv: row 1: empty value in the label column 'label' "
                                        r"of a train row \(give text without a label the split 'unsup'\)"):
        ingest(gap, tmp_path / "raw3")


@pytest.mark.parametrize("options, message", [
    (["--label-column", "stars"], "{src}: no 'stars' column (--label-column; columns: text, label)"),
    (["--test-share", "0"], "--test-share must be a fraction between 0 and 1 (exclusive), got 0.0"),
    (["--test-share", "1"], "--test-share must be a fraction between 0 and 1 (exclusive), got 1.0"),
    (["--lang", "klingon"], "--lang 'klingon': not a language spaCy knows (e.g. en, de, fr, es, it, "
                            "nl, pt, xx for many)"),
])
def test_bad_options_are_one_line_before_anything_starts(tmp_path, options, message):
    src = tmp_path / "reviews.csv"
    pacsv.write_csv(pa.table({"text": ["Good.", "Bad."], "label": ["pos", "neg"]}), src)
    out = tmp_path / "run"
    result = ulmfit("run", "--data", src, "--out", out, *options)
    assert error_line(result) == "ulmfit: error: " + message.format(src=src)
    assert not out.exists()


def test_a_label_only_in_the_test_split_is_refused_before_the_language_model(tmp_path, rated):
    rows = [r for r in rated if r["rating"] is not None]
    src = tmp_path / "reviews.csv"
    pacsv.write_csv(pa.table({"text": [r["text"] for r in rows], "split": [r["split"] for r in rows],
                              "grade": [("top" if r["split"] == "test" and r["rating"] == 10 else
                                         "up" if r["rating"] >= 7 else "down") for r in rows]}), src)
    out = tmp_path / "run"
    result = ulmfit("run", "--data", src, "--out", out, "--workers", 1, "--label-column", "grade")
    n = sum(r["split"] == "test" and r["rating"] == 10 for r in rows)
    assert error_line(result) == (
        f"ulmfit: error: {src}: label column 'grade': label(s) ['top'] are in the test split ({n} "
        "documents) but in no train document, so the classifier could never predict them")
    assert not (out / "lm").exists() and read_json(out / "run.json")["status"] == "failed"


def test_lang_reaches_the_tokenizer_and_its_manifest(tmp_path):
    from ulmfit_core import stages
    from ulmfit_core.config import get_preset
    from ulmfit_core.run.layout import RunDir

    src = tmp_path / "de.csv"
    pacsv.write_csv(pa.table({"text": ["Das ist z.B. ein guter Film, oder?"] * 3}), src)
    tokens = {}
    for lang in ("en", "de"):
        run = RunDir(tmp_path / lang)
        stages.preprocess_in_process(run, str(src), get_preset("tiny", lang=lang))
        assert read_json(run.tokenizer / "tokenizer.json")["lang"] == lang
        tokens[lang] = read_shard(next(run.tokens.glob("part-*.parquet"))).column("tokens")[0].as_py()
    assert "z.b." in tokens["de"] and "z.b." not in tokens["en"]  # spaCy's German exceptions
