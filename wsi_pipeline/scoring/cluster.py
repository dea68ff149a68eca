"""The Dask cluster a run scores on: local worker processes, in-process threads, or an existing cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask

from wsi_pipeline.scoring.options import SCHEDULERS_HELP

# One BLAS/OpenMP thread per Dask thread, as Dask sets by default, but without its MALLOC_TRIM_THRESHOLD_:
# fixing that threshold turns off glibc's adaptive mmap threshold, and torch's large per-batch buffers then
# cost a page-fault storm (measured: the model ran 25-45% slower inside workers).
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


@contextlib.contextmanager
def dask_client(*, scheduler: str = "local", n_workers: int | None = None) -> Iterator:
    """A ``distributed.Client`` to score on, closed (with the cluster it started) on leaving the context.

    Args:
        scheduler: ``local``, a local cluster of single-threaded worker processes; ``threads``, one
            in-process worker with threads; or the ``tcp://HOST:PORT`` address of an existing cluster.
        n_workers: the local cluster's worker processes, or the in-process worker's threads; None: one per
            core. An existing cluster keeps its own.

    Yields:
        The client.
    """
    from distributed import Client, LocalCluster

    workers = n_workers or os.cpu_count() or 1
    if scheduler == "local":
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    elif scheduler == "threads":
        with Client(
            processes=False, n_workers=1, threads_per_worker=workers, dashboard_address=":0"
        ) as client:
            yield client
    elif "://" in scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        raise ValueError(f"scheduler must be one of: {SCHEDULERS_HELP}; not {scheduler!r}")
