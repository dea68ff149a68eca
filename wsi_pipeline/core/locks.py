"""Exclusive lock files (``O_EXCL``) that record who holds them; stale locks of ended processes are
taken over."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from wsi_pipeline.core.errors import InputError


class LockedError(InputError):
    """Another run holds the lock of an output."""


def _read_holder(path: Path) -> dict | None:
    """Who holds a lock file: its record, ``{}`` when unreadable (being written), None when it is gone."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _gone(holder: dict) -> bool:
    """Whether the process named in a lock record has ended; only a process of this host can be checked."""
    if os.name != "posix" or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return False


def describe_holder(holder: dict) -> str:
    if not holder:
        return "an unknown run (unreadable lock file)"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


class FileLock:
    """An exclusive lock: the file ``path``, created only if absent (``O_EXCL``), holding who holds it (pid,
    host, time). A lock left by a process of this host that has ended is stale and taken over."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.took_over: dict | None = None  # the record of a stale lock taken over

    def acquire(self, wait_s: float = 0.0) -> FileLock:
        """Take the lock, waiting up to ``wait_s`` seconds for another holder; raises ``LockedError``."""
        deadline = time.monotonic() + wait_s
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(),
        }
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is None or (_gone(holder) and self._take_over(holder)):
                    continue
                if time.monotonic() >= deadline:
                    subject = self.path.with_suffix("")
                    raise LockedError(
                        subject,
                        f"locked by {describe_holder(holder)}: another run is writing it "
                        f"(if none is, delete {self.path})",
                    ) from None
                time.sleep(0.05)
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(record, file)
            return self

    def _take_over(self, holder: dict) -> bool:
        """Move a stale lock aside; if another run replaced it meanwhile, put that one back and say so."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            if _read_holder(aside) == holder:
                self.took_over = holder
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def lock_path(heatmap: str | Path) -> Path:
    """The lock file of a heatmap store: ``<stem>.zarr.lock`` beside it."""
    heatmap = Path(heatmap)
    return heatmap.with_name(heatmap.name + ".lock")
