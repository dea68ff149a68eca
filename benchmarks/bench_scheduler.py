"""The measurements behind ``--scheduler auto`` (``scoring/cluster.py``: ``choose_scheduler``).

1. The GIL's share of a patch: the same blocks of a slide read and scored (``read_block`` + ``Model.predict``,
   one intra-op thread per model, as in workers) by one thread, then by two threads of one process. With a
   share g of each patch's time holding the GIL, n threads reach 1 / (g + (1 - g) / n) times one thread's
   rate (Amdahl), so two give g = 2 / speed-up - 1.
2. The process cluster's start-up: ``wsi-score`` cold (a fresh process, a new output folder) with
   ``--scheduler threads`` and ``--scheduler local`` on the same slides; the difference of their wall times on
   the smallest slide is what worker processes must win back.

Slides: the bundled sample, and CMU-1-Small-Region tiled 8 × 6 (``bench_peers.cmu_tiled_slide``); model: the
bundled default, and the TIAToolbox resnet18-pcam layout with random weights (``bench_peers.resnet18_model``).
From g and the start-up, the job size above which ``local`` beats ``threads`` on n cores is
start-up / (c × (g + (1 - g) / n - 1 / n)), c being a patch's CPU time.

    nice python benchmarks/bench_scheduler.py --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_loop import in_threads
from bench_peers import cmu_tiled_slide, resnet18_model, script, timed

from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model, choose_engine
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.planning import tissue_cells
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import Block, plan_grid, split_blocks
from wsi_pipeline.tiling.patches import read_block

SAMPLE = Path(__file__).resolve().parents[1] / "sample_slides" / "synthetic-node_19_000.svs"


def thread_rates(slide_path: Path, folder: Path, rounds: int) -> tuple[float, float, float]:
    """Patches per second of one thread and of two threads over the slide's tissue blocks (best of
    ``rounds``), and the patches' mean CPU seconds with one thread."""
    card = read_card(folder)
    slide = Slide(slide_path)
    grid = plan_grid(slide, card.patch_size, card.mpp, None)
    cells, _ = tissue_cells(slide, grid, ScoreOptions())
    blocks = [b for b in split_blocks(cells.shape, ScoreOptions().block_cells) if cells[b.cells].any()]
    blocks.sort(key=lambda b: -int(cells[b.cells].sum()))
    model = Model(folder, torch.device("cpu"), choose_engine(folder), threads=1)
    model.predict(read_block(slide, grid, blocks[-1], cells[blocks[-1].cells]).patches)  # first-call costs

    def score(threads: int) -> tuple[float, float]:
        patches = []

        def work(block: Block) -> None:
            read = read_block(slide, grid, block, cells[block.cells])
            model.predict(read.patches)
            patches.append(len(read.patches))

        cpu = time.process_time()
        seconds = in_threads(blocks, work, threads)
        return sum(patches) / seconds, (time.process_time() - cpu) / sum(patches)

    one, two, cpu = [], [], []
    for _ in range(rounds):  # alternated, so that the machine's other load falls on both alike
        rate, per_patch = score(1)
        one.append(rate)
        cpu.append(per_patch)
        two.append(score(2)[0])
    slide.close()
    return max(one), max(two), statistics.median(cpu)


def cold_seconds(slide: Path, folder: Path, scheduler: str, runs: int) -> float:
    """Median wall seconds of ``wsi-score`` cold (a new output folder each run)."""
    seconds = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            arguments = [str(slide), "-o", out, "--model", str(folder), "--scheduler", scheduler, "-q"]
            seconds.append(timed([script("wsi-score"), *arguments]).seconds)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide-cache", type=Path, required=True, help="folder keeping the tiled CMU-1 slide")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the thread measurement (best taken)")
    p.add_argument("--runs", type=int, default=3, help="cold runs per scheduler (median taken)")
    args = p.parse_args(argv)
    cmu = cmu_tiled_slide(args.slide_cache)
    models = {
        "bundled default": bundled_models_dir() / DEFAULT_MODEL,
        "resnet18": resnet18_model(args.slide_cache / "resnet18-seed0", 0),
    }
    print("| model | 1 thread, patches/s | 2 threads | speed-up | GIL share g | CPU ms per patch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, folder in models.items():
        one, two, cpu = thread_rates(cmu, folder, args.rounds)
        g = 2 * one / two - 1
        print(f"| {name} | {one:.0f} | {two:.0f} | {two / one:.2f}× | {g:.3f} | {1e3 * cpu:.2f} |")
    print("\n| slide | model | `--scheduler threads`, s | `local`, s | difference |")
    print("| --- | --- | ---: | ---: | ---: |")
    for slide, name in ((SAMPLE, "bundled default"), (cmu, "resnet18")):
        threads, local = (cold_seconds(slide, models[name], s, args.runs) for s in ("threads", "local"))
        print(f"| {slide.name} | {name} | {threads:.1f} | {local:.1f} | {local - threads:+.1f} |")
    print(f"\n(numpy {np.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
