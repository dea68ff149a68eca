"""int8 against float32 on the bare engine: patches per second per core, and how far int8's probabilities
move, for TIAToolbox's resnet18-pcam layout (random weights, as ``bench_peers.py``) and the bundled model.

Patches are real tissue read as scoring reads it (``scoring.calibration``): CMU-1-Small-Region's at 1 µm/px
for resnet18, the bundled synthetic node's at 0.972 µm/px for the bundled model, cells 32 target px apart so
that there are enough. The first ``CALIBRATION_PATCHES`` calibrate int8 as a scoring run does (two thirds
calibrate, one third is the held-out check); the rest, never seen by the calibration, measure the agreement.

Speed: ``Model.predict`` on batches of 256 in-memory patches in this process with one thread, each engine in
turn for ``--rounds`` rounds, best round counted; per CPU-second of this process (robust to other processes
taking the core) and per wall-second. The int8 model is calibrated afresh in a temporary cache.

    nice python benchmarks/bench_int8.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_peers import CMU_SAMPLE, resnet18_model

from wsi_pipeline.model.bundled import DEFAULT_MODEL, resolve_model_folder
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.onnx import CACHE_ENV
from wsi_pipeline.model.predict import Model
from wsi_pipeline.model.quantize import Agreement
from wsi_pipeline.scoring.calibration import CALIBRATION_PATCHES, calibration_patches
from wsi_pipeline.scoring.options import ScoreOptions

SYNTHETIC_NODE = CMU_SAMPLE.parent / "synthetic-node_19_000.svs"
BATCH = 256
CPU = torch.device("cpu")


def best_rates(models: dict[str, Model], patches: np.ndarray, rounds: int) -> dict[str, tuple[float, float]]:
    """(patches per CPU-second, per wall-second) of each model on ``patches``: the best of ``rounds``
    rounds, the models taking turns."""
    cpu, wall = dict.fromkeys(models, np.inf), dict.fromkeys(models, np.inf)
    for model in models.values():
        model.predict(patches[:8])  # first-call overheads
    for _ in range(rounds):
        for name, model in models.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            model.predict(patches, BATCH)
            cpu[name] = min(cpu[name], time.process_time() - cpu_start)
            wall[name] = min(wall[name], time.perf_counter() - wall_start)
    return {name: (len(patches) / cpu[name], len(patches) / wall[name]) for name in models}


def bench(name: str, folder: Path, slide: Path, rounds: int) -> None:
    """Calibrate int8 on tissue of ``slide``, time the engines, and print one table row per engine."""
    card = read_card(folder)
    patches = calibration_patches(slide, card, ScoreOptions(stride=32), n=10_000)
    calibration, unseen = patches[:CALIBRATION_PATCHES], patches[CALIBRATION_PATCHES:]
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = Model(folder, CPU, "torch", "int8", calibration)
    calibrating = time.perf_counter() - start
    if int8.precision != "int8":
        print(f"| {name} | int8 refused: {'; '.join(str(w.message) for w in caught)} |")
        return
    models = {
        "float32, torch": Model(folder, CPU, "torch"),
        "float32, ONNX Runtime": Model(folder, CPU, "onnxruntime"),
        "int8, ONNX Runtime": int8,
    }
    timing = np.resize(unseen, (BATCH, *unseen.shape[1:]))
    rates = best_rates(models, timing, rounds)
    best_float = max(rates["float32, torch"][0], rates["float32, ONNX Runtime"][0])
    reference = models["float32, torch"].predict(unseen)
    moved = Agreement.of(reference, int8.predict(unseen))
    for engine, (per_cpu_s, per_wall_s) in rates.items():
        ratio = f"{per_cpu_s / best_float:.2f}×" if engine.startswith("int8") else ""
        agreement = f"{moved.max:.3f}, {moved.mean:.4f} ({moved.patches})" if ratio else ""
        row = f"| {name} | {engine} | {per_cpu_s:.0f} | {per_wall_s:.0f} | {ratio} | {agreement} |"
        print(row, flush=True)
    print(f"|  | calibration (once, cached): {calibrating:.1f} s on {len(calibration)} patches |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per engine (best counts)")
    p.add_argument("--seed", type=int, default=0, help="resnet18's random weights")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as workdir:
        os.environ[CACHE_ENV] = str(Path(workdir) / "cache")  # calibrate afresh
        print(
            "| model | engine | patches/CPU-s | patches/wall-s | int8 / best float32 | |Δp| max, mean (n) |"
            "\n| --- | --- | ---: | ---: | ---: | --- |"
        )
        resnet18 = resnet18_model(Path(workdir) / "resnet18", args.seed)
        bench("resnet18 (TIAToolbox layout)", resnet18, CMU_SAMPLE, args.rounds)
        bench("bundled synthetic-pcam-cnn", resolve_model_folder(DEFAULT_MODEL), SYNTHETIC_NODE, args.rounds)


if __name__ == "__main__":
    main()
