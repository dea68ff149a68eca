"""wsi-score against WSInfer 0.6.1: the same model on the same slides, each tool cold (a fresh process).

The model is TIAToolbox's PCam layout of resnet18 (``tiatoolbox_cnn``, as ``tiatoolbox:resnet18-pcam``: 96 px
at 1.0 µm/px, RGB in [0, 1], softmax over two classes) with random weights fixed by ``--seed``: a TorchScript
archive and WSInfer ``config.json`` for WSInfer, the same weights as an ordinary model folder for wsi-score.

Slides (kept in ``--slide-cache``): real texture, ``sample_slides/CMU-1-Small-Region.svs`` (2,220 × 2,967 px,
0.499 µm/px) tiled 8 × 6 into a 17,760 × 17,802 px pyramid (levels 1×/4×/16×, JPEG tiles, Aperio-style);
and a synthetic lymph node written by ``wsi-synth slides`` (``--synthetic``, default 32,000 × 24,000 px at
0.25 µm/px, so that the whole benchmark, writing the slides included, stays under 10 minutes on 2 cores;
48,000 × 36,000 px takes 5 minutes to write alone).

Each tool runs once per slide as its command line does, with its defaults (wsi-score: ``--scheduler auto``,
which picks one in-process worker with a thread per core below 8 cores, reports written; WSInfer: batch 32, 2
data-loading workers); wsi-score once
per ``--precision``, int8 calibrated on the slide's own tissue (the first int8 run on a slide includes
calibrating; later ones find it cached). The times are wall times of the whole process, start-up included, and
the CPU time of its whole process tree (which other users of the machine do not change: compare those when the
last column says the machine was busy). wsi-score's one-time ONNX export and engine race for the model are
done (and cached) before its runs and timed apart. "Of which scoring" is WSInfer's inference loop (tqdm's
time) and the time wsi-score's heatmap records for its run on the slide. Probabilities are compared on patches
matched by their level-0 centres (WSInfer's CSV boxes; the heatmap's cells), within a quarter of a cell.

WSInfer is installed on first use in a venv of its own under ``<cache>/bench-peers/`` (``cache_dir()`` of
``core/files.py``), pinned with ``zarr<3 tiffslide<3`` and this environment's torch and torchvision, and run
offline (an empty local zoo registry in a HOME of its own, ``HF_HUB_OFFLINE=1``).

    nice python benchmarks/bench_peers.py --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from bench_pipeline import OtherLoad
from bench_scaling import size
from scipy.spatial import cKDTree

from wsi_pipeline.core.files import cache_dir
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.card import PRECISIONS, ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import choose_engine
from wsi_pipeline.model.weights import load_module, save_model
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import read_heatmap
from wsi_pipeline.synthetic.svs import write_slide

WSINFER = "wsinfer==0.6.1"
PEER_PINS = ("zarr<3", "tiffslide<3")  # WSInfer 0.6.1 reads with tiffslide 2 and writes with zarr 2
CMU_SAMPLE = Path(__file__).resolve().parents[1] / "sample_slides" / "CMU-1-Small-Region.svs"
CMU_TILES = (8, 6)  # copies across and down
DOWNSAMPLES = (1, 4, 16)
CLASS_NAMES = ["normal", "tumour"]
PATCH_PX, MODEL_MPP = 96, 1.0  # as TIAToolbox's PCam models
MATCH_CELLS = 0.25  # patches match when their level-0 centres are at most this many cells apart


def wsinfer_command() -> Path:
    """The ``wsinfer`` command of the peers' venv, installed when missing (once; minutes)."""
    torch_version, vision_version = (v.split("+")[0] for v in (torch.__version__, torchvision.__version__))
    pins = [WSINFER, *PEER_PINS, f"torch=={torch_version}", f"torchvision=={vision_version}"]
    venv = cache_dir() / "bench-peers" / f"{WSINFER.replace('==', '-')}-torch{torch_version}"
    command, done = venv / "bin" / "wsinfer", venv / "installed.json"
    if done.is_file() and json.loads(done.read_text()) == pins and command.exists():
        return command
    print(f"installing {' '.join(pins)} into {venv} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *pins], check=True)
    done.write_text(json.dumps(pins))
    return command


def offline_env(home: Path) -> dict[str, str]:
    """The environment WSInfer runs offline in: ``home`` holds an empty zoo registry (its CLI reads the
    registry at import), and the Hugging Face hub is never asked."""
    registry = home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps({"models": {}}))
    return {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}


