"""An existing Dask cluster (``dask scheduler`` + two ``dask worker`` processes): the same heatmaps as the
in-process run, several slides together, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from wsi_pipeline import read_heatmap
from wsi_pipeline.cli.score import main
from wsi_pipeline.store.heatmap import HeatmapWriter

from .conftest import CLUSTER_BLOCK_CELLS

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class Cluster:
    address: str
    client: Client
    workers: list[subprocess.Popen]  # each the leader of its own process group (nanny and worker)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as file:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **WORKER_ENV},
        )


def _stop(process: subprocess.Popen) -> None:
    """End a process and its group: politely, then by force."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """A scheduler and two single-threaded workers on 127.0.0.1 (ports chosen by the OS), all ended after."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = [
        _start(
            [
                "distributed.cli.dask_scheduler",
                *("--host", "127.0.0.1", "--port", "0", "--no-dashboard"),
                *("--scheduler-file", str(scheduler_file)),
            ],
            tmp_path / "scheduler.log",
        )
    ]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not scheduler_file.is_file():
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            assert processes[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the scheduler a moment to listen
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            worker_args = [
                "distributed.cli.dask_worker",
                address,
                *("--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard"),
                *("--memory-limit", "0", "--death-timeout", "60"),
            ]
            processes.append(_start(worker_args, tmp_path / f"worker{i}.log"))
        with Client(address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT_S)
            yield Cluster(address, client, processes[1:])
    finally:
        for process in reversed(processes):
            _stop(process)


def wsi_score(cluster: Cluster, slides: list[Path], out: Path, probe_model: Path) -> int:
    args = [*map(str, slides), "-o", str(out), "--model", str(probe_model), "-q"]
    return main([*args, "--scheduler", cluster.address, "--block-cells", str(CLUSTER_BLOCK_CELLS)])


def test_existing_cluster_gives_the_in_process_heatmaps(
    tmp_path, cluster, cluster_slides, probe_model, cluster_references
):
    assert wsi_score(cluster, cluster_slides, tmp_path / "out", probe_model) == 0
    for slide in cluster_slides:
        heatmap = read_heatmap(tmp_path / "out" / f"{slide.stem}.zarr")
        assert heatmap.complete and heatmap.metadata.devices == ("cpu",)
        # every worker ran the engine the client chose (auto resolved once), as the in-process run did
        assert heatmap.metadata.engines == (heatmap.metadata.models[0].engine,)
        np.testing.assert_array_equal(heatmap.probabilities, cluster_references[slide.stem])

    def cached_models() -> list[str]:
        from wsi_pipeline.scoring.worker import _models

        return [weights for weights, *_ in _models]

    # both workers scored, each with one copy of the model, cached by its weights' hash
    weights = read_heatmap(tmp_path / "out" / "a.zarr").metadata.models[0].weights_sha256
    assert list(cluster.client.run(cached_models).values()) == [[weights], [weights]]


def test_a_worker_killed_mid_run_still_gives_complete_heatmaps(
    tmp_path, cluster, cluster_slides, probe_model, cluster_references, monkeypatch
):
    """Once a few blocks are written, the worker with the most blocks in hand is killed (SIGKILL, nanny too):
    the scheduler gives its blocks to the other worker, and the heatmaps come out whole and the same."""
    original, written, killed = HeatmapWriter.write_block, [], []
    pids = cluster.client.run(os.getpid)  # worker address → pid; each worker's group is its nanny's

    def write_then_kill(self, block, probabilities):
        original(self, block, probabilities)
        written.append(block)
        if len(written) >= 3 and not killed:  # the first write after the third at which a worker has blocks
            processing = cluster.client.processing()
            victim = max(pids, key=lambda address: len(processing.get(address, ())))
            if processing.get(victim):
                killed.append(len(processing[victim]))
                os.killpg(os.getpgid(pids[victim]), signal.SIGKILL)

    monkeypatch.setattr(HeatmapWriter, "write_block", write_then_kill)
    assert wsi_score(cluster, cluster_slides, tmp_path / "out", probe_model) == 0
    assert killed and killed[0] > 0  # the killed worker had blocks in hand
    assert len(cluster.client.nthreads()) == 1
    for slide in cluster_slides:
        heatmap = read_heatmap(tmp_path / "out" / f"{slide.stem}.zarr")
        assert heatmap.complete
        np.testing.assert_array_equal(heatmap.probabilities, cluster_references[slide.stem])
