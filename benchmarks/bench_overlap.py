"""Reading and inference overlapped in a worker (``scoring.pipeline``), shown on the CPU with stand-ins.

A stand-in model waits a fixed time per batch with the GIL released (``time.sleep``, as a GPU's forward pass
leaves the CPU free), and the reader is either a stand-in of known rate (a sleep per batch) or real reads of
the bundled sample's tissue cells (``read_block``, one region per batch, as ``score_block`` reads). For each
case it prints the read rate, the model rate, the serial rate (read then score: ≈ 1 / (1/read + 1/model)) and
the pipelined rate, in batches/s, with the pipelined rate's ratio to min(read, model); the design asks for
≥ 0.9. Then, with no stand-in, the bundled model on one torch thread (a CPU worker) serial against
pipelined with one reader. Real reads and the real model need the CPU: their rows mean something only on an
idle machine (the load average is printed); the stand-ins' rows do not depend on it. Under ``taskset -c 0``
(one core, as a CPU worker has) the overlap slows the real model down, so CPU workers read serially
(``pipeline.CPU_OVERLAP``).

    nice python benchmarks/bench_overlap.py
    nice taskset -c 0 python benchmarks/bench_overlap.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.pipeline import SERIAL, Overlap, run_overlapped
from wsi_pipeline.scoring.planning import tissue_cells
from wsi_pipeline.scoring.worker import batch_masks
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import Block, plan_grid
from wsi_pipeline.tiling.patches import read_block

SAMPLE = Path(__file__).parents[1] / "sample_slides" / "CMU-1-Small-Region.svs"
OVERLAP = Overlap(readers=1, depth=2, batch_regions=True)


def rate(reads: list[Callable[[], object]], score: Callable[[object], object], overlap: Overlap) -> float:
    """Batches per second of scoring every read batch, best of three."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run_overlapped(reads, score, overlap)
        best = min(best, time.perf_counter() - start)
    return len(reads) / best


def sleeper(seconds: float) -> Callable[..., None]:
    return lambda *_: time.sleep(seconds)


def report(name: str, reads: list[Callable[[], object]], score: Callable[[object], object]) -> None:
    read_rate = rate(reads, lambda batch: batch, SERIAL)
    batches = [read() for read in reads]  # read before: the model alone
    model_rate = rate([lambda batch=batch: batch for batch in batches], score, SERIAL)
    serial, pipelined = rate(reads, score, SERIAL), rate(reads, score, OVERLAP)
    harmonic = 1 / (1 / read_rate + 1 / model_rate)
    ratio = pipelined / min(read_rate, model_rate)
    print(
        f"{name:<34} read {read_rate:7.1f}  model {model_rate:7.1f}  serial {serial:7.1f} "
        f"(harmonic {harmonic:6.1f})  pipelined {pipelined:7.1f}  pipelined/min {ratio:4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="stand-in batches per run")
    parser.add_argument("--batch-size", type=int, default=8, help="cells per batch of real reads")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"batches/s; overlap {OVERLAP}; best of 3; load average {load} on {os.cpu_count()} cores")
    for read_s, model_s in [(0.02, 0.01), (0.01, 0.02), (0.015, 0.015)]:
        reads = [sleeper(read_s)] * args.batches
        report(f"stand-in read {read_s * 1e3:g} ms, model {model_s * 1e3:g} ms", reads, sleeper(model_s))

    folder = bundled_models_dir() / DEFAULT_MODEL
    card = read_card(folder)
    slide = Slide(SAMPLE)
    grid = plan_grid(slide, card.patch_size, card.mpp, None)
    cells, _ = tissue_cells(slide, grid, ScoreOptions())
    block = Block(0, 0, *cells.shape)
    reads = [
        lambda mask=mask: read_block(slide, grid, block, mask).patches
        for mask in batch_masks(cells, args.batch_size)
    ]
    read_s = 1 / rate(reads, lambda batch: batch, SERIAL)
    report(f"real reads ({args.batch_size} patches), model = read", reads, sleeper(read_s))

    model = Model(folder, torch.device("cpu"))
    report("real reads, bundled model, 1 thread", reads, lambda batch: model.predict(batch, args.batch_size))


if __name__ == "__main__":
    main()
