"""report.md: the headline, then one section per part of the run, rendered from metrics.json."""

from __future__ import annotations

import math

from ..text.ingest import FEW_PER_CLASS, label_counts


def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _cell(text: str, width: int = 160) -> str:
    """Text fit for one markdown table cell."""
    text = " ".join(text.replace("<br />", " ").split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width] + "…"


def render_report(metrics: dict, previews: dict[str, dict]) -> str:
    """report.md: the headline, then a section each, those of the models once an LM is trained;
    `previews`: what the stages left of each kind of model trained ("lm", "classifier"): its
    preview.json, and the language model's samples.json."""
    trained = bool(metrics["lm"].get("history"))
    sections = [_headline(metrics, trained), _data(metrics)]
    if trained:
        sections += [_language_model(metrics["lm"]), _classifier(metrics["classifier"]),
                     _training(metrics), _test_set(metrics), _label_curve(metrics.get("label_curve"))]
    sections.append(_batches({kind: p["batch"] for kind, p in previews.items() if "batch" in p}))
    if trained and previews.get("lm", {}).get("samples"):
        sections.append(_samples(previews["lm"]["samples"]))
    sections.append(_times(metrics))
    return "\n".join(line for section in sections for line in section)


def _headline(metrics: dict, trained: bool) -> list[str]:
    run, pre, lm, test = metrics["run"], metrics["preprocess"], metrics["lm"], metrics["test"]
    ensemble, base = metrics.get("ensemble"), metrics.get("baseline") or {}
    if not trained:
        headline = (f"**Preprocessed, no model trained yet:** {pre.get('docs')} documents, "
                    f"{pre.get('tokens')} tokens, vocab {metrics['vocab']['size']} · preset "
                    f"`{run.get('preset')}`")
    else:
        best = ensemble["ensemble"] if ensemble else test
        headline = (f"**Test accuracy: {_pct(best.get('accuracy'))}** "
                    f"({'forward + backward' if ensemble else metrics.get('direction')}), "
                    f"macro-F1 {_fmt(best.get('macro_f1'), '.3f')} ")
        headline += (f"on {test.get('n')} reviews · NB-LR baseline on the same split: "
                     f"{_pct(base.get('accuracy'))}, macro-F1 {_fmt(base.get('macro_f1'), '.3f')} · "
                     f"LM perplexity {_fmt(lm.get('perplexity'), '.1f')} "
                     f"· preset `{run.get('preset')}` on `{metrics.get('device')}` "
                     f"({metrics.get('precision')})")
    return ["# ULMFiT run report", "", headline, "",
            *(["![training curves](curves.png)", ""] if trained else [])]


def _data(metrics: dict) -> list[str]:
    run, pre, vocab_size = metrics["run"], metrics["preprocess"], metrics["vocab"]["size"]
    groups = pre.get("groups") or {}
    splits = [s for s in ("train", "test", "unsup") if any(g.startswith(f"{s}/") for g in groups)]
    labels = sorted({g.split("/", 1)[1] for g in groups}, key=lambda y: (y == "-", y))
    counts = label_counts(groups)
    few = [f"'{y}' ({n})" for y, n in sorted(counts.get("train", {}).items()) if n < FEW_PER_CLASS]
    return [
        "## Data",
        f"- source: `{pre.get('source')}` (limit per split/label: {run.get('limit') or 'none'}, "
        f"seed {run.get('seed')})",
        f"- documents: {pre.get('docs')} in {pre.get('shards')} shards; tokens: {pre.get('tokens')}",
        f"- skipped: {pre.get('skipped')} {pre.get('skipped_by_reason') or ''}",
        f"- vocab: {vocab_size} entries (ln = {_fmt(math.log(vocab_size) if vocab_size else None, '.2f')}); "
        f"unknown tokens after numericalizing: {pre.get('unknown_tokens')}",
        *_test_origin(pre.get("test_split")),
        *([f"- **warning: few training documents for {', '.join(few)}**: per-class scores of "
           "these classes rest on very little"] if few else []),
        "",
        "| label | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
        *[f"| {'(none)' if y == '-' else y} | " + " | ".join(str(groups.get(f"{s}/{y}", 0)) for s in splits)
          + " |" for y in labels],
        "",
    ]


def _test_origin(test_split: dict | None) -> list[str]:
    if not test_split:
        return []
    if test_split["from"] == "corpus":
        return ["- test split: the corpus's own"]
    held = ", ".join(f"{y} {n}" for y, n in test_split["docs"].items())
    return [f"- test split: held out from the labelled train documents, {test_split['share']:.0%} "
            f"of each label (seed {test_split['seed']}; {held}); no model saw them before its "
            "evaluation"]


def _language_model(lm: dict) -> list[str]:
    return [
        "## Language model",
        f"valid loss {_fmt(lm.get('valid_loss'))}, accuracy {_fmt(lm.get('accuracy'))}, "
        f"perplexity {_fmt(lm.get('perplexity'), '.2f')} after {lm.get('epochs')} epoch(s) on "
        f"{lm.get('train_tokens')} tokens ({_fmt(lm.get('tokens_per_s'), '.0f')} tokens/s)",
        "",
        "| epoch | train loss | valid loss | accuracy | perplexity |",
        "|---|---|---|---|---|",
        *[f"| {h['epoch']} | {_fmt(h.get('train_loss'))} | {_fmt(h.get('valid_loss'))} | "
          f"{_fmt(h.get('accuracy'))} | {_fmt(h.get('perplexity'), '.2f')} |" for h in lm.get("history") or []],
        "",
    ]


