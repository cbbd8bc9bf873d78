"""The run's figures: the training curves of the report, and the label curve."""

from __future__ import annotations

from pathlib import Path

from ..run.layout import atomic_path


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def plot_curves(metrics: dict, path: Path) -> Path:
    """LM losses per epoch, and classifier validation accuracy per epoch across the stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lm, ax_clas) = plt.subplots(1, 2, figsize=(10, 3.5))
    history = metrics["lm"].get("history") or []
    epochs = [h["epoch"] for h in history]
    for key in ("train_loss", "valid_loss"):
        ax_lm.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    ax_lm.set(title="language model", xlabel="epoch", ylabel="loss")
    stages = metrics["classifier"]["stages"]
    for stage in stages:
        ax_clas.plot([h["epoch"] for h in stage["history"]], [h["accuracy"] for h in stage["history"]],
                     marker="o", label=stage["name"])
    ax_clas.set(title="classifier (validation)", xlabel="epoch", ylabel="accuracy")
    for ax, drawn in ((ax_lm, history), (ax_clas, stages)):
        if drawn:  # a stage not trained yet (train-lm alone) has nothing to label
            ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_label_curve(points: list[dict], path: Path) -> Path:
    """Test accuracy of ULMFiT and NB-LR against labelled training reviews, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [p["labels"] for p in points]
    for key, name in (("ulmfit", "ULMFiT (fine-tuned LM)"), ("nblr", "NB-LR")):
        ax.plot(x, [100 * p[key] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set(title="test accuracy by labelled training reviews", xlabel="labelled reviews",
           ylabel="test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)
