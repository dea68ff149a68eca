"""Patch-level evaluation of a model on labelled patches, with optional dihedral test-time augmentation."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.progress import Progress
from wsi_pipeline.datasets.patches import PatchDataset, open_patch_dataset
from wsi_pipeline.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    binary_roc_auc,
    confusion_matrix,
    roc_auc,
    sensitivity,
    specificity,
)
from wsi_pipeline.evaluation.plots import plot_errors
from wsi_pipeline.model.device import device_name
from wsi_pipeline.model.predict import Model

THRESHOLD = 0.5  # binary: predicted tumour when the tumour class's probability is at least this
ERRORS_SHOWN = 8  # false positives and false negatives each, in the results and errors.png


def index_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``indices``, each sorted (fast ordered reads from HDF5)."""
    return [np.sort(indices[start : start + batch_size]) for start in range(0, len(indices), batch_size)]


def read_batches(dataset: PatchDataset, batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``dataset.read_batch`` of each index batch in turn; the next batch is read on a thread meanwhile."""
    with ThreadPoolExecutor(1) as reader:
        pending = [reader.submit(dataset.read_batch, batch) for batch in batches[:1]]
        for next_batch in [*batches[1:], None]:
            result = pending.pop().result()
            if next_batch is not None:
                pending.append(reader.submit(dataset.read_batch, next_batch))
            yield result


def _defined(value: float) -> float | None:
    return None if np.isnan(value) else value


def patch_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """AUC, accuracy, balanced accuracy, confusion matrix (rows true, columns predicted) and n; for two
    classes also sensitivity and specificity at ``THRESHOLD``. A metric the labels leave undefined (AUC of one
    class, sensitivity without positives) is None."""
    binary = len(class_names) == 2
    tumour = tumour_class_index(class_names)
    if binary:  # tumour against the other class, whichever index the model gives tumour
        predictions = np.where(probs[:, tumour] >= THRESHOLD, tumour, 1 - tumour)
    else:
        predictions = probs.argmax(axis=1)
    confusion = confusion_matrix(labels, predictions, len(class_names))
    try:
        if binary:
            auc: float | None = binary_roc_auc(np.asarray(labels) == tumour, probs[:, tumour])
        else:
            auc = roc_auc(labels, probs)
    except ValueError:
        auc = None
    metrics = {
        "n": len(labels),
        "auc": auc,
        "accuracy": accuracy(confusion),
        "balanced_accuracy": balanced_accuracy(confusion),
    }
    if binary:
        metrics |= {
            "sensitivity": _defined(sensitivity(confusion, tumour)),
            "specificity": _defined(specificity(confusion, tumour)),
            "threshold": THRESHOLD,
            "positive_class": class_names[tumour],
        }
    return metrics | {"class_names": list(class_names), "confusion_matrix": confusion.tolist()}


def score_patches(
    model: Model, dataset: PatchDataset, batch_size: int = 256, tta: bool = False, show_progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The labels (N,) and ``model``'s class probabilities (N, classes) of every patch of ``dataset``, in its
    order, read in batches."""
    if list(model.card.class_names) != list(dataset.class_names):
        raise ValueError(
            f"model classes {model.card.class_names} differ from data classes {dataset.class_names}"
        )
    probs, labels = [], []
    progress = Progress(len(dataset), "evaluating") if show_progress else None
    for patches, batch_labels in read_batches(dataset, index_batches(np.arange(len(dataset)), batch_size)):
        probs.append(model.predict(patches, tta=tta))
        labels.append(batch_labels)
        if progress is not None:
            progress.update(len(patches))
    if progress is not None:
        progress.close()
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_patches(
    model: Model, dataset: PatchDataset, batch_size: int = 256, tta: bool = False, show_progress: bool = False
) -> dict:
    """Metrics of ``model`` on every patch of ``dataset`` (see :func:`patch_metrics`), read in batches."""
    labels, probs = score_patches(model, dataset, batch_size, tta, show_progress)
    return patch_metrics(labels, probs, dataset.class_names) | {"tta": tta}


def confident_errors(labels: np.ndarray, probs: np.ndarray, class_names: list[str], n: int) -> dict:
    """The ``n`` most confident false positives (not tumour, tumour probability ≥ ``THRESHOLD``, highest
    first) and false negatives (tumour, below it, lowest first), as ``{"false_positives": [{"index": i,
    "label": name, "probability": p}, ...], "false_negatives": [...]}``; probabilities of the tumour class."""
    tumour = tumour_class_index(class_names)
    scores = probs[:, tumour]
    is_tumour, called = labels == tumour, scores >= THRESHOLD
    false_positives = np.flatnonzero(~is_tumour & called)
    false_negatives = np.flatnonzero(is_tumour & ~called)
    chosen = {
        "false_positives": false_positives[np.argsort(-scores[false_positives], kind="stable")[:n]],
        "false_negatives": false_negatives[np.argsort(scores[false_negatives], kind="stable")[:n]],
    }
    return {
        kind: [
            {"index": int(i), "label": class_names[labels[i]], "probability": round(float(scores[i]), 6)}
            for i in indices
        ]
        for kind, indices in chosen.items()
    }


def evaluate_patch_data(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    batch_size: int = 256,
    tta: bool = False,
    device: str = "auto",
    show_progress: bool = False,
    errors_png: str | Path | None = None,
) -> dict:
    """A model (folder or bundled name) on labelled patches (PCam folder, Kaggle folder or class folders):
    ``{"kind": "patches", "data": its description, "metrics": see evaluate_patches, "errors": the most
    confident errors (``confident_errors``), "model": name, architecture, folder and weights sha256}``; with
    ``errors_png``, those errors drawn there (``plots.plot_errors``) and its path as ``"errors_png"``."""
    loaded = Model(model, device_name(device))
    with open_patch_dataset(data, split=split) as dataset:
        labels, probs = score_patches(loaded, dataset, batch_size, tta, show_progress=show_progress)
        metrics = patch_metrics(labels, probs, dataset.class_names) | {"tta": tta}
        errors = confident_errors(labels, probs, dataset.class_names, ERRORS_SHOWN)
        if errors_png is not None:
            shown = np.array([error["index"] for kind in errors.values() for error in kind], np.int64)
            tumour = dataset.class_names[tumour_class_index(dataset.class_names)]
            plot_errors(errors, dataset.read_batch(shown)[0], tumour, errors_png)
        description = dataset.describe()
    model_info = {
        "name": loaded.card.name,
        "architecture": loaded.card.architecture,
        "folder": str(loaded.folder),
        "weights_sha256": loaded.weights_sha256,
    }
    results = {
        "kind": "patches",
        "data": description,
        "metrics": metrics,
        "errors": errors,
        "model": model_info,
    }
    return results | ({"errors_png": str(errors_png)} if errors_png is not None else {})
