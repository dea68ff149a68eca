"""The parts of a scoring run one at a time: planning a slide (new, resumed, kept, refused, locked), a failing
block failing its slide alone, ``score_slide`` raising what ``score_slides`` reports, and stopping."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from wsi_pipeline import ScoreOptions, read_heatmap, score_slide, score_slides
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.locks import LockedError, lock_path
from wsi_pipeline.scoring import scheduler
from wsi_pipeline.scoring.ledger import BATCH_TABLE, read_batch_table
from wsi_pipeline.scoring.options import BlockWritten, SlidePlanned
from wsi_pipeline.scoring.planning import COMPLETE_NOTE, SlidePlan, model_members, plan_slide

from .conftest import make_slide

OPTIONS = ScoreOptions(block_cells=2)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    make_slide(path, 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return path


@pytest.fixture
def plan(probe_model, tmp_path) -> Iterator[partial]:
    """``plan_slide`` into ``tmp_path/out`` with the probe model (options given per call)."""
    with ThreadPoolExecutor(1) as tissue_pool:
        yield partial(
            plan_slide,
            out_dir=tmp_path / "out",
            members=model_members(probe_model, OPTIONS),
            tissue_pool=tissue_pool,
        )


def test_plan_slide_starts_keeps_refuses_and_respects_the_lock(plan, slide, probe_model, client, tmp_path):
    fresh: SlidePlan = plan(slide, options=OPTIONS)
    assert fresh.error is None and fresh.writer is not None and lock_path(fresh.heatmap).exists()
    sizes = [int(fresh.cells[block.cells].sum()) for block in fresh.blocks]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == fresh.patches == fresh.cells.sum()
    assert fresh.kept == 0 and fresh.notes == ()
    # while it holds the heatmap's lock, another plan of the slide fails, holding nothing
    locked = plan(slide, options=OPTIONS)
    assert isinstance(locked.error, LockedError) and locked.lock is None and locked.writer is None
    fresh.release_lock()
    assert not lock_path(fresh.heatmap).exists()

    (result,) = score_slides(
        [slide], probe_model, fresh.heatmap.parent, options=OPTIONS, client=client, show_progress=False
    )
    assert result.status == "ok"
    kept = plan(slide, options=OPTIONS)
    assert kept.error is None and kept.writer is None and kept.blocks == () and kept.notes == (COMPLETE_NOTE,)
    kept.release_lock()
    refused = plan(slide, options=ScoreOptions(block_cells=4))
    assert isinstance(refused.error, InputError) and "block cells 2 in the heatmap, 4 now" in str(
        refused.error
    )
    assert refused.lock is None and not lock_path(refused.heatmap).exists()
    missing = plan(tmp_path / "missing.svs", options=OPTIONS)
    assert isinstance(missing.error, InputError) and missing.heatmap == tmp_path / "out" / "missing.zarr"


def test_a_failing_block_fails_its_slide_alone_and_leaves_it_resumable(
    slide, probe_model, client, tmp_path, monkeypatch
):
    slides = [Path(shutil.copy(slide, tmp_path / f"{name}.svs")) for name in ("bad", "good")]
    score_block = scheduler.score_block

    def failing_on_bad(source, *args, **kwargs):
        if Path(source.path).stem == "bad":
            raise RuntimeError("worker lost its disk")
        return score_block(source, *args, **kwargs)

    monkeypatch.setattr(scheduler, "score_block", failing_on_bad)
    out = tmp_path / "out"
    bad, good = score_slides(slides, probe_model, out, options=OPTIONS, client=client, show_progress=False)
    assert (bad.status, good.status) == ("failed", "ok")
    assert bad.message == f"{slides[0]}: RuntimeError: worker lost its disk"
    assert not read_heatmap(out / "bad.zarr").complete and not lock_path(out / "bad.zarr").exists()
    rows = read_batch_table(out / BATCH_TABLE)
    assert [row["status"] for row in rows.values()] == ["failed", "ok"]
    monkeypatch.undo()
    (again,) = score_slides(slides[:1], probe_model, out, options=OPTIONS, client=client, show_progress=False)
    assert again.status == "ok" and read_heatmap(out / "bad.zarr").complete


def test_score_slide_raises_what_score_slides_reports_and_writes_no_table(
    slide, probe_model, client, tmp_path
):
    out = tmp_path / "out"
    first = score_slide(slide, probe_model, out, client=client, options=OPTIONS, show_progress=False)
    assert first.status == "ok"
    other = ScoreOptions(block_cells=4)
    with pytest.raises(InputError, match="other parameters"):
        score_slide(slide, probe_model, out, client=client, options=other, show_progress=False)
    assert not (out / BATCH_TABLE).exists() and not lock_path(out / "s.zarr").exists()
    (reported,) = score_slides([slide], probe_model, out, options=other, client=client, show_progress=False)
    assert reported.status == "failed" and "other parameters" in reported.message
    assert read_batch_table(out / BATCH_TABLE)[str(slide.resolve())]["status"] == "failed"


def test_stop_cancels_resumably_and_the_next_run_resumes(slide, probe_model, client, tmp_path):
    out, stop, events = tmp_path / "out", threading.Event(), []

    def stop_after_a_block(event) -> None:
        events.append(event)
        if isinstance(event, BlockWritten):
            stop.set()

    run = partial(score_slide, slide, probe_model, out, client=client, options=OPTIONS, show_progress=False)
    cancelled = run(on_event=stop_after_a_block, stop=stop)
    assert cancelled.status == "cancelled" and cancelled.heatmap == out / "s.zarr"
    assert [type(event) for event in events] == [SlidePlanned, BlockWritten]
    assert events[0].blocks_kept == 0 and not lock_path(out / "s.zarr").exists()
    events.clear()
    resumed = run(on_event=events.append)
    assert resumed.status == "ok" and "resumed: 1 of " in resumed.message
    assert events[0].blocks_kept == 1 and len(events) > 2
    assert events[0].patches == sum(event.patches for event in events[1:]) == resumed.patches


def test_the_cluster_starts_while_the_first_slide_is_planned(slide, probe_model, tmp_path, monkeypatch):
    """``score_slides`` asks for its cluster once planning has begun: the first slide's heatmap is locked
    (planning's first step) while the cluster is being started."""
    from wsi_pipeline.scoring import api

    started = api.dask_client
    seen: list[bool] = []

    def dask_client(**kwargs):
        lock = lock_path(tmp_path / "out" / "s.zarr")
        deadline = time.monotonic() + 20
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(lock.exists())
        return started(**kwargs)

    monkeypatch.setattr(api, "dask_client", dask_client)
    results = score_slides([slide], probe_model, tmp_path / "out", options=OPTIONS, scheduler="threads")
    assert seen == [True] and [r.status for r in results] == ["ok"]


@pytest.mark.parametrize(("process_cores", "chosen"), [(8, "threads"), (2, "local")])
def test_auto_picks_threads_or_processes_from_the_work_planned(
    slide, probe_model, tmp_path, monkeypatch, caplog, process_cores, chosen
):
    """``auto`` counts the first slide's patches: with the thresholds lowered so that this slide
    is a large job (86 patches against 60), 2 workers get threads below 8 cores and processes from 2."""
    from wsi_pipeline.scoring import cluster

    monkeypatch.setattr(cluster, "AUTO_PROCESS_PATCHES", 60)
    monkeypatch.setattr(cluster, "AUTO_PROCESS_CORES", process_cores)
    with caplog.at_level(logging.INFO, logger="wsi_pipeline.scoring.api"):
        results = score_slides(
            [slide], probe_model, tmp_path, options=OPTIONS, n_workers=2, show_progress=False
        )
    assert [r.status for r in results] == ["ok"] and results[0].patches == 86
    assert f"scheduler auto: {chosen}" in caplog.text
    # threads need no plan: the patches are counted only where processes may be chosen
    assert ("scheduler auto: about 86 patch scores" in caplog.text) == (process_cores == 2)


def _loaded_models() -> list[str]:
    """The folders of the models this worker process holds loaded (run on a worker)."""
    from wsi_pipeline.scoring import worker

    return [
        entry.value.card.name for entry in worker._models.values() if entry.ready.is_set() and entry.value
    ]


@pytest.mark.slow
def test_worker_processes_load_the_models_as_they_start_before_any_block(probe_model):
    from wsi_pipeline.scoring.cluster import dask_client
    from wsi_pipeline.scoring.worker_plugins import PreloadModels

    (member,) = model_members(probe_model, OPTIONS)
    with dask_client(scheduler="local", n_workers=2) as client:
        client.register_plugin(PreloadModels((member.source,)))
        deadline = time.monotonic() + 60
        while (loaded := client.run(_loaded_models)) and time.monotonic() < deadline:
            if all(loaded.values()):
                break
            time.sleep(0.1)
    assert list(loaded.values()) == [[member.card.name]] * 2
