"""The Dask cluster a run scores on: local worker processes, in-process threads, worker jobs on SLURM, or an
existing cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import dask

from wsi_pipeline.core.logs import adopt_library_loggers, current_route
from wsi_pipeline.scoring.slurm import SlurmOptions, slurm_cluster

if TYPE_CHECKING:
    from distributed import Client

# One BLAS/OpenMP thread per Dask thread, as Dask sets by default, but without its MALLOC_TRIM_THRESHOLD_:
# fixing that threshold turns off glibc's adaptive mmap threshold, and torch's large per-batch buffers then
# cost a page-fault storm (measured: the model ran 25-45% slower inside workers).
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}

# ``auto``: in-process threads unless many cores and a large job. Measured on 2 cores
# (benchmarks/bench_scheduler.py, CMU-1 tiled, warm, one intra-op thread per model call everywhere, two runs):
# two threads of one process scored 0.95-0.96x (bundled model) and 0.97-1.00x (resnet18) the patches per
# second of two worker processes, which, importing no torch, started 0.3-0.9 s later: processes win from about
# 15,000-33,000 patches of the bundled model (4% faster then), from 19,000 or never of resnet18. The GIL's
# share that the 0.96 implies would grow with the cores by Amdahl's law: on 8 they would leave threads at 0.78
# of processes, which would pay the processes' start-up from roughly 30,000 patches of the bundled model. Not
# measured on such a machine.
AUTO_PROCESS_CORES = 8
AUTO_PROCESS_PATCHES = 30_000


def choose_scheduler(cores: int, patches: Callable[[], int]) -> str:
    """``auto``'s choice on ``cores`` cores: ``local`` (worker processes) for a large job on many cores, else
    ``threads``; ``patches()``, the job's patch scores (which may wait for planning), is asked for only on
    ``AUTO_PROCESS_CORES`` cores or more."""
    if cores >= AUTO_PROCESS_CORES and patches() >= AUTO_PROCESS_PATCHES:
        return "local"
    return "threads"


@contextlib.contextmanager
def dask_client(
    *, scheduler: str = "local", n_workers: int | None = None, slurm: SlurmOptions | None = None
) -> Iterator:
    """A ``distributed.Client`` to score on, closed (with the cluster it started, and its jobs cancelled) on
    leaving the context.

    Args:
        scheduler: ``local``, a local cluster of single-threaded worker processes (logging as this process
            does, when a ``core.logs.LogRoute`` is installed); ``threads``, one
            in-process worker with threads; ``slurm``, worker jobs submitted to SLURM; or the
            ``tcp://HOST:PORT`` address of an existing cluster.
        n_workers: the local cluster's worker processes, or the in-process worker's threads; None: one per
            core. SLURM jobs and an existing cluster keep their own.
        slurm: the SLURM jobs (``scheduler="slurm"`` only); None: ``SlurmOptions()``.

    Raises:
        ValueError: an unknown scheduler, or SLURM options for another.
        ClusterError: SLURM cannot be used (see ``slurm_cluster``).

    Yields:
        The client.
    """
    from distributed import Client, LocalCluster

    adopt_library_loggers()  # distributed prints to the terminal by handlers it sets on import
    if slurm is not None and scheduler != "slurm":
        raise ValueError(f"SLURM options are for the slurm scheduler, not {scheduler!r}")
    workers = n_workers or os.cpu_count() or 1
    if scheduler == "local":
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            _route_worker_logs(client)
            yield client
    elif scheduler == "threads":
        with Client(
            processes=False, n_workers=1, threads_per_worker=workers, dashboard_address=":0"
        ) as client:
            yield client
    elif scheduler == "slurm":
        with (
            slurm_cluster(slurm or SlurmOptions(), environment=WORKER_ENVIRONMENT) as cluster,
            Client(cluster) as client,
        ):
            _route_worker_logs(client)
            yield client
    elif "://" in scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        known = "local, threads, slurm, tcp://HOST:PORT (auto is chosen by score_slides)"
        raise ValueError(f"scheduler must be one of: {known}; not {scheduler!r}")


def _route_worker_logs(client: Client) -> None:
    """Worker processes started for this client log where this process does (``RouteWorkerLogs``)."""
    if (route := current_route()) is not None:
        from wsi_pipeline.scoring.worker_plugins import RouteWorkerLogs

        client.register_plugin(RouteWorkerLogs(route))
