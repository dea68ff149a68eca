"""Errors that name the file at fault and the problem, for one-line messages."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class InputError(Exception):
    """A user-supplied file (slide, model folder, output) cannot be used."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.problem))


class ClusterError(Exception):
    """The cluster asked for cannot be started: a command or package missing, its jobs refused."""


class SaliencyUnavailableError(Exception):
    """Grad-CAM cannot explain this model (the message, one line, says why)."""


class OutputError(InputError):
    """The output folder cannot take what a run writes: it cannot be made, is not writable, or is full."""


# What a write refused by the folder written to raises: full (or over quota), read-only, not writable, or a
# file where a folder should be.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
OUTPUT_KEPT = "slides finished are kept complete, and a run once it is fixed resumes the rest"


def output_fault(error: BaseException, folder: str | Path) -> OutputError | None:
    """``error`` as ``folder``'s ``OutputError`` when it is a write the folder refused (an ``OSError`` of
    those kinds, about a file in it if it names one); None for any other error."""
    if isinstance(error, OutputError):
        return error
    if not isinstance(error, OSError) or error.errno not in _OUTPUT_ERRNOS:
        return None
    folder = Path(folder).resolve()
    if error.filename is not None and not Path(os.fsdecode(error.filename)).resolve().is_relative_to(folder):
        return None
    return OutputError(folder, f"cannot write there ({os.strerror(error.errno)}); {OUTPUT_KEPT}")


@contextlib.contextmanager
def output_faults(folder: str | Path) -> Iterator[None]:
    """Raise an ``OSError`` that is ``folder``'s refusal of a write (``output_fault``) as its
    ``OutputError``."""
    try:
        yield
    except OSError as error:
        fault = output_fault(error, folder)
        if fault is None:
            raise
        raise fault from error


def summarise_error(error: Exception) -> str:
    """The first sentence of an error message, on one line."""
    return " ".join(str(error).split()).split(". ")[0][:200]
