"""Figures (matplotlib, drawn off-screen): learning curves, the validation ROC, and the lesion-level FROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from wsi_pipeline.evaluation.metrics import roc_auc, roc_curve


def plot_learning_curves(history: list[dict], best: int, path: str | Path) -> Path:
    """Training and validation loss, and validation AUC, per epoch; the ``best`` epoch marked."""
    epochs = [entry["epoch"] for entry in history]
    aucs = [entry["val"]["auc"] for entry in history]
    figure = Figure(figsize=(9, 3.5))
    figure.subplots_adjust(
        left=0.08, right=0.98, bottom=0.14, top=0.91, wspace=0.25
    )  # no layout engine: faster
    loss_axes, auc_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [entry["train_loss"] for entry in history], "o-", label="training")
    loss_axes.plot(epochs, [entry["val_loss"] for entry in history], "o-", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axes.legend()
    auc_axes.plot(epochs, aucs, "o-", color="C2")
    auc_axes.axvline(best, color="grey", linestyle=":", label=f"best (epoch {best})")
    auc_axes.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC")
    auc_axes.legend()
    for axes in (loss_axes, auc_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """ROC curve of the last class for two classes, else one curve per class (one-vs-rest)."""
    figure = Figure(figsize=(4.5, 4.5))
    figure.subplots_adjust(left=0.15, right=0.95, bottom=0.12, top=0.92)
    axes = figure.subplots()
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for c in classes:
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
        axes.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc(labels == c, probs[:, c]):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="false positive rate", ylabel="true positive rate", title=f"Validation ROC (n = {len(labels)})"
    )
    axes.set_aspect("equal")
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_froc(froc: dict, path: str | Path, title: str = "Lesion-level FROC") -> Path:
    """The FROC curve of :func:`wsi_pipeline.froc.froc_score`, held at its last sensitivity beyond its last
    point (as the score does), with the sensitivities at the scored FP rates marked."""
    fp_rate, sensitivity = froc["curve"]["fp_per_slide"], froc["curve"]["sensitivity"]
    rates = [float(rate) for rate in froc["sensitivity_at"]]
    figure = Figure(figsize=(5.5, 4.2))
    figure.subplots_adjust(left=0.13, right=0.96, bottom=0.13, top=0.91)
    axes = figure.subplots()
    axes.plot(fp_rate, sensitivity, color="C0", label=f"FROC score {froc['score']:.3f}")
    if fp_rate[-1] < rates[-1]:
        axes.plot([fp_rate[-1], rates[-1]], [sensitivity[-1]] * 2, color="C0", linestyle=":")
    axes.plot(rates, list(froc["sensitivity_at"].values()), "o", color="C3", label="scored FP rates")
    axes.set_xscale("symlog", base=2, linthresh=rates[0])
    axes.set_xticks([0, *rates], ["0", *(f"{rate:g}" for rate in rates)])
    axes.set(
        xlim=(0, max(rates[-1], fp_rate[-1]) * 1.1),
        ylim=(0, 1.02),
        xlabel="false positives per slide",
        ylabel="metastasis detection sensitivity",
        title=title,
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_errors(errors: dict, patches: np.ndarray, tumour: str, path: str | Path) -> Path:
    """The most confident false positives (top row) and false negatives (bottom row) of ``confident_errors``,
    each patch (``patches``: theirs, in that order) titled with its tumour probability and index."""
    per_row = max(1, *(len(items) for items in errors.values()))
    figure = Figure(figsize=(1.25 * per_row + 0.3, 3.9))
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.8, hspace=0.8, wspace=0.1)
    rows = figure.subplots(2, per_row, squeeze=False)
    headings = {
        "false_positives": f"Most confident false positives: not {tumour}, called {tumour}",
        "false_negatives": f"Most confident false negatives: {tumour}, missed",
    }
    shown = iter(patches)
    for axes_row, (kind, items) in zip(rows, errors.items(), strict=True):
        for axes in axes_row:
            axes.set_axis_off()
        axes_row[0].text(0, 1.45, headings[kind], transform=axes_row[0].transAxes, fontsize=9, va="bottom")
        if not items:
            axes_row[0].text(0, 0.5, "none", transform=axes_row[0].transAxes, fontsize=9)
        for axes, item in zip(axes_row, items, strict=False):
            axes.imshow(next(shown), interpolation="nearest")
            axes.set_title(f"p {item['probability']:.3f}\n#{item['index']} ({item['label']})", fontsize=7)
    figure.savefig(path, dpi=120)
    return Path(path)
