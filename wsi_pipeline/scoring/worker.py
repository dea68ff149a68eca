"""Scoring one block on a worker: open the slide and the models once per process, read, cut, score.

A task receives only coordinates and paths (never pixels); the returned scores are a few kB per block.

Each process keeps its open slides (the ``_OPEN_SLIDES_MAX`` most recently used, so many-slide batches stay
bounded) and its models. Several threads use them at once (a worker with threads, the in-process ``threads``
scheduler, napari's chunk readers), so one lock guards both caches: a slide or model that several threads miss
at once is opened or loaded once, by the first of them, while the others wait for it; a slide is pinned while
a thread reads it (``with worker_slide(source) as slide:``), and only handles no thread holds are closed when
the cache is over its size."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from wsi_pipeline.model.device import device_name
from wsi_pipeline.model.predict import Model
from wsi_pipeline.scoring.pipeline import overlap_for, pinned, run_overlapped
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import BACKGROUND, OTHER_LEVEL, TISSUE, UNREADABLE
from wsi_pipeline.tiling.grid import Block, PatchGrid
from wsi_pipeline.tiling.patches import BlockPatches, read_block

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


class _Entry(Generic[T]):
    """A cached slide or model: made by the first thread that missed it (the others wait until ``ready``), and
    held by ``users`` threads (slides only: a held slide is never closed by eviction)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.users = 0


_OPEN_SLIDES_MAX = 8
_lock = threading.Lock()  # guards both caches; slides are opened and models loaded outside it
_open_slides: OrderedDict[tuple, _Entry[Slide]] = OrderedDict()  # least recently released first
_models: dict[tuple, _Entry[Model]] = {}


