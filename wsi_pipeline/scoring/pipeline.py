"""Reading and inference overlapped inside a worker: reader threads fill a bounded queue, one thread scores.

Each job (reading one batch of patches) runs on one of ``readers`` threads, which put what they read in a
queue of at most ``depth`` batches (so memory stays bounded when reading outruns the model); the calling
thread takes batches as they come and scores them while the readers go on. Results are returned in job
order, whatever order they were read in, so the output is that of running the jobs and the scoring one
after the other. On CUDA the batches are copied to pinned (page-locked) memory by the readers, so the model
thread's ``non_blocking`` copies to the device do not wait on the host. CPU workers, whose one core does
both, read and score serially.

The reading that a thread does (decoding JPEG tiles in OpenSlide, resampling in PIL or OpenCV) and the
model's forward pass (torch and ONNX Runtime) release the GIL, so while the model runs on a GPU a block takes
about the longer of the two times, not their sum (``benchmarks/bench_overlap.py``, with a stand-in model).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Overlap:
    """Reader threads and the most batches read ahead of the model (0 readers: read then score, serially),
    and whether a block is read as one region per batch (readers need batches to read ahead) or as a whole."""

    readers: int
    depth: int
    batch_regions: bool


SERIAL = Overlap(readers=0, depth=0, batch_regions=False)
# a CPU worker has one core, which reading and the model share: a reader thread beside the model made the
# bundled model 0.69-0.95x as fast under ``taskset -c 0`` (benchmarks/bench_overlap.py), so none; it reads
# each block as one region, so its heatmap does not depend on the batch size
CPU_OVERLAP = SERIAL
# not yet run on a GPU: enough readers to keep it fed
CUDA_OVERLAP = Overlap(readers=3, depth=4, batch_regions=True)


def overlap_for(device_type: str) -> Overlap:
    """The readers and queue depth of a worker scoring on a device of ``device_type`` (cpu, cuda)."""
    return CUDA_OVERLAP if device_type == "cuda" else CPU_OVERLAP


def pinned(batch: np.ndarray) -> torch.Tensor:
    """A uint8 batch in page-locked host memory, for an asynchronous copy to a CUDA device."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).pin_memory()


def run_overlapped(reads: Sequence[Callable[[], T]], score: Callable[[T], R], overlap: Overlap) -> list[R]:
    """``[score(read()) for read in reads]``, with the reads run ahead on ``overlap.readers`` threads.

    Args:
        reads: the jobs that read each batch, in order.
        score: scores one batch (run on the calling thread, one batch at a time).
        overlap: reader threads and queue depth; with no readers, or one job, everything runs here.

    Returns:
        The scores of each batch, in the order of ``reads``. The first error of a read or of the scoring is
        raised here, after the readers stopped.
    """
    if overlap.readers < 1 or len(reads) < 2:
        return [score(read()) for read in reads]
    ready: queue.Queue[tuple[int, T | None, BaseException | None]] = queue.Queue(max(overlap.depth, 1))
    stop = threading.Event()
    next_job = iter(range(len(reads)))
    take = threading.Lock()

    def reader() -> None:
        while not stop.is_set():
            with take:
                index = next(next_job, None)
            if index is None:
                return
            try:
                item: tuple[int, T | None, BaseException | None] = (index, reads[index](), None)
            except BaseException as error:  # handed to the scoring thread, which raises it
                item = (index, None, error)
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(min(overlap.readers, len(reads)))]
    for thread in threads:
        thread.start()
    results: list[R | None] = [None] * len(reads)
    try:
        for _ in reads:
            index, batch, error = ready.get()
            if error is not None:
                raise error
            results[index] = score(batch)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return results
