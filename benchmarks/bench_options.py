"""What the optional modes cost: dense scoring (stride 32: one cell per PCam-labelled centre 32 × 32) and
8-fold dihedral test-time augmentation, against the default run (stride 96, no TTA), on one warm cluster.

Slides are made as in ``bench_pipeline.py`` (cached with ``--slide-cache``); each mode is timed as the median
of ``--repeats`` warm runs with the engine given.

    /work/venv/bin/python benchmarks/bench_options.py --model default --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench_pipeline import OtherLoad, WarmRun, bench_slide, model_folder, pipeline_warm, show, warmup_slide

from wsi_pipeline.scoring.options import ScoreOptions

DENSE_STRIDE = 32  # target px: PCam's label covers the centre 32 × 32 of each 96² patch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", choices=["probe", "default"])
    add_warm_run_options(p)
    return p.parse_args(argv)


def add_warm_run_options(p: argparse.ArgumentParser) -> None:
    """The engine, the slide and the warm runs (also ``bench_ensemble.py``'s)."""
    p.add_argument("--engine", default="onnxruntime", choices=["torch", "onnxruntime"])
    p.add_argument("--size", default="40000x30000", help="slide size WxH in level-0 px")
    p.add_argument("--fraction", type=float, default=0.4, help="tissue fraction")
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slide-cache", type=Path, help="folder keeping the synthetic slides between runs")
    p.add_argument("--workdir", type=Path, help="parent of the temporary working folder")


def warm_run_slide(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The slide ``add_warm_run_options`` describe (cached in ``--slide-cache``, else under ``workdir``), and
    what it is and which engine scores it, in words."""
    width, height = (int(v) for v in args.size.lower().split("x"))
    slide, _, fraction = bench_slide(
        args.slide_cache or workdir, width, height, args.mpp, args.fraction, args.seed
    )
    return slide, f"{width} x {height} px at {args.mpp} µm/px, tissue {fraction:.1%}, engine {args.engine}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-options-", dir=args.workdir))
    try:
        slide, described = warm_run_slide(args, workdir)
        modes = {
            "default (stride 96)": WarmRun(slide, args.engine),
            f"dense (stride {DENSE_STRIDE})": WarmRun(slide, args.engine, stride=DENSE_STRIDE),
            "8-fold TTA": WarmRun(slide, args.engine, tta=True),
        }
        load = OtherLoad()
        runs = pipeline_warm(
            warmup_slide(workdir, args.mpp),
            model_folder(args.model, workdir),
            workdir / "heatmaps",
            ScoreOptions(device="cpu"),
            args.workers,
            list(modes.values()),
            args.repeats,
        )
        show("slide", described)
        base = runs[0]
        for name, run in zip(modes, runs, strict=True):
            show(
                name,
                f"{run.result.patches} patches in {run.seconds:.1f} s ({run.rate:.0f} patches/s); "
                f"time x{run.seconds / base.seconds:.2f}, "
                f"patches x{run.result.patches / base.result.patches:.2f}",
            )
        show("CPU of other processes, cores", f"{load.cores():.2f} (near 0: the machine was idle)")
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
