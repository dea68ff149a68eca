"""Errors that name the file at fault and the problem, for one-line messages."""

from __future__ import annotations

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


def summarise_error(error: Exception) -> str:
    """The first sentence of an error message, on one line."""
    return " ".join(str(error).split()).split(". ")[0][:200]
