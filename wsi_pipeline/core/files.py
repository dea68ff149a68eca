"""Files: content hashes, size/mtime stamps and atomic writes (a reader never sees half a file)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from wsi_pipeline.core.errors import OutputError

CACHE_ENV = "WSI_PIPELINE_CACHE"  # overrides the cache folder


def cache_dir() -> Path:
    """``$WSI_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/wsi_pipeline``, else ``~/.cache/wsi_pipeline``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsi_pipeline"


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path: str | Path) -> dict[str, int]:
    """A file's size and modification time (ns), recorded beside its sha256."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_atomically(path: str | Path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``path`` through a uniquely named temporary file beside it and a rename: a reader (or a crash, or
    another process writing the same file) sees the old file or a new one, never half of one. ``content`` is
    the bytes or text to write, or a function that writes the file it is given.

    >>> write_atomically("card.json", '{"name": "x"}\\n')  # doctest: +SKIP
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        elif isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        else:
            content(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def make_output_folder(folder: str | Path) -> Path:
    """Create a run's output folder (and its parents) if missing, and check that files can be written in it;
    an ``OutputError`` naming it and the problem otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{uuid.uuid4().hex[:12]}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise OutputError(folder, f"cannot write there ({error.strerror or error})") from None
    return folder
