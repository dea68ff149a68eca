"""Throughput of the whole scoring pipeline against the bare model on in-memory patches, and peak memory.

Writes a synthetic H&E-like slide (pink tissue islands with purple spots on white; cached with ``--slide-
cache``), scores it with ``score_slides`` on a local Dask cluster, then runs the same model on as many random
in-memory patches in as many single-threaded processes as the cluster has workers, and prints both rates,
their ratio and peak RSS. Each ``--engine`` (torch, onnxruntime) is timed in the warm pipeline and in memory.
For the probe it also times the warm pipeline with PIL's bilinear resample everywhere (the read path before
nearest neighbour near the level's scale) and a per-patch reader (one level-0 read per patch, resized to the
target µm/px, as per-patch tools do) on the same slide's tissue cells.

Pipeline *cold* is the call as ``wsi-score`` makes it: cluster start-up, model loading in the workers,
scoring and cluster shutdown. Pipeline *warm* times only ``score_slides`` on a running cluster whose workers
have already loaded the model (after scoring a tiny warm-up slide); it still includes tissue detection,
hashing the slide, and writing the heatmap.

The in-memory engine runs in the environment our local cluster gives its workers (``WORKER_ENVIRONMENT``).
Rates are only meaningful on an otherwise idle machine; the CPU other processes used meanwhile is printed.

    /work/venv/bin/python benchmarks/bench_pipeline.py --model probe default --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.weights import save_model
from wsi_pipeline.scoring import worker as scoring
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.cluster import WORKER_ENVIRONMENT, dask_client
from wsi_pipeline.scoring.options import ScoreOptions, SlideResult
from wsi_pipeline.scoring.planning import model_source
from wsi_pipeline.scoring.worker import ModelSource
from wsi_pipeline.slide import reader as slide_io
from wsi_pipeline.slide.reader import NEAREST_TOLERANCE, Slide
from wsi_pipeline.store.heatmap import read_heatmap
from wsi_pipeline.synthetic.svs import Rect, RectScene, write_slide
from wsi_pipeline.tiling.grid import plan_grid

PINK = (220, 140, 190)
PURPLE = (120, 60, 140)
DOWNSAMPLES = (1, 4, 16)
TIMM_ARCHITECTURES = ("efficientnet_b0", "resnet18", "mobilenetv3_small_100")
WARMUP_SIDE = 4096  # level-0 pixels of the square warm-up slide
ENGINES = ("torch", "onnxruntime")
BILINEAR = -1.0  # a NEAREST_TOLERANCE that no scale meets: PIL's bilinear everywhere (the read path before)

_barrier: Barrier | None = None  # set in each in-memory engine process
Step = Callable[[], int]  # does some work, returns the patches it did


def peak_rss_mib() -> float:
    """This process's peak resident set size, MiB. Read as ``VmHWM`` because ``ru_maxrss`` of a process
    spawned by fork + exec starts at its parent's peak on Linux."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def reset_peak_rss() -> None:
    """Start this process's peak RSS afresh from its current RSS (Linux: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot, all processes (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class OtherLoad:
    """CPU that processes outside this benchmark use over a stretch of time, in cores: a check that the
    rates were measured on an otherwise idle machine."""

    def __init__(self) -> None:
        self._busy, self._own, self._wall = machine_busy_s(), own_cpu_s(), time.perf_counter()

    def cores(self, own_elsewhere_s: float = 0.0) -> float:
        """``own_elsewhere_s``: CPU seconds of this benchmark's still-running processes (Dask workers)."""
        own = own_cpu_s() - self._own + own_elsewhere_s
        return max(0.0, machine_busy_s() - self._busy - own) / (time.perf_counter() - self._wall)


