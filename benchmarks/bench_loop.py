"""The scoring loop against the bare engine, on 2 cores: how much of the engine's rate reaches the heatmap.

On CMU-1-Small-Region tiled 8 × 6 (``bench_peers.cmu_tiled_slide``; 0.499 µm/px, so a 1 µm/px model reads
level 0 and halves it) with the TIAToolbox resnet18-pcam layout (random weights), in one process:

- *bare engine*: the slide's tissue patches, already in memory, scored in batches of ``--batch-size`` by as
  many threads as workers, each model call on one intra-op thread (as in workers);
- *scoring loop*: the same cells as Dask tasks (``worker.score_block``: open the slide, read each block as
  one region, cut, score) on an in-process worker of as many threads (``--scheduler threads``), the model
  already loaded; patches over the time from the first task submitted to the last result in;
- *whole run*: ``score_slides`` warm on that worker (planning from a finished hash, tissue detection,
  writing the heatmap and reports included).

Also per patch, on one thread: the CPU time of reading (``read_block``) and of the engine. Rounds alternate
(best of ``--rounds``), so other load on the machine falls on each alike.

    nice python benchmarks/bench_loop.py --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_peers import cmu_tiled_slide, resnet18_model

from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import choose_engine
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.cluster import dask_client
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.planning import tissue_cells
from wsi_pipeline.scoring.worker import ModelSource, SlideSource, score_block, worker_model
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import plan_grid, split_blocks
from wsi_pipeline.tiling.patches import read_block


def in_threads(jobs: list, work, threads: int) -> float:
    """Seconds for ``threads`` threads to run ``work`` over ``jobs`` (each job taken by the next free one)."""
    todo, lock = iter(jobs), threading.Lock()

    def run() -> None:
        while True:
            with lock:
                job = next(todo, None)
            if job is None:
                return
            work(job)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide-cache", type=Path, required=True, help="folder keeping the tiled CMU-1 slide")
    p.add_argument("--workers", type=int, default=2, help="threads of the worker and of the bare engine")
    p.add_argument("--batch-size", type=int, default=ScoreOptions().batch_size)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    slide_path = cmu_tiled_slide(args.slide_cache)
    folder = resnet18_model(args.slide_cache / "resnet18-seed0", 0)
    card, options = read_card(folder), ScoreOptions(batch_size=args.batch_size)
    engine = choose_engine(folder)
    model_source = ModelSource(str(folder), file_sha256(folder / card.weights), "cpu", engine)
    model = worker_model(model_source)  # the worker's cached model (one intra-op thread)
    with Slide(slide_path) as slide:
        grid = plan_grid(slide, card.patch_size, card.mpp, None)
        cells, _ = tissue_cells(slide, grid, options)
        source = SlideSource(str(slide_path), slide.backend, slide.mpp)
        blocks = [b for b in split_blocks(cells.shape, options.block_cells) if cells[b.cells].any()]
        blocks.sort(key=lambda b: -int(cells[b.cells].sum()))
        start = time.process_time()
        patches = [read_block(slide, grid, b, cells[b.cells]).patches for b in blocks]
        read_cpu = (time.process_time() - start) / sum(map(len, patches))
    n_patches = sum(map(len, patches))
    batches = [
        batch for block in patches for batch in np.array_split(block, -(-len(block) // args.batch_size))
    ]
    start = time.process_time()
    model.predict(np.concatenate(patches), args.batch_size)
    engine_cpu = (time.process_time() - start) / n_patches

    bare, loop, whole = [], [], []
    with (
        dask_client(scheduler="threads", n_workers=args.workers) as client,
        tempfile.TemporaryDirectory() as out,
    ):
        run = {"client": client, "show_progress": False}
        # the first run hashes the slide; later ones find its stamp in the heatmap
        score_slides([slide_path], folder, out, options=options, **run)
        for _ in range(args.rounds):
            bare.append(
                n_patches / in_threads(batches, lambda b: model.predict(b, args.batch_size), args.workers)
            )
            start = time.perf_counter()
            tasks = [
                client.submit(score_block, source, (model_source,), grid, b, cells[b.cells], args.batch_size)
                for b in blocks
            ]
            client.gather(tasks)
            loop.append(n_patches / (time.perf_counter() - start))
            del tasks
            start = time.perf_counter()
            score_slides([slide_path], folder, out, options=replace(options, overwrite=True), **run)
            whole.append(n_patches / (time.perf_counter() - start))
    setting = f"resnet18 on {engine}, {args.workers} threads, batch {args.batch_size}"
    print(f"{slide_path.name}: {n_patches} patches, {setting}")
    print(f"one thread, CPU ms per patch: reading {1e3 * read_cpu:.2f}, engine {1e3 * engine_cpu:.2f}\n")
    print("| | patches/s (best of rounds) | of the bare engine |")
    print("| --- | ---: | ---: |")
    best = max(bare)
    for name, rates in (
        ("bare engine, in memory", bare),
        ("scoring loop (Dask tasks)", loop),
        ("whole run, warm", whole),
    ):
        print(f"| {name} | {max(rates):.0f} | {max(rates) / best:.2f} |")


if __name__ == "__main__":
    main()
