"""The local cluster's worker processes route their warnings and log records as the client does
(``core.logs``): to the run's log file, not the terminal they share with it (there too with ``-v``)."""

from __future__ import annotations

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from wsi_pipeline.core.logs import LogRoute, Route


class RouteWorkerLogs(WorkerPlugin):
    """Installs, in each worker process, a ``LogRoute`` to the client's log file. It stays until the process
    ends: the warnings of tasks cancelled as the cluster closes come after the plugins' teardown."""

    def __init__(self, route: Route) -> None:
        self.route = route

    def setup(self, worker: Worker) -> None:
        LogRoute(self.route.path, verbose=self.route.verbose, prog=None).install()
