"""``wsi-eval``: measure a model on labelled data and print (and optionally save) the metrics.

Input kinds are told apart by :func:`evaluate_input`; patch datasets (PCam, Kaggle, class folders) are the one
kind so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .datasets import open_patch_dataset
from .device import resolve_device
from .errors import InputError
from .evaluate import evaluate_patches
from .model import Model, record_metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-eval", description=__doc__)
    p.add_argument("data", help="labelled patches: PCam folder, Kaggle folder or class folders")
    p.add_argument(
        "--model", required=True, help="model folder (model.json + weights) or a bundled model's name"
    )
    p.add_argument("--split", default="test", help="PCam split to evaluate (default: test)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations of each patch")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--record", metavar="NAME", help="also store the metrics in the model's card, under metrics.NAME"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def evaluate_input(model: Model, path: str, args: argparse.Namespace) -> dict:
    """Results for one input, by kind: {"kind", "data" (its description), "metrics"}."""
    with open_patch_dataset(path, split=args.split) as dataset:
        metrics = evaluate_patches(model, dataset, args.batch_size, args.tta, show_progress=not args.quiet)
        return {"kind": "patches", "data": dataset.describe(), "metrics": metrics}


def write_json(path: Path, results: dict) -> None:
    try:
        path.write_text(json.dumps(results, indent=2) + "\n")
    except OSError as error:
        raise InputError(path, f"cannot be written ({error.strerror})") from None


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def format_results(results: dict) -> str:
    """A readable table of the metrics and the confusion matrix."""
    metrics, data, model = results["metrics"], results["data"], results["model"]
    rows = [
        ("model", f"{model['name']} ({model['architecture']}) {model['folder']}"),
        ("data", f"{data['format']}: {', '.join(data['paths'])}"),
        ("patches", f"{metrics['n']}" + (" (8-fold TTA)" if metrics["tta"] else "")),
        ("ROC AUC", _number(metrics["auc"])),
        ("accuracy", _number(metrics["accuracy"])),
        ("balanced accuracy", _number(metrics["balanced_accuracy"])),
    ]
    if "sensitivity" in metrics:
        at = f"{metrics['positive_class']} ≥ {metrics['threshold']}"
        rows += [
            (f"sensitivity ({at})", _number(metrics["sensitivity"])),
            ("specificity", _number(metrics["specificity"])),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    names = metrics["class_names"]
    cell = max(6, *map(len, names), *(len(str(v)) for row in metrics["confusion_matrix"] for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * (cell + 2) + "  ".join(f"{name:>{cell}}" for name in names))
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        lines.append(f"{name:>{cell}}  " + "  ".join(f"{value:>{cell}}" for value in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        model = Model(args.model, resolve_device(args.device))
        results = evaluate_input(model, args.data, args)
        card = model.card
        results["model"] = {
            "name": card.name,
            "architecture": card.architecture,
            "folder": str(model.folder),
            "weights_sha256": model.weights_sha256,
        }
        if args.json is not None:
            write_json(args.json, results)
        if args.record:
            command = " ".join(["wsi-eval", *(argv if argv is not None else sys.argv[1:])])
            record_metrics(
                model.folder, args.record, {**results["metrics"], "data": results["data"], "command": command}
            )
    except (InputError, ValueError) as error:
        print(f"wsi-eval: error: {error}", file=sys.stderr)
        return 2
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
