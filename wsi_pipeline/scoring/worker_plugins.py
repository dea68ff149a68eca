"""What each worker does as it joins a run: route its logs as the client does, and load the models."""

from __future__ import annotations

import logging
import threading

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from wsi_pipeline.core.logs import LogRoute, Route
from wsi_pipeline.scoring.worker import ModelSource, worker_model

_log = logging.getLogger(__name__)


class RouteWorkerLogs(WorkerPlugin):
    """Installs, in each worker process of the local cluster or of SLURM's jobs, a ``LogRoute`` to the
    client's log file (its warnings and log records go there, not to the terminal it shares with the client
    or the job's output; there too with ``-v``). A worker that does not see the log's folder (a node without
    the client's file system) keeps its records in its job's output, and says so there. The route stays until
    the process ends: the warnings of tasks cancelled as the cluster closes come after the plugins'
    teardown."""

    def __init__(self, route: Route) -> None:
        self.route = route

    def setup(self, worker: Worker) -> None:
        if not self.route.path.parent.is_dir():
            _log.warning("%s is not visible here: this worker's log stays in its output", self.route.path)
            return
        LogRoute(self.route.path, verbose=self.route.verbose, prog=None).install()


class PreloadModels(WorkerPlugin):
    """Loads the run's models into each worker's cache (``worker.worker_model``) as soon as it joins, in a
    thread of its own, so the first blocks find them loaded or loading (they wait for the same load, never
    start another). A load that fails is left for the blocks to raise. The worker waits for the loads as it
    closes (a process must not end while a thread is inside torch or ONNX Runtime)."""

    name = "wsi-pipeline-preload-models"  # a later run's models replace these on a cluster that stays up

    def __init__(self, models: tuple[ModelSource, ...]) -> None:
        self.models = models
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        return {"models": self.models, "_thread": None}

    def setup(self, worker: Worker) -> None:
        self._thread = threading.Thread(target=self._load, name="wsi-preload", daemon=True)
        self._thread.start()

    def teardown(self, worker: Worker) -> None:
        if self._thread is not None:
            self._thread.join()

    def _load(self) -> None:
        for model in self.models:
            try:
                worker_model(model)
            except Exception as error:  # the blocks load it again and raise it, failing their slide
                _log.debug("preloading %s failed: %s", model.folder, error)
