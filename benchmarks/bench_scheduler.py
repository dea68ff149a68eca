"""The measurements behind ``--scheduler auto`` (``scoring/cluster.py``: ``choose_scheduler``).

1. Steady rates: the tissue blocks of a slide read and scored (``read_block`` + ``Model.predict``, one
   intra-op thread per model call, as in workers), the model loaded and warm, by one thread, by two threads
   of one process (the ``threads`` scheduler's worker) and by two processes (the ``local`` cluster's
   workers). Threads share the GIL; the ratio of the two-thread rate to the two-process rate is what the
   in-process worker gives up while it runs.
2. Start-up: ``wsi-score`` cold (a fresh process, a new output folder) with ``--scheduler threads`` and
   ``--scheduler local`` on the same slides; the difference of their wall times is what worker processes
   must win back.

The slide: CMU-1-Small-Region tiled 8 × 6 (``bench_peers.cmu_tiled_slide``, 3,341 patches); models:
the bundled default, and the TIAToolbox resnet18-pcam layout with random weights (``bench_peers.
resnet18_model``). The cold runs' difference is the processes' start-up s less what they saved on the
slide's P patches; they win from s / (1 / threads' rate - 1 / processes' rate) patches.

    nice python benchmarks/bench_scheduler.py --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
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
from wsi_pipeline.tiling.grid import plan_grid, split_blocks
from wsi_pipeline.tiling.patches import read_block

_WORK: dict = {}  # what a process scores with: the slide's grid, cells, blocks; its own slide and model


def _open(slide_path: Path, folder: Path) -> None:
    """Open the slide and load the model in this process (one intra-op thread, as in workers)."""
    torch.set_num_threads(1)  # as in the local cluster (OMP_NUM_THREADS=1) and in the threads model calls
    _WORK["slide"] = Slide(slide_path)
    _WORK["model"] = Model(folder, torch.device("cpu"), choose_engine(folder), threads=1)


def _open_warm(
    slide_path: Path, folder: Path, work: dict, barrier: multiprocessing.synchronize.Barrier
) -> None:
    """A pool process's start: ``_open``, take the blocks to score (``work``), score the smallest once
    (first-call costs), then wait for the other processes to be as far."""
    _open(slide_path, folder)
    _WORK.update(work)
    _score(len(_WORK["blocks"]) - 1)
    barrier.wait()


def _score(index: int) -> int:
    """Read and score the ``index``-th block; its patches."""
    block, cells = _WORK["blocks"][index], _WORK["cells"]
    read = read_block(_WORK["slide"], _WORK["grid"], block, cells[block.cells])
    _WORK["model"].predict(read.patches)
    return len(read.patches)


def steady_rates(slide_path: Path, folder: Path, rounds: int) -> tuple[int, float, float, float, float]:
    """Patches per second over the slide's tissue blocks of one thread, two threads of one process and two
    processes, the model loaded and warm (best of ``rounds``, alternated so that other load on the machine
    falls on each alike), and, first, the patches and, last, a patch's CPU seconds with one thread."""
    card = read_card(folder)
    _open(slide_path, folder)
    grid = plan_grid(_WORK["slide"], card.patch_size, card.mpp, None)
    cells, _ = tissue_cells(_WORK["slide"], grid, ScoreOptions())
    blocks = [b for b in split_blocks(cells.shape, ScoreOptions().block_cells) if cells[b.cells].any()]
    blocks.sort(key=lambda b: -int(cells[b.cells].sum()))
    _WORK.update(grid=grid, cells=cells, blocks=blocks)
    jobs = list(range(len(blocks)))
    patches = sum(int(cells[b.cells].sum()) for b in blocks)
    _score(len(blocks) - 1)  # first-call costs
    context = multiprocessing.get_context("spawn")  # a fork of a process that ran torch may hang in OpenMP
    barrier = context.Barrier(2)
    work = {"grid": grid, "cells": cells, "blocks": blocks}
    rates: dict[str, list[float]] = {"1 thread": [], "2 threads": [], "2 processes": []}
    cpu = []
    with context.Pool(2, initializer=_open_warm, initargs=(slide_path, folder, work, barrier)) as pool:
        pool.map(len, [()] * 2, chunksize=1)  # returns once both processes are warm (the barrier)
        for _ in range(rounds):
            start = time.process_time()
            rates["1 thread"].append(patches / in_threads(jobs, _score, 1))
            cpu.append((time.process_time() - start) / patches)
            rates["2 threads"].append(patches / in_threads(jobs, _score, 2))
            start = time.perf_counter()
            pool.map(_score, jobs, chunksize=1)
            rates["2 processes"].append(patches / (time.perf_counter() - start))
    _WORK["slide"].close()
    one, threads, processes = (max(values) for values in rates.values())
    return patches, one, threads, processes, statistics.median(cpu)


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
    print(f"{cmu.name}, 2 cores\n")
    print(
        "| model | CPU ms per patch | patches/s: 1 thread | 2 threads | 2 processes | threads / processes "
        "| cold run, `threads` / `local` | start-up difference | processes win from |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, folder in models.items():
        patches, one, threads, processes, cpu = steady_rates(cmu, folder, args.rounds)
        cold = {s: cold_seconds(cmu, folder, s, args.runs) for s in ("threads", "local")}
        saved = 1 / threads - 1 / processes  # seconds per patch that processes save
        start_up = cold["local"] - cold["threads"] + patches * saved
        crossover = f"{start_up / saved:,.0f} patches" if saved > 0 else "never"
        print(
            f"| {name} | {1e3 * cpu:.2f} | {one:.0f} | {threads:.0f} ({threads / one:.2f}×) "
            f"| {processes:.0f} ({processes / one:.2f}×) | {threads / processes:.2f} "
            f"| {cold['threads']:.1f} s / {cold['local']:.1f} s | {start_up:.1f} s | {crossover} |"
        )
    print(f"\n(numpy {np.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
