"""The Dask cluster a run scores on: local worker processes, in-process threads, worker jobs on SLURM, or an
existing cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask

from wsi_pipeline.core.logs import adopt_library_loggers, current_route
from wsi_pipeline.scoring.slurm import SlurmOptions, slurm_cluster

# One BLAS/OpenMP thread per Dask thread, as Dask sets by default, but without its MALLOC_TRIM_THRESHOLD_:
# fixing that threshold turns off glibc's adaptive mmap threshold, and torch's large per-batch buffers then
# cost a page-fault storm (measured: the model ran 25-45% slower inside workers).
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}

# ``auto``: worker processes only where in-process threads would lose more to the GIL than the processes'
# start-up costs. On 2 cores threads were faster at every job size (71-3,670 patches); two threads scored
# 1.86-1.98x one thread's rate, i.e. ~1-4% of a patch's time holds the GIL. By Amdahl's law that share costs
# threads 10% or more of their rate from 5 cores, which outweighs the process cluster's few seconds of
# start-up from about 40,000 patches (resnet18, ~4 ms per patch per core). README: "Choosing the scheduler".
AUTO_PROCESS_CORES = 5
AUTO_PROCESS_PATCHES = 40_000


def choose_scheduler(patches: int, cores: int) -> str:
    """``auto``'s choice for about ``patches`` patch scores on ``cores`` cores: ``local`` (worker processes)
    for large jobs on many cores, else ``threads``."""
    return "local" if cores >= AUTO_PROCESS_CORES and patches >= AUTO_PROCESS_PATCHES else "threads"


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
            if (route := current_route()) is not None:
                from wsi_pipeline.scoring.worker_plugins import RouteWorkerLogs

                client.register_plugin(RouteWorkerLogs(route))
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
            yield client
    elif "://" in scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        known = "local, threads, slurm, tcp://HOST:PORT (auto is chosen by score_slides)"
        raise ValueError(f"scheduler must be one of: {known}; not {scheduler!r}")
