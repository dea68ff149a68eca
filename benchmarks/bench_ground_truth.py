"""End-to-end accuracy against ground truth: held-out synthetic slides scored by the whole pipeline.

Writes ``--slides`` synthetic lymph-node slides (seeds never used for training data; about half without
tumour), scores them with ``score_slides`` and a model (default: the bundled default model; in int8 with
``--precision int8``), and compares each heatmap with the slide's truth polygons (``evaluation.truth``):
pooled cell-level AUC and Dice, slide-level AUC (slide score = max tumour probability), the share of
metastases larger than 0.5 mm that reach the threshold, and the Camelyon16 lesion-level FROC by both rule
sets, the challenge's and the corrected ones (``evaluation.froc``: detections one per region of cells at least
``--detection-floor``; ``--froc-png`` draws the curve of ``--froc-rules``). Slides are kept in ``--workdir``
and reused on a second run.

    /work/venv/bin/python benchmarks/bench_ground_truth.py --slides 20 [--precision int8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wsi_pipeline.cli.synth import slide_plan
from wsi_pipeline.evaluation.froc import DETECTION_FLOOR, RULES
from wsi_pipeline.evaluation.plots import plot_froc
from wsi_pipeline.evaluation.truth import evaluate_heatmap, summarise
from wsi_pipeline.model.bundled import DEFAULT_MODEL
from wsi_pipeline.model.card import PRECISIONS
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.store.heatmap import read_heatmap
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import read_truth_polygons, truth_paths, write_synthetic_slide


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", type=int, default=20)
    p.add_argument("--width", type=int, default=8000)
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument(
        "--seed", type=int, default=4, help="slide seeds: SEED·10000 + index (training used 1-3, 11-13)"
    )
    p.add_argument("--diameter-um", type=float, nargs=2, default=(100.0, 1500.0))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="int8: calibrated on the first slide's tissue, used where it agrees with float32",
    )
    p.add_argument("--stride", type=int, help="target px between cells (default: the model's patch size)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--detection-floor", type=float, default=DETECTION_FLOOR)
    p.add_argument("--froc-png", type=Path, help="also draw the FROC curve to this PNG")
    p.add_argument("--froc-rules", choices=RULES, default="challenge", help="the rule set --froc-png draws")
    p.add_argument("--workdir", default="bench-ground-truth")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    slides_dir, out_dir = Path(args.workdir) / "slides", Path(args.workdir) / "heatmaps"
    slides_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    start = time.perf_counter()
    for index, (seed, n_metastases) in enumerate(slide_plan(args.slides, args.seed, 0.5, 3)):
        path = slides_dir / f"heldout_{args.seed}_{index:03d}.svs"
        if not truth_paths(path)["json"].is_file():
            scene = make_scene(args.width, args.height, args.mpp, seed, n_metastases, tuple(args.diameter_um))
            write_synthetic_slide(path, scene, workers=args.workers)
        paths.append(path)
    print(f"slides ready in {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    options = ScoreOptions(stride=args.stride, overwrite=True, precision=args.precision)
    results = score_slides(
        paths, args.model, out_dir, options=options, n_workers=args.workers, show_progress=False
    )
    seconds = time.perf_counter() - start
    per_slide: dict[str, list[dict]] = {rules: [] for rules in RULES}
    for result in results:
        if result.status != "ok":
            raise SystemExit(f"{result.slide}: {result.message}")
        heatmap, polygons = read_heatmap(result.heatmap), read_truth_polygons(result.slide)
        for rules in RULES:
            per_slide[rules].append(
                evaluate_heatmap(
                    heatmap, polygons, args.threshold, detection_floor=args.detection_floor, rules=rules
                )
            )
        evaluation = per_slide["challenge"][-1]
        found = " ".join(
            f"{m['diameter_um'] / 1000:.2f}mm:{'hit' if m['detected'] else 'MISS'}({m['peak']:.2f})"
            for m in evaluation["metastases"]
        )
        matched = {rules: per_slide[rules][-1]["lesion_detection"] for rules in RULES}
        lesions = "; ".join(
            f"{rules}: lesions with a detection {len(m['hits'])}/{m['lesions']} (+{m['itc']} ITC),"
            f" false positives {len(m['fps'])}"
            for rules, m in matched.items()
        )
        print(
            f"{Path(result.slide).name}: slide score {evaluation['slide_score']:.3f}; {found or 'no tumour'};"
            f" {lesions}"
        )
    summaries = {rules: summarise(per_slide[rules], rules=rules) for rules in RULES}
    froc = {rules: each.pop("froc") for rules, each in summaries.items()}
    summary = summaries["challenge"]  # the same but for the FROC
    if froc[args.froc_rules] is not None and args.froc_png is not None:
        title = f"FROC ({args.froc_rules} rules), {args.slides} held-out synthetic slides"
        plot_froc(froc[args.froc_rules], args.froc_png, title=title)
    summary.update(
        froc_score={rules: None if f is None else f["score"] for rules, f in froc.items()},
        froc_sensitivity_at={rules: None if f is None else f["sensitivity_at"] for rules, f in froc.items()},
        model=args.model,
        precision=sorted({m.precision for r in results for m in read_heatmap(r.heatmap).metadata.models}),
        threshold=args.threshold,
        detection_floor=args.detection_floor,
        slide_size_px=[args.width, args.height],
        mpp=args.mpp,
        patches_scored=sum(r.patches for r in results),
        scoring_seconds=round(seconds, 1),
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
