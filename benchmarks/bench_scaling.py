"""Memory flat in slide size, time proportional to tissue area: the warm pipeline on synthetic slides of two
sizes (same tissue fraction) and of two tissue fractions (same size), with each Dask worker's peak RSS.

Slides are made as in ``bench_pipeline.py`` (cached with ``--slide-cache``); every run is timed on one warm
cluster (median of ``--repeats``), with the workers' peak RSS reset before each slide.

    /work/venv/bin/python benchmarks/bench_scaling.py --model default --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench_pipeline import (
    OtherLoad,
    WarmRun,
    bench_slide,
    mib,
    model_folder,
    pipeline_warm,
    show,
    warmup_slide,
)

from wsi_pipeline.scoring.options import ScoreOptions


def size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", choices=["probe", "default"])
    p.add_argument(
        "--sizes", type=size, nargs=2, default=[(20_000, 15_000), (40_000, 30_000)], help="two sizes, WxH WxH"
    )
    p.add_argument("--fractions", type=float, nargs=2, default=[0.2, 0.4], help="tissue fractions")
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="warm runs per slide (median counts)")
    p.add_argument("--slide-cache", type=Path, help="folder keeping the synthetic slides between runs")
    p.add_argument("--workdir", type=Path, help="parent of the temporary working folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaling-", dir=args.workdir))
    try:
        (small, large), (low, high) = args.sizes, args.fractions
        cases = {"small, high": (*small, high), "large, high": (*large, high), "large, low": (*large, low)}
        slides = {
            name: bench_slide(args.slide_cache or workdir, width, height, args.mpp, fraction, args.seed)
            for name, (width, height, fraction) in cases.items()
        }
        folder = model_folder(args.model, workdir)
        load = OtherLoad()
        runs = dict(
            zip(
                cases,
                pipeline_warm(
                    warmup_slide(workdir, args.mpp),
                    folder,
                    workdir / "heatmaps",
                    ScoreOptions(device="cpu"),
                    args.workers,
                    [WarmRun(path) for path, _, _ in slides.values()],
                    args.repeats,
                ),
                strict=True,
            )
        )
        mm2 = {name: w * h * slides[name][2] * (args.mpp / 1000) ** 2 for name, (w, h, _) in cases.items()}
        for name, run in runs.items():
            width, height, _ = cases[name]
            show(
                f"{name}: {width} x {height}",
                f"tissue {slides[name][2]:.1%} ({mm2[name]:.0f} mm²), {run.result.patches} patches, "
                f"{run.seconds:.1f} s ({run.rate:.0f}/s), engines {sorted(run.engines)}, "
                f"peak RSS per worker {mib(run.worker_peaks_mib)}",
            )
        peak = {name: max(run.worker_peaks_mib) for name, run in runs.items()}
        area = (large[0] * large[1]) / (small[0] * small[1])
        show(
            "RATIO peak RSS large / small",
            f"{peak['large, high'] / peak['small, high']:.2f} (slide area x{area:g})",
        )
        high, low = runs["large, high"], runs["large, low"]
        show(
            "RATIO time high / low tissue",
            f"{high.seconds / low.seconds:.2f} (tissue area x{mm2['large, high'] / mm2['large, low']:.2f})",
        )
        per_patch = (high.seconds - low.seconds) / (high.result.patches - low.result.patches)
        show(
            "time = fixed + per patch",
            f"{high.seconds - per_patch * high.result.patches:.2f} s + {per_patch * 1000:.2f} ms x patches "
            "(fixed: tissue detection, hashing, heatmap; from the two tissue fractions)",
        )
        show("CPU of other processes, cores", f"{load.cores():.2f} (near 0: the machine was idle)")
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
