"""Worker jobs on SLURM against the local cluster, on the same slide: time to the first and to every worker,
then a scoring run on the fresh workers (the model loaded by the first tasks) and one on the same workers
again, and whether the two clusters' heatmaps are equal. One run each: the load average is printed beside.

The slide is ``bench_pipeline.py``'s (cached with ``--slide-cache``). SLURM must answer
(``.ci/start_slurm.sh`` starts a single-node one); its jobs and the scheduler talk over ``--interface``
(default ``lo``).

    /work/venv/bin/python benchmarks/bench_slurm.py --model default --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# The rest is imported in the functions: the local cluster's worker processes import this module as they
# start, and would otherwise load torch before they report ready, which wsi-score's do not.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", choices=["probe", "default"])
    p.add_argument("--width", type=int, default=40_000)
    p.add_argument("--height", type=int, default=30_000)
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--tissue-fraction", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs of one core each = local workers")
    p.add_argument("--partition", default="cpu")
    p.add_argument("--interface", default="lo", help="network interface of scheduler and workers")
    p.add_argument("--slide-cache", type=Path, help="folder keeping the synthetic slides between runs")
    p.add_argument("--workdir", type=Path, help="parent of the temporary working folder")
    return p.parse_args(argv)


def timed_run(name: str, client_context, slide: Path, folder: Path, out: Path, workers: int) -> np.ndarray:
    """Print the times to the first and to every worker, then two scoring runs' rates: on the fresh workers
    (which import the scoring stack and load the model in their first tasks) and on the same workers again;
    return the probabilities."""
    from bench_pipeline import show

    from wsi_pipeline.scoring.api import score_slides
    from wsi_pipeline.scoring.options import ScoreOptions
    from wsi_pipeline.store.heatmap import read_heatmap

    start = time.perf_counter()
    with client_context as client:
        client.wait_for_workers(1, timeout=600)
        first = time.perf_counter() - start
        client.wait_for_workers(workers, timeout=600)
        every = time.perf_counter() - start
        rates = []
        for run in ("fresh", "again"):
            scoring = time.perf_counter()
            (result,) = score_slides(
                [slide],
                folder,
                out / run,
                options=ScoreOptions(),
                client=client,
                show_progress=False,
                reports=None,
            )
            seconds = time.perf_counter() - scoring
            if result.status != "ok":
                raise SystemExit(f"{name}: {result.status}: {result.message}")
            rates.append(f"{run} {seconds:.1f} s = {result.patches / seconds:.0f}/s")
        closing = time.perf_counter()
    closed = time.perf_counter() - closing
    show(f"{name}: first / every worker", f"{first:.1f} s / {every:.1f} s after the cluster was asked for")
    show(f"{name}: {result.patches} patches", "; ".join(rates))
    show(f"{name}: closing", f"{closed:.1f} s (load average {os.getloadavg()[0]:.1f})")
    return read_heatmap(out / "fresh" / f"{slide.stem}.zarr").probabilities


def main(argv: list[str] | None = None) -> None:
    from bench_pipeline import bench_slide, model_folder, show

    from wsi_pipeline.scoring.cluster import dask_client
    from wsi_pipeline.scoring.slurm import SlurmOptions

    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-slurm-", dir=args.workdir))
    try:
        slide, _, covered = bench_slide(
            args.slide_cache or workdir, args.width, args.height, args.mpp, args.tissue_fraction, args.seed
        )
        folder = model_folder(args.model, workdir)
        show("slide", f"{slide.name}, tissue {covered:.0%}; model {folder.name}")
        show("load average before", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        local = dask_client(scheduler="local", n_workers=args.jobs)
        local_p = timed_run("local", local, slide, folder, workdir / "local", args.jobs)
        jobs = SlurmOptions(
            partition=args.partition,
            jobs=args.jobs,
            memory="4GB",
            log_dir=str(workdir / "jobs"),
            walltime="00:30:00",
            interface=args.interface,
        )
        slurm = dask_client(scheduler="slurm", slurm=jobs)
        slurm_p = timed_run("slurm", slurm, slide, folder, workdir / "slurm", args.jobs)
        show("heatmaps equal", str(np.array_equal(local_p, slurm_p, equal_nan=True)))
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