def tissue_scene(
    width0: int, height0: int, fraction: float, rng: np.random.Generator, n_islands: int = 12, spots: int = 15
) -> tuple[RectScene, float]:
    """Non-overlapping pink islands (one per cell of a grid over the slide) with purple spots inside them,
    and the fraction of the slide the islands cover."""
    rows = max(1, round(math.sqrt(n_islands * height0 / width0)))
    cols = max(1, round(n_islands / rows))
    cell_w, cell_h = width0 / cols, height0 / rows
    side = math.sqrt(fraction)
    islands, dark = [], []
    for row in range(rows):
        for col in range(cols):
            aspect = math.sqrt(rng.uniform(0.8, 1.25))
            w, h = min(cell_w, cell_w * side * aspect), min(cell_h, cell_h * side / aspect)
            x0, y0 = col * cell_w + rng.uniform(0, cell_w - w), row * cell_h + rng.uniform(0, cell_h - h)
            islands.append(Rect(x0, y0, x0 + w, y0 + h, PINK))
            for _ in range(spots):
                spot_w, spot_h = w * rng.uniform(0.03, 0.15), h * rng.uniform(0.03, 0.15)
                sx, sy = x0 + rng.uniform(0, w - spot_w), y0 + rng.uniform(0, h - spot_h)
                dark.append(Rect(sx, sy, sx + spot_w, sy + spot_h, PURPLE))
    covered = sum((r.x1_level0 - r.x0_level0) * (r.y1_level0 - r.y0_level0) for r in islands)
    return RectScene([*islands, *dark]), covered / (width0 * height0)


def model_folder(name: str, workdir: Path) -> Path:
    """The bundled probe or default model, or an untrained timm model saved under ``workdir``."""
    if name == "probe":
        return bundled_models_dir() / "centre-colour-probe"
    if name == "default":
        return bundled_models_dir() / DEFAULT_MODEL
    torch.manual_seed(0)
    card = ModelCard(
        name=f"untrained-{name}",
        architecture=name,
        class_names=["normal", "tumour"],
        description="untrained, for timing only",
    )
    return save_model(workdir / "models" / card.name, build_module(card), card)


def _checked(results: list[SlideResult]) -> SlideResult:
    (result,) = results
    if result.status != "ok":
        raise SystemExit(f"scoring {result.slide} {result.status}: {result.message}")
    return result


def _prepare_worker(source: ModelSource, nearest_tolerance: float) -> str:
    """On a Dask worker: load the model as the scoring tasks will (into the per-process cache) and set the
    read path's nearest-neighbour tolerance; return the engine that runs."""
    slide_io.NEAREST_TOLERANCE = nearest_tolerance
    return scoring.worker_model(source).engine


@dataclass(frozen=True)
class PipelineRun:
    result: SlideResult
    seconds: float  # wall time of the timed score_slides call
    worker_peaks_mib: list[float]  # per Dask worker process, during the run (warm runs only)
    worker_threads: set[int]  # torch threads per worker (warm run only)
    other_cores: float  # CPU used by other processes meanwhile
    engines: set[str]  # engines the workers ran (warm run only)

    @property
    def rate(self) -> float:
        return self.result.patches / self.seconds


def pipeline_cold(
    slide: Path, folder: Path, out_dir: Path, options: ScoreOptions, workers: int
) -> PipelineRun:
    """``score_slides`` starting and stopping its own cluster, as ``wsi-score`` does."""
    load, start = OtherLoad(), time.perf_counter()
    results = score_slides(
        [slide],
        folder,
        out_dir,
        options=options,
        scheduler="local",
        n_workers=workers,
        show_progress=False,
        reports=None,
    )
    seconds = time.perf_counter() - start
    return PipelineRun(_checked(results), seconds, [], set(), load.cores(), set())


@dataclass(frozen=True)
class WarmRun:
    """One timed ``score_slides`` call of ``pipeline_warm``."""

    slide: Path
    engine: str = "auto"
    nearest_tolerance: float = NEAREST_TOLERANCE
    stride: int | None = None  # None: the options' stride
    tta: bool = False


