"""A command's log: Python warnings, every logger's records (libraries' included) and full tracebacks of
failures go to a log file, appended per run; the terminal keeps only the package's own warnings and errors
(everything, live, when verbose).

The file is opened once its folder exists (a run makes its output folder only once its model is known good):
records before then wait in memory. Libraries that print to stderr through handlers of their own (Dask's
``distributed``, ``tornado``, ``bokeh``) have them taken over by ``adopt_library_loggers``, which the cluster
calls once Dask is imported; worker processes route theirs with a ``LogRoute`` of their own."""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

PACKAGE_DIR = Path(__file__).resolve().parent.parent
FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s"
FILE_ONLY = {"file_only": True}  # ``extra=`` of a record that belongs in the log file, not on the terminal
VERSIONS = (  # the package and the libraries whose behaviour a log may need to explain
    "wsi_pipeline",
    "torch",
    "dask",
    "distributed",
    "zarr",
    "openslide-python",
    "openslide-bin",
    "tiffslide",
)
_WARNING = re.compile(r"^(?P<file>.*?):\d+: (?P<category>\w+): (?P<message>.*?)(\n  .*)?\n?$", re.DOTALL)


@dataclass(frozen=True)
class Route:
    """Where this process's logs go: the log file, and whether everything is shown on the terminal too."""

    path: Path
    verbose: bool


def current_route() -> Route | None:
    """The route of this process's logs while a ``LogRoute`` is installed, else None."""
    return None if _installed is None else _installed.route


def versions() -> str:
    """The installed versions of the package and the libraries whose behaviour a log may need to explain."""
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def run_header(argv: list[str]) -> str:
    """The line a run starts its part of the log with: its command line, the time and the versions."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"=== {' '.join(argv)} | {started} | {versions()}"


class _FileWhenReady(logging.Handler):
    """Appends records to a file once its folder exists, holding them until then; writing never fails a run
    (a full disk loses log lines, not results)."""

    def __init__(self, path: Path, header: str | None) -> None:
        super().__init__(logging.INFO)
        self.path, self.header = path, header
        self.setFormatter(logging.Formatter(FORMAT))
        self._file: TextIO | None = None
        self._waiting: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._waiting.append(record)
            if not self.path.parent.is_dir():
                return
            self._file = self.path.open("a", encoding="utf-8")
            if self.header:
                self._file.write(self.header + "\n")
            records, self._waiting = self._waiting, []
        else:
            records = [record]
        try:
            self._file.write("".join(self.format(each) + "\n" for each in records))
            self._file.flush()
        except (OSError, ValueError):
            pass

    @property
    def opened(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class _Terminal(logging.Handler):
    """stderr: the package's own warnings and errors as ``PROG: warning: ...`` (none without ``prog``), or,
    when verbose, every record as logged."""

    def __init__(self, prog: str | None, verbose: bool) -> None:
        super().__init__(logging.WARNING)
        self.prog, self.verbose = prog, verbose
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if self.verbose:
            text = self.format(record)
        elif self.prog is None or getattr(record, "file_only", False):
            return
        elif record.name == "py.warnings":  # "FILE:LINE: Category: message\n  source line"
            found = _WARNING.match(record.getMessage())
            if found is None or not found["file"].startswith(str(PACKAGE_DIR)):
                return
            text = f"{self.prog}: warning: {found['message']}"
        elif record.name.split(".")[0] == "wsi_pipeline":
            text = f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"
        else:
            return
        print(text, file=sys.stderr, flush=True)


class LogRoute:
    """Routes this process's Python warnings and log records to ``path`` (appended; ``header`` first) and the
    terminal (``_Terminal``), until ``remove``.

    Args:
        path: the log file; its folder may not exist yet (records wait for it).
        verbose: show every warning and record live on the terminal as well.
        prog: the command's name, for the terminal's lines; None: none (a worker process's: the client says
            what matters).
        header: the line the file gets before this run's records (``run_header``); None: none.
    """

    def __init__(self, path: Path, *, verbose: bool, prog: str | None, header: str | None = None) -> None:
        self.route = Route(Path(path), verbose)
        self.file = _FileWhenReady(self.route.path, header)
        self.terminal = _Terminal(prog, verbose)
        self._undo: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self._root_level = logging.INFO

    def install(self) -> LogRoute:
        global _installed
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self.file)
        root.addHandler(self.terminal)
        logging.captureWarnings(True)
        _installed = self
        adopt_library_loggers()
        return self

    def log_failure(self, message: str, error: BaseException) -> bool:
        """Log an error with its traceback (to the file; the terminal too when verbose); whether the file
        holds it."""
        logging.getLogger("wsi_pipeline").error(message, exc_info=error, extra=FILE_ONLY)
        return self.file.opened

    def remove(self) -> None:
        global _installed
        with _adopting:
            for logger, handlers, propagate in self._undo:
                logger.handlers[:] = handlers
                logger.propagate = propagate
            self._undo.clear()
        root = logging.getLogger()
        root.removeHandler(self.file)
        root.removeHandler(self.terminal)
        root.setLevel(self._root_level)
        logging.captureWarnings(False)
        self.file.close()
        _installed = None

    def adopt(self, logger: logging.Logger) -> None:
        """Take over a logger that prints to the terminal by handlers of its own: its records go to the root
        logger's handlers (this route's) instead."""
        printing = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        if printing and not any(undo[0] is logger for undo in self._undo):
            self._undo.append((logger, list(logger.handlers), logger.propagate))
            logger.handlers[:] = [h for h in logger.handlers if h not in printing]
            logger.propagate = True


_installed: LogRoute | None = None
_adopting = threading.Lock()


def adopt_library_loggers() -> None:
    """Let the installed route take over the loggers that print to the terminal by their own handlers (call
    again once a library that sets such handlers on import, like Dask's distributed, is imported)."""
    if _installed is None:
        return
    with _adopting:
        for name in list(logging.root.manager.loggerDict):
            _installed.adopt(logging.getLogger(name))
