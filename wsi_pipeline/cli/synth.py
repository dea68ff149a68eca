"""``wsi-synth``: synthetic slides with ground truth, and PCam-format patch sets drawn from them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from wsi_pipeline.cli.options import add_seed, run_command


def slide_plan(count: int, seed: int, negative_fraction: float, max_metastases: int) -> list[tuple[int, int]]:
    """(slide seed, number of metastases) per slide: a share of negatives, the rest with 1..max metastases."""
    plan = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        negative = rng.uniform() < negative_fraction
        plan.append((seed * 10_000 + index, 0 if negative else int(rng.integers(1, max_metastases + 1))))
    return plan


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-synth", description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)
    slides = commands.add_parser("slides", help="write synthetic slides with truth files")
    slides.add_argument("out", help="output folder")
    slides.add_argument("--count", type=int, default=1)
    slides.add_argument("--width", type=int, default=16_000, help="level-0 width in pixels")
    slides.add_argument("--height", type=int, default=12_000, help="level-0 height in pixels")
    slides.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel")
    add_seed(slides)
    slides.add_argument("--negative-fraction", type=float, default=0.5, help="share of slides without tumour")
    slides.add_argument("--max-metastases", type=int, default=4)
    slides.add_argument("--diameter-um", type=float, nargs=2, default=(30.0, 3000.0), metavar=("MIN", "MAX"))
    slides.add_argument("--prefix", default="synthetic", help="slide names: PREFIX_SEED_INDEX.svs")
    slides.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    patches = commands.add_parser("patches", help="sample a PCam-format split (HDF5) from synthetic slides")
    patches.add_argument("slides", nargs="+", help="synthetic slides (with truth files) or folders of them")
    patches.add_argument("--out", required=True, help="output folder (PCam layout)")
    patches.add_argument("--split", default="train", choices=("train", "valid", "test"))
    patches.add_argument("--per-slide", type=int, default=1000, help="patches per slide")
    patches.add_argument("--positive-fraction", type=float, default=0.5)
    add_seed(patches)
    return p


def synthesise(args: argparse.Namespace) -> int:
    """Write the slides, or the patch split, as parsed."""
    if args.command == "slides":
        from wsi_pipeline.synthetic.scene import make_scene  # loaded once parsed
        from wsi_pipeline.synthetic.sets import write_synthetic_slide

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plan = slide_plan(args.count, args.seed, args.negative_fraction, args.max_metastases)
        for index, (slide_seed, n_metastases) in enumerate(plan):
            path = out / f"{args.prefix}_{args.seed}_{index:03d}.svs"
            diameters = tuple(args.diameter_um)
            scene = make_scene(args.width, args.height, args.mpp, slide_seed, n_metastases, diameters)
            truth = write_synthetic_slide(path, scene, workers=args.workers)
            sizes = ", ".join(f"{m['diameter_um'] / 1000:.2f}" for m in truth["metastases"]) or "none"
            print(f"{path}: metastases (longest diameter, mm): {sizes}")
    else:
        from wsi_pipeline.slide.find import find_slides
        from wsi_pipeline.synthetic.sets import write_patch_split

        counts = write_patch_split(
            find_slides(args.slides), args.out, args.split, args.per_slide, args.seed, args.positive_fraction
        )
        print(json.dumps({"split": args.split, "out": args.out, **counts}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command("wsi-synth", lambda: synthesise(args))


if __name__ == "__main__":
    sys.exit(main())