def pipeline_warm(
    warmup: Path,
    folder: Path,
    out_dir: Path,
    options: ScoreOptions,
    workers: int,
    todo: list[WarmRun],
    repeats: int = 1,
) -> list[PipelineRun]:
    """``score_slides`` on a running cluster, after a warm-up slide, for each run of ``todo`` with the model
    (run by its engine) loaded on every worker: the median of ``repeats`` calls (each into a fresh folder),
    with the workers' peak RSS over all of them."""
    runs = []
    with dask_client(scheduler="local", n_workers=workers) as client:
        _checked(
            score_slides(
                [warmup],
                folder,
                out_dir / "warm-up",
                options=options,
                client=client,
                show_progress=False,
                reports=None,
            )
        )
        for index, run in enumerate(todo):
            run_options = replace(
                options, engine=run.engine, stride=run.stride or options.stride, tta=run.tta
            )
            source = model_source(folder, read_card(folder), run_options)
            engines = set(client.run(_prepare_worker, source, run.nearest_tolerance).values())
            client.run(reset_peak_rss)
            timed = []
            for repeat in range(repeats):
                workers_cpu = sum(client.run(time.process_time).values())
                load, start = OtherLoad(), time.perf_counter()
                result = _checked(
                    score_slides(
                        [run.slide],
                        folder,
                        out_dir / f"{index}-{repeat}",
                        options=run_options,
                        client=client,
                        show_progress=False,
                        reports=None,
                    )
                )
                seconds = time.perf_counter() - start
                other = load.cores(sum(client.run(time.process_time).values()) - workers_cpu)
                timed.append((seconds, result, other))
            seconds, result, other = sorted(timed, key=lambda entry: entry[0])[len(timed) // 2]
            threads = set(client.run(torch.get_num_threads).values())
            peaks = list(client.run(peak_rss_mib).values())
            runs.append(PipelineRun(result, seconds, peaks, threads, other, engines))
    return runs


def worker_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` plus what ``dask_client(scheduler="local")`` sets for its worker processes."""
    return {**base, **{key: str(value) for key, value in WORKER_ENVIRONMENT.items()}}


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` set to ``env`` (which processes spawned meanwhile inherit), restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _set_barrier(barrier: Barrier) -> None:
    global _barrier
    _barrier = barrier


def _random_patches_step(folder: str, engine: str, n_patches: int, batch_size: int, seed: int) -> Step:
    """One pass of ``Model.predict`` over random in-memory patches."""
    model = Model(folder, torch.device("cpu"), engine)
    size = model.card.patch_size
    patches = np.random.default_rng(seed).integers(0, 256, (n_patches, size, size, 3), dtype=np.uint8)

    def step() -> int:
        model.predict(patches, batch_size)
        return n_patches

    return step


def _per_patch_step(
    slide: str, folder: str, boxes_level0: np.ndarray, patch_size: int, batch_size: int
) -> Step:
    """What per-patch tools do, one batch per call: one level-0 read per patch (the patch's level-0 box),
    resized (PIL bilinear, antialiased) to the target µm/px, then scored."""
    opened, model = Slide(slide), Model(folder, torch.device("cpu"))
    side0 = round(boxes_level0[0, 2] - boxes_level0[0, 0])
    batches = itertools.cycle(np.array_split(boxes_level0, max(1, len(boxes_level0) // batch_size)))

    def step() -> int:
        boxes = next(batches)
        patches = np.stack(
            [
                np.asarray(
                    Image.fromarray(opened.read_level(0, round(x0), round(y0), side0, side0)).resize(
                        (patch_size, patch_size), Image.Resampling.BILINEAR
                    )
                )
                for x0, y0, _, _ in boxes
            ]
        )
        model.predict(patches, batch_size)
        return len(boxes)

    return step


def _timed_share(
    make_step: Callable[..., Step], args: tuple, min_seconds: float
) -> tuple[int, float, float, float]:
    """In a process: build the step with one torch thread, call it once (first-call overheads), start with the
    other processes and call it for at least ``min_seconds``; return patches done, start and end on the
    system-wide monotonic clock, and peak RSS (MiB)."""
    assert _barrier is not None
    try:
        torch.set_num_threads(1)
        step = make_step(*args)
        step()
        _barrier.wait()
    except BaseException:
        _barrier.abort()  # release the other processes rather than leave them waiting
        raise
    start, done = time.clock_gettime(time.CLOCK_MONOTONIC), 0
    while done == 0 or time.clock_gettime(time.CLOCK_MONOTONIC) - start < min_seconds:
        done += step()
    return done, start, time.clock_gettime(time.CLOCK_MONOTONIC), peak_rss_mib()


@dataclass(frozen=True)
class EngineRun:
    rate: float  # patches done by all processes / wall time from the first start to the last end
    peaks_mib: list[float]
    other_cores: float  # CPU used by other processes meanwhile (over the pool's whole life)


def together_rate(
    make_step: Callable[..., Step], per_process_args: list[tuple], min_seconds: float, env: dict[str, str]
) -> EngineRun:
    """Patches/s of ``make_step(*args)`` steps, one process per ``args`` (spawned with environment ``env``),
    started together."""
    processes = len(per_process_args)
    load, context = OtherLoad(), multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with (
        environment(env),
        ProcessPoolExecutor(
            processes, mp_context=context, initializer=_set_barrier, initargs=(barrier,)
        ) as pool,
    ):
        futures = [pool.submit(_timed_share, make_step, args, min_seconds) for args in per_process_args]
        shares = [future.result() for future in futures]
    wall = max(end for _, _, end, _ in shares) - min(start for _, start, _, _ in shares)
    rate = sum(done for done, *_ in shares) / wall
    return EngineRun(rate, [peak for *_, peak in shares], load.cores())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=40_000, help="level-0 width, px (default 40000)")
    p.add_argument("--height", type=int, default=30_000, help="level-0 height, px (default 30000)")
    p.add_argument("--mpp", type=float, default=0.25, help="µm per level-0 pixel (default 0.25)")
    p.add_argument("--tissue-fraction", type=float, default=0.4, help="slide area under tissue (default 0.4)")
    p.add_argument(
        "--model",
        nargs="+",
        default=["probe"],
        choices=["probe", "default", *TIMM_ARCHITECTURES],
        help="probe: the bundled centre-colour probe (I/O dominates); default: the bundled default model; "
        "others: untrained timm models",
    )
    p.add_argument(
        "--engine",
        nargs="+",
        default=list(ENGINES),
        choices=ENGINES,
        help="CPU engines to time (default both)",
    )
    p.add_argument(
        "--per-patch-cap",
        type=int,
        default=4000,
        help="tissue cells the per-patch reader reads (default 4000)",
    )
    p.add_argument("--slide-cache", type=Path, help="folder keeping the synthetic slides between runs")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Dask workers = engine processes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--block-cells", type=int, default=ScoreOptions.block_cells, help="cells per block side")
    p.add_argument("--engine-cap", type=int, default=20_000, help="most in-memory patches (default 20000)")
    p.add_argument(
        "--min-seconds", type=float, default=2.0, help="repeat in-memory passes for at least this long"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="warm pipeline runs per variant (median counts)")
    p.add_argument(
        "--workdir", type=Path, help="parent of the temporary working folder (default: system temp)"
    )
    p.add_argument("--keep", action="store_true", help="keep the working folder (slides, models, heatmaps)")
    args = p.parse_args(argv)
    if not 0 < args.tissue_fraction <= 0.9:
        p.error("--tissue-fraction must be in (0, 0.9]")
    return args


def show(label: str, text: str) -> None:
    print(f"{label:<32} {text}", flush=True)


def mib(values: list[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values) + " MiB"


def bench_model(
    name: str, args: argparse.Namespace, workdir: Path, slide: Path, warmup: Path, clean_env: dict[str, str]
) -> None:
    """Score the slide cold and warm, run the in-memory engine, and print rates, ratios and peak RSS.

    ``clean_env``: the environment before Dask changed it; the in-memory engine runs with it plus the
    workers' settings."""
    folder = model_folder(name, workdir)
    card = read_card(folder)
    options = ScoreOptions(device="cpu", batch_size=args.batch_size, block_cells=args.block_cells)
    with Slide(slide) as opened:
        grid = plan_grid(opened, card.patch_size, card.mpp, None)
        level = opened.best_level(grid.ds)
        (file_level, k), level_ds = opened.read_levels[level], opened.read_downsamples[level]
    kind = {"probe": "trivial linear probe: I/O dominates", "default": "the bundled default model"}.get(
        name, "UNTRAINED weights: speed only"
    )
    print(f"\n== model {name}: {card.name} ({card.architecture}; {kind})", flush=True)
    rows, cols = grid.shape
    show(
        "grid",
        f"{rows} x {cols} cells of {card.patch_size} px at {card.mpp} µm/px "
        f"({grid.ds * card.patch_size:.0f} level-0 px); reads level {file_level} at 1/{k} (downsample "
        f"{level_ds:g}), "
        f"resamples x{grid.ds / level_ds:.2f}",
    )
    heatmaps = workdir / "heatmaps" / name
    cold = pipeline_cold(slide, folder, heatmaps / "cold", options, args.workers)
    patches = cold.result.patches
    show("tissue patches scored", f"{patches} ({patches / max(1, rows * cols):.1%} of cells)")
    show(
        "pipeline cold patches/s",
        f"{cold.rate:9.1f}  ({cold.seconds:.1f} s: cluster start-up, model loading (engine auto), shutdown; "
        f"{cold.result.seconds:.1f} s inside score_slide)",
    )
    variants = [WarmRun(slide, engine) for engine in args.engine]
    if name == "probe":
        variants.append(WarmRun(slide, args.engine[0], BILINEAR))
    warm_runs = pipeline_warm(
        warmup, folder, heatmaps / "warm", options, args.workers, variants, args.repeats
    )
    per_process = max(1, math.ceil(min(patches, args.engine_cap) / args.workers))
    env = worker_env(clean_env)
    engines = {}
    for variant, warm in zip(variants, warm_runs, strict=True):
        engine, tolerance = variant.engine, variant.nearest_tolerance
        read = "nearest near the level's scale" if tolerance >= 0 else "PIL bilinear everywhere (before)"
        show(
            f"pipeline warm {engine} patches/s",
            f"{warm.rate:9.1f}  ({warm.seconds:.1f} s; {args.workers} Dask workers, engines "
            f"{sorted(warm.engines)}, torch threads per worker {sorted(warm.worker_threads)}; read: {read})",
        )
        if tolerance < 0:
            show("RATIO read path now / before", f"{warm_runs[0].rate / warm.rate:.2f}")
            continue
        shares = [(str(folder), engine, per_process, args.batch_size, seed) for seed in range(args.workers)]
        engines[engine] = together_rate(_random_patches_step, shares, args.min_seconds, env)
        single = together_rate(_random_patches_step, shares[:1], args.min_seconds, env)
        show(
            f"in-memory {engine} {args.workers} x 1 thread /s",
            f"{engines[engine].rate:9.1f}  ({per_process} random patches each, >= {args.min_seconds:g} s of "
            f"passes; 1 process {single.rate:.1f}, scaling x{engines[engine].rate / single.rate:.2f})",
        )
        show(f"RATIO pipeline warm / in-memory {engine}", f"{warm.rate / engines[engine].rate:.3f}")
        show(
            "CPU of other processes, cores",
            f"warm {warm.other_cores:.2f}, in-memory {engines[engine].other_cores:.2f}, "
            f"{single.other_cores:.2f} (near 0: the machine was idle)",
        )
    if len(engines) == 2:
        show(
            "RATIO in-memory onnxruntime / torch",
            f"{engines['onnxruntime'].rate / engines['torch'].rate:.2f}",
        )
    first_engine = engines[args.engine[0]]
    show(f"RATIO pipeline cold / in-memory {args.engine[0]}", f"{cold.rate / first_engine.rate:.3f}")
    if name == "probe":
        heatmap = read_heatmap(warm_runs[0].result.heatmap)
        rows_t, cols_t = np.nonzero(heatmap.tissue)
        picked = np.random.default_rng(args.seed).permutation(len(rows_t))[: args.per_patch_cap]
        boxes = heatmap.grid.cell_boxes_level0(rows_t[picked], cols_t[picked])
        shares = [
            (str(slide), str(folder), part, card.patch_size, args.batch_size)
            for part in np.array_split(boxes, args.workers)
        ]
        per_patch = together_rate(_per_patch_step, shares, args.min_seconds, env)
        show(
            "per-patch reader patches/s",
            f"{per_patch.rate:9.1f}  ({args.workers} processes x 1 thread; one level-0 read of "
            f"{boxes[0, 2] - boxes[0, 0]:.0f} px per patch + PIL resize; {len(boxes)} tissue cells)",
        )
        show("RATIO pipeline warm / per-patch", f"{warm_runs[0].rate / per_patch.rate:.2f}")
    workers, driver = warm_runs[0].worker_peaks_mib, peak_rss_mib()
    show("peak RSS Dask workers", f"{mib(workers)} (each, during the first warm run)")
    show("peak RSS driver so far", mib([driver]))
    show("peak RSS tree, upper bound", f"{mib([driver + sum(workers)])} (driver + sum of worker peaks)")
    show("peak RSS in-memory processes", mib(first_engine.peaks_mib))


def warmup_slide(folder: Path, mpp: float) -> Path:
    """A small square slide with one pink square, to warm the cluster up."""
    quarter = WARMUP_SIDE / 4
    scene = RectScene([Rect(quarter, quarter, 3 * quarter, 3 * quarter, PINK)])
    return write_slide(folder / "warm-up.svs", scene, WARMUP_SIDE, WARMUP_SIDE, mpp)


def bench_slide(
    folder: Path, width: int, height: int, mpp: float, fraction: float, seed: int
) -> tuple[Path, RectScene, float]:
    """The synthetic slide of these parameters under ``folder`` (written when missing, atomically), its scene
    and the fraction of it under tissue."""
    scene, covered = tissue_scene(width, height, fraction, np.random.default_rng(seed))
    path = folder / f"bench-{width}x{height}-{mpp:g}mpp-{fraction:g}-seed{seed}.svs"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = write_slide(path.with_suffix(".partial.svs"), scene, width, height, mpp, DOWNSAMPLES)
        partial.replace(path)
    return path, scene, covered


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    clean_env = dict(os.environ)
    workdir = Path(tempfile.mkdtemp(prefix="bench-wsi-", dir=args.workdir))
    try:
        start = time.perf_counter()
        slides = args.slide_cache or workdir
        slide, scene, covered = bench_slide(
            slides, args.width, args.height, args.mpp, args.tissue_fraction, args.seed
        )
        written = time.perf_counter() - start
        warmup = warmup_slide(workdir, args.mpp)
        show(
            "slide",
            f"{args.width} x {args.height} px at {args.mpp} µm/px, downsamples {DOWNSAMPLES}, "
            f"{len(scene.rects)} rects, islands cover {covered:.1%}, {slide.stat().st_size / 2**20:.1f} MiB",
        )
        show("slide write time", f"{written:.1f} s (not part of any rate; cached in {slides})")
        show("cpu count", str(os.cpu_count()))
        show("peak RSS driver after writing", mib([peak_rss_mib()]))
        for name in args.model:
            bench_model(name, args, workdir, slide, warmup, clean_env)
        print()
        show("peak RSS driver, whole run", mib([peak_rss_mib()]))
        show(
            "largest child, whole run",
            f"{mib([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024])} (RUSAGE_CHILDREN: max, "
            "not sum, over all child processes incl. cold clusters; may include the driver's RSS at spawn)",
        )
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
