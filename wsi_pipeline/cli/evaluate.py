"""``wsi-eval``: measure a model on labelled patches, or heatmaps against annotated slides; print the results
(and optionally save them).

    wsi-eval DATA --model MODEL [--split test] [--tta] [--json R.json] [--errors-png errors.png]
    wsi-eval --heatmaps OUT_DIR_OR_ZARRS --truth TRUTH_DIR_OR_FILES [--truth-format auto|asap|geojson|mask]
             [--mask-downsample N] [--missing-truth error|negative] [--threshold 0.5] [--json R.json]
             [--froc-png froc.png] [--froc-rules challenge|corrected] [--detections DIR]
             [--export-detections DIR]

Heatmaps are matched to truth files by slide stem: <stem>.xml (ASAP / Camelyon16), <stem>.geojson or
<stem>.truth.geojson (QuPath; wsi-synth), <stem>_mask.png|tif or <stem>.truth_mask.png (masks; downsample from
the slide's size unless given). Slides results: slide AUC (slide score = max), cell AUC and Dice, the
Camelyon16 lesion-level FROC (by the challenge's evaluation script, or with its departures corrected), and the
share of metastases > 0.5 mm detected. Detections are read from, or written to, the challenge's CSV files
(<stem>.csv: probability,x,y a line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsi_pipeline.cli.options import add_model_options, add_quiet, add_threshold, run_command
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.evaluation.annotations import FORMATS
from wsi_pipeline.evaluation.froc import DETECTION_FLOOR, RULES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsi-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("data", nargs="?", help="labelled patches: PCam folder, Kaggle folder or class folders")
    add_model_options(p, batch_size=256)
    p.add_argument("--split", default="test", help="PCam split to evaluate (default: test)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--errors-png",
        type=Path,
        metavar="PATH",
        help="patches: draw the most confident false positives and negatives here (default with --json: "
        "errors.png beside it)",
    )
    p.add_argument(
        "--record", metavar="NAME", help="also store the metrics in the model's card, under metrics.NAME"
    )
    add_quiet(p)
    slides = p.add_argument_group("heatmaps against annotations")
    slides.add_argument("--heatmaps", nargs="+", type=Path, metavar="ZARR_OR_DIR", help="wsi-score heatmaps")
    slides.add_argument("--truth", nargs="+", type=Path, metavar="FILE_OR_DIR", help="annotation files")
    slides.add_argument("--truth-format", choices=["auto", *FORMATS], default="auto")
    slides.add_argument(
        "--truth-class", action="append", metavar="NAME", help="GeoJSON: keep this classification only"
    )
    slides.add_argument(
        "--mask-downsample", type=float, help="level-0 px per mask px (default: from the slide's size)"
    )
    slides.add_argument(
        "--missing-truth",
        choices=["error", "negative"],
        default="error",
        help="a heatmap without a truth file: an error (default) or a slide without tumour",
    )
    add_threshold(slides)
    slides.add_argument(
        "--detection-floor",
        type=float,
        default=DETECTION_FLOOR,
        help=f"FROC detections: one per region of cells at least this (default {DETECTION_FLOOR})",
    )
    slides.add_argument("--froc-png", type=Path, help="also draw the FROC curve to this PNG")
    slides.add_argument(
        "--froc-rules",
        choices=RULES,
        default="challenge",
        help="FROC by the rules of the Camelyon16 evaluation script (default) or the corrected ones",
    )
    slides.add_argument(
        "--detections",
        type=Path,
        metavar="DIR",
        help="evaluate the challenge-format detections DIR/<slide stem>.csv instead of the heatmaps'",
    )
    slides.add_argument(
        "--export-detections",
        type=Path,
        metavar="DIR",
        help="also write the detections evaluated to DIR/<slide stem>.csv (the challenge's format)",
    )
    return p


def write_json(path: Path, results: dict) -> None:
    try:
        path.write_text(json.dumps(results, indent=2) + "\n")
    except OSError as error:
        raise InputError(path, f"cannot be written ({error.strerror})") from None


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def format_patch_results(results: dict) -> str:
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
    if "errors_png" in results:
        rows.append(("most confident errors", results["errors_png"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    names = metrics["class_names"]
    cell = max(6, *map(len, names), *(len(str(v)) for row in metrics["confusion_matrix"] for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * (cell + 2) + "  ".join(f"{name:>{cell}}" for name in names))
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        lines.append(f"{name:>{cell}}  " + "  ".join(f"{value:>{cell}}" for value in row))
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """The first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def format_slide_results(results: dict) -> str:
    """Per-slide table and the summary over the set."""
    threshold, summary = results["settings"]["threshold"], results["summary"]
    rows = []
    for slide in results["slides"]:
        found = slide["lesion_detection"]
        truth = "none (negative)" if slide["truth"] is None else Path(slide["truth"]).name
        rows.append(
            [
                slide["slide"],
                truth,
                "yes" if slide["slide_positive"] else "no",
                f"{sum(p >= threshold for p in found['hits'])}/{found['lesions']}",
                str(found["itc"]),
                str(sum(p >= threshold for p in found["fps"])),
                f"{slide['slide_score']:.4f}",
                _number(slide["cell_auc"]),
                _number(slide["dice"]),
            ]
        )
    header = ["slide", "truth", "tumour", "lesions hit", "ITC", "FPs", "slide score", "cell AUC", "Dice"]
    lines = [
        *_table(header, rows, left=2),
        f"(lesions hit and FPs: detections ≥ {threshold}; ITC are not counted)",
        "",
    ]
    froc = summary["froc"]
    summary_rows = [
        ("slides", f"{summary['slides']} ({summary['positive_slides']} with tumour)"),
        ("slide AUC (max)", _number(summary["slide_auc"])),
        ("cell AUC", f"{_number(summary['cell_auc'])} ({summary['cells']} scored cells, pooled)"),
        (f"Dice (≥ {threshold})", f"{_number(summary['dice'])} (pooled)"),
        ("FROC score", "undefined (no lesion)" if froc is None else f"{froc['score']:.4f}"),
        ("FROC rules", results["settings"]["froc_rules"]),
    ]
    if froc is not None:
        at = "  ".join(f"{rate}: {value:.3f}" for rate, value in froc["sensitivity_at"].items())
        summary_rows.append(("sensitivity at FPs/slide", at))
    large = f"metastases > {summary['min_diameter_um'] / 1000:g} mm detected"
    summary_rows.append((large, f"{summary['large_detected']}/{summary['large_metastases']}"))
    width = max(len(name) for name, _ in summary_rows)
    return "\n".join(lines + [f"{name:<{width}}  {value}" for name, value in summary_rows])


