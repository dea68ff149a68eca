"""Killed runs: wsi-score interrupted at random moments (SIGINT, SIGTERM or SIGKILL of the client), and a
local worker process killed mid-task; every run that follows ends in the heatmap of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline import ScoreOptions, dask_client, read_heatmap, score_slides
from wsi_pipeline.core.locks import lock_path
from wsi_pipeline.store.heatmap import HeatmapWriter

from .conftest import make_slide

pytestmark = pytest.mark.slow

KILL_BUDGET_S = 25.0  # of killed runs; with the reference and the last run, the test takes under a minute
KILLED_AFTER_S = (0.5, 6.0)  # from start-up through scoring, the pyramid and the reports
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    make_slide(path, 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return path


def wsi_score(slide: Path, out: Path, model: Path) -> subprocess.Popen:
    """wsi-score in a process of its own (one cell a block: many small steps to be killed between)."""
    args = [str(slide), "-o", str(out), "--model", str(model), "--block-cells", "1", "--scheduler", "threads"]
    command = [sys.executable, "-m", "wsi_pipeline.cli.score", *args, "-q"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_client_killed_at_random_moments_always_resumes_to_the_uninterrupted_heatmap(
    tmp_path, slide, probe_model
):
    reference_run = wsi_score(slide, tmp_path / "reference", probe_model)
    assert reference_run.wait(timeout=300) == 0, reference_run.stderr.read()
    reference = read_heatmap(tmp_path / "reference" / "s.zarr")
    store, rng, spent, kills = tmp_path / "out" / "s.zarr", random.Random(13), 0.0, []
    while spent < KILL_BUDGET_S:
        run, started = wsi_score(slide, store.parent, probe_model), time.monotonic()
        time.sleep(rng.uniform(*KILLED_AFTER_S))
        kill = rng.choice(SIGNALS)
        run.send_signal(kill)
        code = run.wait(timeout=120)
        spent += time.monotonic() - started
        kills.append((kill.name, code))
        stderr = run.stderr.read()
        assert "Traceback" not in stderr or kill == signal.SIGINT, stderr  # Ctrl-C in start-up: Python's
        if code in (130, 0) and kill != signal.SIGKILL:  # stopped cleanly (or done before the signal)
            assert not lock_path(store).exists()
        if store.exists():
            read_heatmap(store)  # whatever the moment, never a half-written store
    final = wsi_score(slide, store.parent, probe_model)
    assert final.wait(timeout=300) == 0, (kills, final.stderr.read())
    heatmap = read_heatmap(store)
    assert heatmap.complete and not lock_path(store).exists(), kills
    np.testing.assert_array_equal(heatmap.probabilities, reference.probabilities)
    np.testing.assert_array_equal(heatmap.labels, reference.labels)
    assert len(kills) >= 4 and {name for name, _ in kills} > {"SIGKILL"}, kills


def test_a_worker_process_killed_mid_task_is_replaced_and_the_heatmap_is_whole(
    tmp_path, slide, probe_model, client, monkeypatch
):
    """The local cluster's nanny starts a new worker process in place of one killed (SIGKILL) while it held
    blocks; the scheduler gives them to a worker again, and the heatmap is the in-process run's."""
    options = ScoreOptions(block_cells=1)
    (expected,) = score_slides([slide], probe_model, tmp_path / "threads", options=options, client=client)
    write_block, written = HeatmapWriter.write_block, []
    with dask_client(scheduler="local", n_workers=2) as local:
        pids = local.run(os.getpid)

        def write_then_kill(self: HeatmapWriter, *args: object) -> None:
            write_block(self, *args)
            written.append(args)
            if len(written) == 3:
                processing = local.processing()
                victim = max(pids, key=lambda address: len(processing.get(address, ())))
                os.kill(pids[victim], signal.SIGKILL)

        monkeypatch.setattr(HeatmapWriter, "write_block", write_then_kill)
        (result,) = score_slides([slide], probe_model, tmp_path / "local", options=options, client=local)
        local.wait_for_workers(2, timeout=60)
        replaced = set(local.run(os.getpid).values()) - set(pids.values())
    assert result.status == "ok" and len(replaced) == 1
    heatmap = read_heatmap(result.heatmap)
    assert heatmap.complete
    np.testing.assert_array_equal(heatmap.probabilities, read_heatmap(expected.heatmap).probabilities)
