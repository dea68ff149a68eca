"""Reading and inference overlapped in a worker (``scoring.pipeline``): batches are scored while later ones
are read, results come back in order, errors are raised, and a real slide's block scores are bit-identical
to reading and scoring one batch after the other."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.scoring import worker
from wsi_pipeline.scoring.options import ScoreOptions
from wsi_pipeline.scoring.pipeline import SERIAL, Overlap, run_overlapped
from wsi_pipeline.scoring.planning import tissue_cells
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.tiling.grid import plan_grid, split_blocks
from wsi_pipeline.tiling.patches import read_block

SAMPLE = Path(__file__).parents[1] / "sample_slides" / "CMU-1-Small-Region.svs"
READ_S, SCORE_S = 0.03, 0.03


@pytest.mark.parametrize("overlap", [Overlap(1, 2, True), Overlap(3, 1, True)])
def test_batches_are_scored_while_later_ones_are_read_and_come_back_in_order(overlap: Overlap) -> None:
    guard, reads_done, scores_started = threading.Lock(), [], []

    def reader(index: int):
        def read() -> int:
            time.sleep(READ_S * (1 + index % 3))  # uneven: with several readers, batches arrive out of order
            with guard:
                reads_done.append(time.perf_counter())
            return index

        return read

    def score(index: int) -> int:
        scores_started.append(time.perf_counter())
        time.sleep(SCORE_S)
        return index * 10

    n = 8
    assert run_overlapped([reader(index) for index in range(n)], score, overlap) == [i * 10 for i in range(n)]
    assert min(scores_started) < max(reads_done)  # the model started before the reads were done


def test_serial_reads_everything_in_this_thread() -> None:
    threads = []

    def read() -> int:
        threads.append(threading.current_thread())
        return 1

    assert run_overlapped([read, read], lambda x: x + 1, SERIAL) == [2, 2]
    assert threads == [threading.main_thread()] * 2


def test_a_failed_read_is_raised_and_the_readers_stop() -> None:
    def bad() -> int:
        raise OSError("cannot decode")

    before = threading.active_count()
    with pytest.raises(OSError, match="cannot decode"):
        run_overlapped([lambda: 1, bad, *[lambda: 1] * 10], lambda x: x, Overlap(2, 1, True))
    assert threading.active_count() == before


def test_block_scores_on_a_real_slide_are_bit_identical_to_the_serial_path(monkeypatch) -> None:
    folder = bundled_models_dir() / DEFAULT_MODEL
    card = read_card(folder)
    slide = Slide(SAMPLE)
    grid = plan_grid(slide, card.patch_size, card.mpp, None)
    cells, _ = tissue_cells(slide, grid, ScoreOptions())
    source = worker.SlideSource(str(SAMPLE), "auto", slide.mpp)
    model = worker.ModelSource(str(folder), file_sha256(folder / card.weights), "cpu", "torch")
    batch_size = 16  # the sample's 71 tissue cells in 5 batches

    def scores(overlap: Overlap, batch_size: int = batch_size) -> list[tuple[np.ndarray, np.ndarray]]:
        monkeypatch.setattr(worker, "overlap_for", lambda device: overlap)
        results = []
        for block in split_blocks(cells.shape, 16):
            _, out, labels, *_ = worker.score_block(
                source, (model,), grid, block, cells[block.cells], batch_size
            )
            results.append((out, labels))
        return results

    # the same batch regions read by this thread alone, then by two readers ahead of the model
    serial, overlapped = scores(Overlap(0, 0, True)), scores(Overlap(2, 2, True))
    assert sum(int(np.isfinite(out[0]).sum()) for out, _ in serial) == cells.sum()
    for (out_serial, labels_serial), (out, labels) in zip(serial, overlapped, strict=True):
        assert out.tobytes() == out_serial.tobytes()
        assert np.array_equal(labels, labels_serial)

    # a CPU worker reads each block as one region, whatever the batch size
    regions = []
    monkeypatch.setattr(worker, "read_block", lambda *args: regions.append(args[3]) or read_block(*args))
    whole = scores(SERIAL)
    assert [mask.tolist() for mask in regions] == [
        cells[block.cells].tolist() for block in split_blocks(cells.shape, 16)
    ]
    for (out_whole, _), (out, _) in zip(whole, scores(SERIAL, batch_size=256), strict=True):
        np.testing.assert_allclose(out, out_whole, atol=1e-6)  # the engine's rounding differs by batch size