def _classifier(clas: dict) -> list[str]:
    sample = ([f"Trained on a balanced sample of {clas['train_labels']} labelled reviews "
               f"({clas['train_docs']} train, {clas['valid_docs']} valid; `--train-labels`).", ""]
              if clas.get("train_labels") else [])
    return [
        "## Classifier (gradual unfreezing)",
        *sample,
        "| stage | epochs | lr | valid loss | valid accuracy | seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {s['name']} | {s['epochs']} | {s['lr']:g} | {_fmt(s['valid_loss'])} | "
          f"{_fmt(s['accuracy'])} | {s['seconds']:.0f} |" for s in clas["stages"]],
        "",
    ]


def _training(metrics: dict) -> list[str]:
    """One table row per training stage: where it ran, in which precision, how fast."""
    directions = [("", metrics)]
    if metrics.get("backward"):
        directions.append((" (backward)", metrics["backward"]))
    rows = []
    for suffix, d in directions:
        for name, m in (("language model", d["lm"]), ("classifier", d["classifier"])):
            rows.append(f"| {name}{suffix} | {_fmt(m.get('device'))} | {_fmt(m.get('gpu'))} | "
                        f"{_fmt(m.get('precision'))} | {_fmt(m.get('tokens_per_s'), ',.0f')} | "
                        f"{_fmt(m.get('peak_gpu_memory_mb'), ',.0f')} | "
                        f"{_fmt(m.get('seconds'), '.0f')} |")
    return ["## Training",
            "| stage | device | GPU | precision | tokens/s | peak GPU memory (MB) | seconds |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def _test_set(metrics: dict) -> list[str]:
    """The ensemble beside its parts, the confusion matrix, the reviews got most wrong."""
    test, ensemble, base = metrics["test"], metrics.get("ensemble"), metrics.get("baseline") or {}
    lines = ["## Test set"]
    if ensemble:
        lines += ["| model | test accuracy | macro-F1 |", "|---|---|---|",
                  *[f"| {name} | {_pct(r['accuracy'])} | {_fmt(r.get('macro_f1'), '.3f')} |"
                    for name, r in ensemble.items()],
                  f"| NB-LR baseline | {_pct(base.get('accuracy'))} | {_fmt(base.get('macro_f1'), '.3f')} |", "",
                  "Forward model on the test set:", ""]
    if test.get("confusion"):
        labels = test["labels"]
        f1 = {c["label"]: c["f1"] for c in base.get("per_class") or []}
        lines += ["| true \\ predicted | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels),
                  *[f"| {labels[i]} | " + " | ".join(map(str, row)) + " |"
                    for i, row in enumerate(test["confusion"])],
                  "", "| label | precision | recall | F1 | NB-LR F1 | test reviews |",
                  "|---|---|---|---|---|---|",
                  *[f"| {c['label']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                    f"{_fmt(f1.get(c['label']), '.3f')} | {c['support']} |" for c in test["per_class"]],
                  f"| **macro** | | | **{_fmt(test.get('macro_f1'), '.3f')}** | "
                  f"{_fmt(base.get('macro_f1'), '.3f')} | {test.get('n')} |",
                  "", f"Baseline: {base.get('model', '—')}."]
    else:
        lines.append("No labelled test split in this corpus.")
    if test.get("top_losses"):
        lines += ["", "Reviews the classifier got most wrong:", "",
                  "| id | label | predicted | p(label) | text |", "|---|---|---|---|---|",
                  *[f"| {t['id']} | {t['label']} | {t['predicted']} | {t['p_label']:.3f} | "
                    f"{_cell(t['text'])} |" for t in test["top_losses"]]]
    return lines + [""]


def _label_curve(curve: dict | None) -> list[str]:
    if not curve:
        return []
    return ["## What labels buy (`ulmfit label-curve`)", "", f"![label curve]({curve['plot']})", "",
            "| labelled reviews | ULMFiT test accuracy | NB-LR on the same reviews | ULMFiT macro-F1 "
            "| NB-LR macro-F1 |", "|---|---|---|---|---|",
            *[f"| {p['labels']}{' (all)' if p['all'] else ''} | {_pct(p['ulmfit'])} | {_pct(p['nblr'])} "
              f"| {_fmt(p.get('ulmfit_macro_f1'), '.3f')} | {_fmt(p.get('nblr_macro_f1'), '.3f')} |"
              for p in curve["points"]], ""]


def _batches(batches: dict[str, str]) -> list[str]:
    if not batches:
        return []
    lines = ["## What the models see (the first training batch, `ulmfit show-batch`)", ""]
    for kind, title in (("lm", "Language model: input `x`, target `y`"),
                        ("classifier", "Classifier: padded review and label")):
        if kind in batches:
            lines += [f"{title}:", "", "```", batches[kind], "```", ""]
    return lines


def _samples(samples: dict) -> list[str]:
    return [f"## Generated text (\"{samples['prompt']}\", temperature {samples['temperature']:g})", "",
            *[f"> {s}" for s in samples["samples"]], ""]


def _times(metrics: dict) -> list[str]:
    return ["## Time (seconds)", "| stage | seconds |", "|---|---|",
            *[f"| {k} | {_fmt(v, '.1f')} |" for k, v in metrics["seconds"].items()], ""]
