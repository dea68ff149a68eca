"""A worker process's caches of open slides and models, used by many threads at once (Dask worker threads, the
in-process scheduler, napari's chunk readers): each slide and model is opened or loaded once at a time, a
slide in use is never closed, and the open handles stay bounded."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.predict import Model
from wsi_pipeline.scoring import worker
from wsi_pipeline.slide.reader import Slide

from .conftest import make_slide

THREADS, ROUNDS = 8, 150
SLIDES = worker._OPEN_SLIDES_MAX + 4  # more than the cache keeps open
WIDEN_S = 0.001  # sleeps inside opening, loading and reading, so that threads overlap there


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    paths = [folder / f"s{index}.svs" for index in range(SLIDES)]
    for index, path in enumerate(paths):
        make_slide(path, 600 + 40 * index, 500, 0.5, [(100.0, 100.0, 300.0, 300.0)], downsamples=(1, 4))
    return paths


class Ledger:
    """What the instrumented slides and models saw, with every broken rule as a message."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.open_now: Counter[tuple] = Counter()  # key → handles open
        self.opens: Counter[tuple] = Counter()
        self.loads: Counter[tuple] = Counter()
        self.broken: list[str] = []

    def note(self, problem: str) -> None:
        with self.guard:
            self.broken.append(problem)


@pytest.fixture
def ledger(monkeypatch) -> Iterator[Ledger]:
    """Empty caches of instrumented slides and models; the slides left open are closed afterwards."""
    ledger = Ledger()

    class TrackedSlide(Slide):
        def __init__(self, path: str, backend: str, mpp: float, jpeg_scaling: str = "auto") -> None:
            self.key = (path, backend, mpp)
            with ledger.guard:
                ledger.opens[self.key] += 1
                ledger.open_now[self.key] += 1
                twice = ledger.open_now[self.key] > 1
            if twice:
                ledger.note(f"{self.key} opened while a handle on it is open")
            time.sleep(WIDEN_S)
            super().__init__(path, backend, mpp, jpeg_scaling)
            self.closed = False

        def close(self) -> None:
            self.closed = True
            with ledger.guard:
                ledger.open_now[self.key] -= 1
            super().close()

        def read_level(self, *args: int):
            if self.closed:
                ledger.note(f"{self.key} read after it was closed")
            time.sleep(WIDEN_S)
            pixels = super().read_level(*args)
            if self.closed:
                ledger.note(f"{self.key} closed while being read")
            return pixels

    class TrackedModel(Model):
        def __init__(self, folder, device, engine, *precision, **options) -> None:
            with ledger.guard:
                ledger.loads[(str(folder), engine)] += 1
            time.sleep(10 * WIDEN_S)
            super().__init__(folder, device, engine, *precision, **options)

    monkeypatch.setattr(worker, "Slide", TrackedSlide)
    monkeypatch.setattr(worker, "Model", TrackedModel)
    monkeypatch.setattr(worker, "_open_slides", OrderedDict())
    monkeypatch.setattr(worker, "_models", {})
    yield ledger
    for entry in worker._open_slides.values():
        entry.value.close()


def test_many_threads_share_each_slide_and_model_and_never_read_a_closed_slide(slides, probe_model, ledger):
    weights = file_sha256(probe_model / read_card(probe_model).weights)
    models = [
        worker.ModelSource(str(probe_model), weights, "cpu", "torch"),
        worker.ModelSource(str(probe_model), weights, "auto", "torch"),
    ]
    sources = [worker.SlideSource(str(path), "tiffslide", 0.5) for path in slides]
    seen: dict[worker.ModelSource, set[int]] = {model: set() for model in models}

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ROUNDS):
            model = rng.choice(models)
            loaded = worker.worker_model(model)
            with ledger.guard:
                seen[model].add(id(loaded))
            with worker.worker_slide(rng.choice(sources)) as slide:
                assert slide.read_level(0, rng.randrange(400), rng.randrange(300), 64, 64).shape == (
                    64,
                    64,
                    3,
                )

    with ThreadPoolExecutor(THREADS) as pool:
        for done in [pool.submit(hammer, seed) for seed in range(THREADS)]:
            done.result()

    assert ledger.broken == []
    assert sum(ledger.opens.values()) > SLIDES  # slides were evicted and opened again
    assert all(len(ids) == 1 for ids in seen.values())  # one copy of each model ...
    assert list(ledger.loads.values()) == [2]  # ... loaded once for each of its two cache keys
    open_keys = {key for key, count in ledger.open_now.items() if count}
    cached = {key[:3] for key in worker._open_slides}  # keyed by the content (sha256) too
    assert len(worker._open_slides) <= worker._OPEN_SLIDES_MAX and open_keys == cached
    assert all(count in (0, 1) for count in ledger.open_now.values())
    assert all(entry.users == 0 for entry in worker._open_slides.values())


def test_a_slide_that_fails_to_open_fails_every_thread_asking_and_is_not_cached(tmp_path, ledger):
    missing = worker.SlideSource(str(tmp_path / "missing.svs"), "tiffslide", 0.5)
    gate = threading.Barrier(THREADS)

    def open_missing(_: int) -> str:
        gate.wait()
        with pytest.raises(InputError, match="no such file") as raised, worker.worker_slide(missing):
            pass
        return str(raised.value)

    with ThreadPoolExecutor(THREADS) as pool:
        assert len(set(pool.map(open_missing, range(THREADS)))) == 1
    assert len(worker._open_slides) == 0 and ledger.broken == []