def resnet18_model(folder: Path, seed: int) -> Path:
    """TIAToolbox's resnet18-pcam layout with random weights from ``seed``, as a wsi-score model folder."""
    card = ModelCard(
        name="tiatoolbox-resnet18-random",
        architecture="tiatoolbox_cnn",
        architecture_args={"backbone": "resnet18"},
        class_names=CLASS_NAMES,
        output="softmax",
        patch_size=PATCH_PX,
        mpp=MODEL_MPP,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        description=f"TIAToolbox's resnet18-pcam layout with random weights (seed {seed}): for timing only",
    )
    torch.manual_seed(seed)
    return save_model(folder, build_module(card).eval(), card)


def wsinfer_model(ours: Path, folder: Path) -> Path:
    """The same model as a WSInfer folder: ``torchscript_model.pt`` and ``config.json``."""
    card = read_card(ours)
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(load_module(ours / card.weights, card).eval()).save(str(folder / "torchscript_model.pt"))
    config = {
        "spec_version": "1.0",
        "architecture": "resnet18",
        "num_classes": len(card.class_names),
        "class_names": card.class_names,
        "patch_size_pixels": card.patch_size,
        "spacing_um_px": card.mpp,
        "transform": [{"name": "Resize", "arguments": {"size": card.patch_size}}, {"name": "ToTensor"}],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@dataclass(frozen=True)
class TiledImage:
    """A scene (``synthetic.svs.Scene``) repeating an RGB image across the plane."""

    image: np.ndarray  # uint8 (height, width, 3)

    def render(
        self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float
    ) -> np.ndarray:
        """Pixel (i, j) is the image's pixel under level-0 ``(x0 + (j + 0.5) ds, y0 + (i + 0.5) ds)``."""
        rows = np.floor(y0_level0 + (np.arange(height) + 0.5) * downsample).astype(int) % self.image.shape[0]
        cols = np.floor(x0_level0 + (np.arange(width) + 0.5) * downsample).astype(int) % self.image.shape[1]
        return self.image[np.ix_(rows, cols)]


def cmu_tiled_slide(folder: Path) -> Path:
    """CMU-1-Small-Region tiled ``CMU_TILES`` into a pyramidal slide at its µm/px (written when missing)."""
    with Slide(CMU_SAMPLE) as sample:
        image, mpp = sample.read_level(0, 0, 0, sample.width0, sample.height0), sample.mpp
    across, down = CMU_TILES
    width0, height0 = image.shape[1] * across, image.shape[0] * down
    path = folder / f"cmu1-tiled-{across}x{down}.svs"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = write_slide(path.with_suffix(".partial.svs"), TiledImage(image), width0, height0, mpp)
        partial.replace(path)
    return path


def synthetic_slide(folder: Path, width: int, height: int, mpp: float, seed: int) -> Path:
    """The slide ``wsi-synth slides`` writes for these parameters (written when missing)."""
    out = folder / f"synthetic-{width}x{height}-{mpp:g}mpp"
    path = out / f"synthetic_{seed}_000.svs"
    if not path.is_file():
        size = ["--width", str(width), "--height", str(height), "--mpp", str(mpp), "--seed", str(seed)]
        workers = ["--workers", str(os.cpu_count() or 1)]
        subprocess.run([script("wsi-synth"), "slides", str(out), *size, *workers], check=True)
    return path


def script(name: str) -> str:
    """A console script of this environment (beside its python)."""
    return str(Path(sys.executable).parent / name)


@dataclass(frozen=True)
class Timed:
    """A command run to completion."""

    seconds: float  # wall
    cpu_seconds: float  # of its whole process tree (its descendants end before it does)
    other_cores: float  # CPU other processes used meanwhile
    stderr: str


def timed(command: list[str], env: dict[str, str] | None = None) -> Timed:
    """Run a command to completion, its output kept quiet unless it fails."""
    load, start, cpu = OtherLoad(), time.perf_counter(), children_cpu_s()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds, cpu, others = time.perf_counter() - start, children_cpu_s() - cpu, load.cores()
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return Timed(seconds, cpu, others, done.stderr)


def children_cpu_s() -> float:
    """CPU seconds of this process's descendants that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Scored:
    """One tool's run on one slide: its times and the tumour probability at each patch's level-0 centre."""

    run: Timed
    scoring_seconds: float  # of the wall time, WSInfer's loop or wsi-score's run on the slide
    centres_level0: np.ndarray  # float (N, 2): x, y
    probabilities: np.ndarray  # float (N,)

    @property
    def rate(self) -> float:
        return len(self.probabilities) / self.run.seconds

    @property
    def cpu_rate(self) -> float:
        return len(self.probabilities) / self.run.cpu_seconds


def run_wsinfer(command: Path, slide: Path, model: Path, workdir: Path) -> Scored:
    """WSInfer on a folder holding only ``slide`` (a link), with its CSV read back."""
    slides, out = workdir / "in", workdir / "out"
    slides.mkdir(parents=True)
    (slides / slide.name).symlink_to(slide)
    arguments = ["run", "-i", str(slides), "-o", str(out), "-c", str(model / "config.json")]
    arguments += ["-p", str(model / "torchscript_model.pt")]
    run = timed([str(command), *arguments], offline_env(workdir / "home"))
    elapsed = re.findall(r"\[(?:(\d+):)?(\d+):(\d+)<", run.stderr)  # tqdm's bars: the longest is the loop
    loop = max(3600 * int(hours or 0) + 60 * int(minutes) + int(secs) for hours, minutes, secs in elapsed)
    with open(out / "model-outputs-csv" / f"{slide.stem}.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    boxes = np.array([[float(row[key]) for key in ("minx", "miny", "width", "height")] for row in rows])
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    tumour = np.array([float(row[f"prob_{CLASS_NAMES[-1]}"]) for row in rows])
    return Scored(run, loop, centres, tumour)


def run_wsi_score(slide: Path, model: Path, workdir: Path, precision: str) -> Scored:
    """wsi-score with its defaults but ``--precision``, with its heatmap read back."""
    arguments = [str(slide), "-o", str(workdir), "--model", str(model), "--precision", precision, "-q"]
    run = timed([script("wsi-score"), *arguments])
    heatmap = read_heatmap(workdir / f"{slide.stem}.zarr")
    scored = ~np.isnan(heatmap.probabilities[-1])
    rows, cols = np.nonzero(scored)
    boxes = heatmap.grid.cell_boxes_level0(rows, cols)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    tumour = heatmap.probabilities[-1][scored].astype(np.float64)
    return Scored(run, heatmap.metadata.seconds or 0.0, centres, tumour)


def table_row(first: list[str], scored: Scored, peer: Scored) -> str:
    """A row of the table: ``first`` cells, then the run's patches, times and rates, and the rates' ratios
    to WSInfer's (``peer``)."""
    run = scored.run

    def versus(mine: float, theirs: float) -> str:
        return "" if scored is peer else f"{mine / theirs:.2f}×"

    cells = [
        *first,
        f"{len(scored.probabilities):,}",
        f"{run.seconds:.1f}",
        f"{scored.scoring_seconds:.1f}",
        f"{scored.rate:.0f}",
        versus(scored.rate, peer.rate),
        f"{run.cpu_seconds:.1f}",
        f"{scored.cpu_rate:.0f}",
        versus(scored.cpu_rate, peer.cpu_rate),
        f"{run.other_cores:.2f}",
    ]
    return f"| {' | '.join(cells)} |"


def agreement(ours: Scored, peer: Scored, cell_level0: float) -> str:
    """How the two tools' probabilities compare on the patches both scored (matched by level-0 centre)."""
    distance, index = cKDTree(ours.centres_level0).query(
        peer.centres_level0, distance_upper_bound=MATCH_CELLS * cell_level0
    )
    matched = np.isfinite(distance)
    delta = np.abs(ours.probabilities[index[matched]] - peer.probabilities[matched])
    if not len(delta):
        return "no patches matched"
    apart = np.median(distance[matched])
    return (
        f"{len(delta)} patches matched (centres {apart:.1f} level-0 px apart, median); |Δp| median "
        f"{np.median(delta):.4f}, p95 {np.quantile(delta, 0.95):.4f}, max {delta.max():.4f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--synthetic",
        type=size,
        default=(32_000, 24_000),
        help="size WxH of the synthetic slide, level-0 px (default 32000x24000)",
    )
    p.add_argument("--synthetic-mpp", type=float, default=0.25, help="its µm/px (default 0.25)")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="wsi-score's runs (default: both; int8 calibrates on the slide, cached after its first run)",
    )
    p.add_argument("--seed", type=int, default=0, help="model weights and synthetic slide")
    p.add_argument("--slide-cache", type=Path, help="folder keeping the slides between runs")
    p.add_argument("--workdir", type=Path, help="parent of the temporary working folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    width, height = args.synthetic
    command = wsinfer_command()
    workdir = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=args.workdir))
    try:
        slides_dir = args.slide_cache or workdir / "slides"
        start = time.perf_counter()
        synthetic = synthetic_slide(slides_dir, width, height, args.synthetic_mpp, args.seed)
        slides = {"CMU-1 tiled 8 × 6": cmu_tiled_slide(slides_dir), "synthetic (wsi-synth)": synthetic}
        print(f"slides ready in {time.perf_counter() - start:.0f} s (cached in {slides_dir})")
        ours_model = resnet18_model(workdir / "models" / "wsi-score", args.seed)
        peer_model = wsinfer_model(ours_model, workdir / "models" / "wsinfer")
        start = time.perf_counter()
        engine = choose_engine(ours_model)
        once = time.perf_counter() - start
        print(f"wsi-score's ONNX export and engine race, once per model and machine: {once:.1f} s ({engine})")
        columns = "slide | level-0 px, µm/px | tool | patches | wall s | of which scoring | patches/s | "
        columns += "vs WSInfer | CPU s | patches/CPU-s | vs WSInfer | other processes, cores"
        print(f"\n| {columns} |\n|{' --- |' * 3}{' ---: |' * 9}")
        notes = []
        for index, (name, slide) in enumerate(slides.items()):
            with Slide(slide) as opened:
                extent, mpp = f"{opened.width0:,} × {opened.height0:,}, {opened.mpp:g}", opened.mpp
            runs = {"WSInfer 0.6.1": run_wsinfer(command, slide, peer_model, workdir / f"wsinfer-{index}")}
            for precision in args.precision:
                out = workdir / f"wsi-score-{index}-{precision}"
                runs[f"wsi-score {precision}"] = run_wsi_score(slide, ours_model, out, precision)
            peer = runs["WSInfer 0.6.1"]
            for tool, scored in runs.items():
                print(table_row([name, extent, tool], scored, peer), flush=True)
                if scored is not peer:
                    notes.append(f"{name}, {tool}: {agreement(scored, peer, PATCH_PX * MODEL_MPP / mpp)}")
        print("\nProbabilities (tumour), wsi-score vs WSInfer:")
        for note in notes:
            print(f"- {note}")
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