def format_results(results: dict) -> str:
    """A readable table of the results, by kind."""
    return format_slide_results(results) if results["kind"] == "slides" else format_patch_results(results)


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One mode at a time, with what it needs (exits with a usage error otherwise)."""
    if args.heatmaps is None:
        if args.data is None or args.model is None:
            p.error("give DATA and --model (patches), or --heatmaps and --truth (slides)")
        if any(
            value is not None
            for value in (args.truth, args.froc_png, args.detections, args.export_detections)
        ):
            p.error("--truth, --froc-png, --detections and --export-detections go with --heatmaps")
    elif args.errors_png is not None:
        p.error("--errors-png is for patches, not --heatmaps")
    elif args.truth is None:
        p.error("--heatmaps needs --truth")
    elif args.data is not None or args.model is not None or args.record is not None:
        p.error("DATA, --model and --record are for patches, not --heatmaps")


def evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    """Evaluate as parsed (``argv``: the command line, recorded with ``--record``), print the results."""
    if args.heatmaps is not None:
        from wsi_pipeline.evaluation.slides import evaluate_slides  # loaded once parsed

        results = evaluate_slides(
            args.heatmaps,
            args.truth,
            truth_format=args.truth_format,
            truth_classes=args.truth_class,
            mask_downsample=args.mask_downsample,
            missing_truth=args.missing_truth,
            threshold=args.threshold,
            detection_floor=args.detection_floor,
            froc_rules=args.froc_rules,
            detections=args.detections,
            export_detections=args.export_detections,
        )
    else:
        from wsi_pipeline.evaluation.patches import evaluate_patch_data  # loads torch

        errors_png = args.errors_png or (args.json.with_name("errors.png") if args.json else None)
        results = evaluate_patch_data(
            args.model,
            args.data,
            split=args.split,
            batch_size=args.batch_size,
            tta=args.tta,
            device=args.device,
            show_progress=not args.quiet,
            errors_png=errors_png,
        )
    if args.json is not None:
        write_json(args.json, results)
    if args.record:
        from wsi_pipeline.model.folder import record_metrics

        command = " ".join(["wsi-eval", *argv])
        entry = {**results["metrics"], "data": results["data"], "command": command}
        record_metrics(Path(results["model"]["folder"]), args.record, entry)
    if args.froc_png is not None:
        from wsi_pipeline.evaluation.plots import plot_froc

        froc = results["summary"]["froc"]
        if froc is None:
            raise ValueError("FROC is undefined without a lesion to detect; no curve drawn")
        plot_froc(froc, args.froc_png)
    print(format_results(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    check_arguments(p, args)
    return run_command("wsi-eval", lambda: evaluate(args, argv))


if __name__ == "__main__":
    sys.exit(main())
