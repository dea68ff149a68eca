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
from wsi_pipeline.model.device import resolve_device
from wsi_pipeline.model.predict import Model

THRESHOLD = 0.5  # binary: predicted tumour when the tumour class's probability is at least this


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


def evaluate_patches(
    model: Model, dataset: PatchDataset, batch_size: int = 256, tta: bool = False, show_progress: bool = False
) -> dict:
    """Metrics of ``model`` on every patch of ``dataset`` (see :func:`patch_metrics`), read in batches."""
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
    metrics = patch_metrics(np.concatenate(labels), np.concatenate(probs), dataset.class_names)
    return metrics | {"tta": tta}


def evaluate_patch_data(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    batch_size: int = 256,
    tta: bool = False,
    device: str = "auto",
    show_progress: bool = False,
) -> dict:
    """A model (folder or bundled name) on labelled patches (PCam folder, Kaggle folder or class folders):
    ``{"kind": "patches", "data": its description, "metrics": see evaluate_patches, "model": name,
    architecture, folder and weights sha256}``."""
    loaded = Model(model, resolve_device(device))
    with open_patch_dataset(data, split=split) as dataset:
        metrics = evaluate_patches(loaded, dataset, batch_size, tta, show_progress=show_progress)
        description = dataset.describe()
    model_info = {
        "name": loaded.card.name,
        "architecture": loaded.card.architecture,
        "folder": str(loaded.folder),
        "weights_sha256": loaded.weights_sha256,
    }
    return {"kind": "patches", "data": description, "metrics": metrics, "model": model_info}
