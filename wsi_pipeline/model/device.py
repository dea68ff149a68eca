"""Choice of compute device at run time; CPU and CUDA share every code path but these few lines."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# the CUDA driver library, without which torch has no CUDA device (macOS: torch has no CUDA)
CUDA_DRIVER = {"win32": "nvcuda.dll", "darwin": None}.get(sys.platform, "libcuda.so.1")


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library loads here: when it does not, no CUDA device can be used, which is
    known without importing torch."""
    if CUDA_DRIVER is None:
        return False
    try:
        ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return False
    return True


def cuda_devices() -> list[str]:
    """The CUDA devices by name (``cuda:0``, …); none, known without importing torch, on a machine without a
    CUDA driver."""
    if not cuda_driver_present():
        return []
    import torch

    return [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def device_name(name: str = "auto") -> str:
    """``resolve_device``'s device by name (``cpu``, ``cuda``, ``cuda:N``); torch is imported only to
    ask it about CUDA on a machine with a CUDA driver."""
    if name == "cpu" or (name == "auto" and not cuda_driver_present()):
        return "cpu"
    return str(resolve_device(name))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when one is present, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if cuda_driver_present() and torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], not {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def inference_context(device_type: str) -> contextlib.AbstractContextManager:
    """No gradients; mixed precision (float16 autocast) on CUDA, full precision on the CPU."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(device_type, dtype=torch.float16, enabled=device_type == "cuda"))
    return stack