@dataclass(frozen=True)
class SlideSource:
    """How a worker opens the slide: the same file, backend, µm/px and JPEG scaling the client resolved, and
    the content it found (a file replaced since a handle was opened on it gets a new one)."""

    path: str
    backend: str
    mpp: float
    sha256: str = ""
    jpeg_scaling: str = "auto"


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model; the weights' hash, device, engine and precision key the per-process
    cache. The engine (torch or onnxruntime, see ``model.choose_engine``) applies to CPU workers; CUDA runs
    torch. int8 (CPU only) is the model the client calibrated on patches of sha256 ``calibration``, checked
    and cached (``Model``)."""

    folder: str
    weights_sha256: str
    device: str = "auto"
    engine: str = "torch"
    precision: str = "float32"
    calibration: str | None = None


def _cached(
    cache: dict[Hashable, _Entry[T]], key: Hashable, make: Callable[[], T], *, hold: bool
) -> _Entry[T]:
    """The ready entry of ``key``: made here (outside the lock) when this thread misses it first, else the
    one made by that thread, waited for. ``hold`` counts this thread among its users. A failure to make it
    is raised to every thread waiting for it, and nothing is cached."""
    with _lock:
        entry = cache.get(key)
        missed = entry is None
        if missed:
            entry = cache[key] = _Entry()
        entry.users += hold
    if not missed:
        entry.ready.wait()
        if entry.error is not None:
            raise entry.error
        return entry
    try:
        entry.value = make()
    except BaseException as error:
        entry.error = error
        with _lock:
            if cache.get(key) is entry:
                del cache[key]
        raise
    finally:
        entry.ready.set()
    return entry


def _release_slide(key: tuple, entry: _Entry[Slide]) -> None:
    """A thread is done with a slide: it becomes the most recently used, and while the cache holds more than
    ``_OPEN_SLIDES_MAX`` slides, the least recently used that no thread holds are closed."""
    with _lock:
        entry.users -= 1
        if _open_slides.get(key) is entry:
            _open_slides.move_to_end(key)
        surplus = len(_open_slides) - _OPEN_SLIDES_MAX
        idle = [idle_key for idle_key, cached in _open_slides.items() if cached.users == 0]
        for idle_key in idle[: max(surplus, 0)]:  # closed under the lock: a key is never open twice
            _open_slides.pop(idle_key).value.close()


def _open_slide(source: SlideSource) -> Slide:
    return Slide(source.path, source.backend, source.mpp, source.jpeg_scaling)


@contextlib.contextmanager
def worker_slide(source: SlideSource) -> Iterator[Slide]:
    """This process's open handle on a slide, held (never closed) until the ``with`` block ends.

    Args:
        source: the slide file, backend, µm/px and JPEG scaling.

    Yields:
        The open slide, shared with the other threads of this process reading the same slide.
    """
    key = (source.path, source.backend, source.mpp, source.sha256, source.jpeg_scaling)
    entry = _cached(_open_slides, key, lambda: _open_slide(source), hold=True)
    try:
        yield entry.value
    finally:
        _release_slide(key, entry)


def _load_model(source: ModelSource) -> Model:
    device = device_name(source.device)
    engine = source.engine if device == "cpu" else "torch"
    # one intra-op thread: a worker's threads score a block each, in processes of one thread or in this one
    model = Model(source.folder, device, engine, source.precision, source.calibration, threads=1)
    if model.weights_sha256 != source.weights_sha256:
        raise RuntimeError(f"{source.folder}: weights changed while scoring (hash differs)")
    return model


def worker_model(source: ModelSource) -> Model:
    """This process's copy of the model on its device, loaded on first use (once, however many threads ask).

    Args:
        source: the model folder, its weights' sha256, the device, the CPU engine and the precision.

    Returns:
        The loaded model, shared by the threads of this process.
    """
    key = (source.weights_sha256, source.device, source.engine, source.precision, source.calibration)
    return _cached(_models, key, lambda: _load_model(source), hold=False).value


def score_block(
    slide: SlideSource,
    models: tuple[ModelSource, ...],
    grid: PatchGrid,
    block: Block,
    cells: np.ndarray,
    batch_size: int,
    tta: bool = False,
) -> tuple[Block, np.ndarray, np.ndarray, str, tuple[str, ...]]:
    """Score a block's tissue cells (the Dask task): the patches are read once and scored by each model in
    batches of ``batch_size``. A CPU worker reads the block as one region; a CUDA worker reads it in regions
    of ``batch_size`` cells (row-major), the next ones while one is scored (``pipeline``).

    Args:
        slide: how to open the slide.
        models: how to load the model, or each member of an ensemble.
        grid: the slide's patch grid.
        block: the block of grid cells.
        cells: (n_rows, n_cols) bool: the block's cells to score.
        batch_size: patches per model call.
        tta: average each patch's 8 flips and rotations.

    Returns:
        The block; its probabilities (classes, n_rows, n_cols), the mean over the models, NaN where not
        scored; its cells' labels (n_rows, n_cols: ``TISSUE``, ``OTHER_LEVEL`` where read from another
        pyramid level, ``UNREADABLE`` where no level could be decoded, else ``BACKGROUND``); and the device
        and the engine of each model that scored them.
    """
    loaded = [worker_model(model) for model in models]
    device_type = loaded[0].device_type
    out = np.full((len(loaded[0].card.class_names), block.n_rows, block.n_cols), np.nan, np.float32)
    read, elsewhere = np.zeros(cells.shape, bool), np.zeros(cells.shape, bool)

    def score(batch: tuple[BlockPatches, np.ndarray | torch.Tensor]) -> None:
        patches, pixels = batch
        scores = [model.predict(pixels, batch_size, tta) for model in loaded]
        out[:, patches.read] = np.mean(scores, axis=0, dtype=np.float32).T
        read[patches.read], elsewhere[patches.elsewhere] = True, True

    with worker_slide(slide) as opened:

        def reader(batch_cells: np.ndarray) -> Callable[[], tuple[BlockPatches, np.ndarray | torch.Tensor]]:
            def read_batch() -> tuple[BlockPatches, np.ndarray | torch.Tensor]:
                patches = read_block(opened, grid, block, batch_cells)
                return patches, pinned(patches.patches) if device_type == "cuda" else patches.patches

            return read_batch

        overlap = overlap_for(device_type)
        parts = batch_masks(cells, batch_size) if overlap.batch_regions else [cells]
        run_overlapped([reader(part) for part in parts], score, overlap)
    kinds = [elsewhere, read, cells]
    labels = np.select(kinds, [OTHER_LEVEL, TISSUE, UNREADABLE], BACKGROUND).astype(np.uint8)
    return block, out, labels, loaded[0].device, tuple(model.engine for model in loaded)


def batch_masks(cells: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``cells`` split into masks of ``batch_size`` cells each (the last fewer), in row-major order: the
    batches ``Model.predict`` makes of the block's patches, each read as one region (``read_block``) by a
    worker that reads ahead (``Overlap.batch_regions``): its scores may differ by a grey level (bilinear
    resampling at region edges) from the same block read whole, unless the block has at most ``batch_size``
    cells (the default: 16² cells, batch 256)."""
    where = np.flatnonzero(cells)
    masks = []
    for start in range(0, len(where), batch_size):
        mask = np.zeros(cells.size, bool)
        mask[where[start : start + batch_size]] = True
        masks.append(mask.reshape(cells.shape))
    return masks or [cells]
