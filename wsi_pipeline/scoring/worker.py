"""Scoring one block on a worker: open the slide and the model once per process, read, cut, score.

A task receives only coordinates and paths (never pixels); the returned scores are a few kB per block."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from wsi_pipeline.model.device import resolve_device
from wsi_pipeline.model.predict import Model
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import Block, PatchGrid
from wsi_pipeline.tiling.patches import read_block_patches

_OPEN_SLIDES_MAX = 8
_open_slides: OrderedDict[tuple, Slide] = OrderedDict()
_models: dict[tuple[str, str, str], Model] = {}
_models_lock = threading.Lock()  # a worker with several threads loads each model once


@dataclass(frozen=True)
class SlideSource:
    """How a worker opens the slide: the same file, backend and µm/px the client resolved."""

    path: str
    backend: str
    mpp: float


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model; the weights' hash, device and engine key the per-process cache. The
    engine (torch or onnxruntime, see ``model.choose_engine``) applies to CPU workers; CUDA runs torch."""

    folder: str
    weights_sha256: str
    device: str = "auto"
    engine: str = "torch"


def worker_slide(source: SlideSource) -> Slide:
    """This process's open handle on a slide (a small LRU, so many-slide batches stay bounded)."""
    key = (source.path, source.backend, source.mpp)
    if key in _open_slides:
        _open_slides.move_to_end(key)
    else:
        _open_slides[key] = Slide(source.path, source.backend, source.mpp)
        while len(_open_slides) > _OPEN_SLIDES_MAX:
            _open_slides.popitem(last=False)[1].close()
    return _open_slides[key]


def worker_model(source: ModelSource) -> Model:
    """This process's copy of the model on its device, loaded on first use."""
    key = (source.weights_sha256, source.device, source.engine)
    with _models_lock:
        if key not in _models:
            device = resolve_device(source.device)
            model = Model(source.folder, device, source.engine if device.type == "cpu" else "torch")
            if model.weights_sha256 != source.weights_sha256:
                raise RuntimeError(f"{source.folder}: weights changed while scoring (hash differs)")
            _models[key] = model
    return _models[key]


def score_block(
    slide: SlideSource,
    model: ModelSource,
    grid: PatchGrid,
    block: Block,
    cells: np.ndarray,
    batch_size: int,
    tta: bool = False,
) -> tuple[Block, np.ndarray, str, str]:
    """Probabilities (classes, n_rows, n_cols) of a block's tissue cells (NaN elsewhere), and the device and
    engine that scored them."""
    loaded = worker_model(model)
    patches = read_block_patches(worker_slide(slide), grid, block, cells)
    scores = loaded.predict(patches, batch_size, tta)
    out = np.full((len(loaded.card.class_names), block.n_rows, block.n_cols), np.nan, np.float32)
    out[:, cells] = scores.T
    return block, out, str(loaded.device), loaded.engine
