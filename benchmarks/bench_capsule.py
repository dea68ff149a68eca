"""How detection at the node's edge depends on ``--tissue-threshold``: metastases in the subcapsular sinus.

Metastases often sit just inside the capsule, where a patch is partly background, so a patch is scored only if
its tissue fraction reaches the threshold. This writes synthetic slides whose metastases touch their tissue
island's rim from inside (``make_scene(..., at_capsule=True)``) plus tumour-free slides, scores every slide at
each ``--thresholds`` value with the same model, and prints per threshold: the share of metastases detected
(peak tumour probability of the cells over it ≥ 0.5) by size, the cells ≥ 0.5 on tumour-free slides (false
positives), the patches scored and the seconds. Slides are kept in ``--workdir`` and reused.

    python benchmarks/bench_capsule.py --slides 8 --free 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from wsi_pipeline.evaluation.truth import evaluate_heatmap
from wsi_pipeline.findings.regions import tumour_scores
from wsi_pipeline.model.bundled import DEFAULT_MODEL
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.store.heatmap import read_heatmap
from wsi_pipeline.synthetic.scene import make_scene
from wsi_pipeline.synthetic.sets import read_truth_polygons, truth_paths, write_synthetic_slide

SIZE_BANDS_UM = ((0, 200), (200, 500), (500, np.inf))


def write_slides(folder: Path, n_tumour: int, n_free: int, seed: int, diameters: tuple[float, float]) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_tumour + n_free):
        path = folder / f"capsule_{seed}_{index:03d}.svs"
        if not truth_paths(path)["json"].is_file():
            n_metastases = 3 if index < n_tumour else 0
            scene = make_scene(
                6000, 4500, 0.5, seed * 10000 + index, n_metastases, diameters, at_capsule=True
            )
            write_synthetic_slide(path, scene, workers=2)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", type=int, default=8, help="slides with 3 metastases at the capsule each")
    p.add_argument("--free", type=int, default=3, help="tumour-free slides")
    p.add_argument(
        "--seed", type=int, default=7, help="slide seeds: SEED·10000 + index (training used 1-3, 11-13)"
    )
    p.add_argument("--diameter-um", type=float, nargs=2, default=(60.0, 800.0))
    p.add_argument("--thresholds", type=float, nargs="+", default=(0.1, 0.25, 0.5, 0.75))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--workdir", default="bench-capsule")
    args = p.parse_args()

    workdir = Path(args.workdir)
    paths = write_slides(workdir / "slides", args.slides, args.free, args.seed, tuple(args.diameter_um))
    print(f"{len(paths)} slides ({args.slides} with 3 metastases at the capsule, {args.free} tumour-free)")
    header = "threshold  detected  " + "  ".join(f"{lo:.0f}-{hi:.0f} µm" for lo, hi in SIZE_BANDS_UM)
    print(header + "  false cells  patches  seconds")
    for threshold in args.thresholds:
        out = workdir / f"heatmaps-{threshold:g}"
        options = ScoreOptions(tissue_threshold=threshold)
        start = time.perf_counter()
        results = score_slides(
            paths, args.model, out, options=options, scheduler="threads", show_progress=False, reports=None
        )
        seconds = time.perf_counter() - start
        metastases, false_cells, patches = [], 0, 0
        for path, result in zip(paths, results, strict=True):
            heatmap = read_heatmap(result.heatmap)
            patches += int(heatmap.tissue.sum())
            polygons = read_truth_polygons(path)
            if polygons:
                metastases += evaluate_heatmap(heatmap, polygons)["metastases"]
            else:
                false_cells += int((np.nan_to_num(tumour_scores(heatmap)) >= 0.5).sum())
        detected = [m["detected"] for m in metastases]
        bands = []
        for low, high in SIZE_BANDS_UM:
            band = [m["detected"] for m in metastases if low <= m["diameter_um"] < high]
            bands.append(f"{sum(band)}/{len(band)}".rjust(len(f"{low:.0f}-{high:.0f} µm")))
        print(
            f"{threshold:9g}  {sum(detected):3d}/{len(detected):<4d}  {'  '.join(bands)}  "
            f"{false_cells:11d}  {patches:7d}  {seconds:7.1f}"
        )


if __name__ == "__main__":
    main()
