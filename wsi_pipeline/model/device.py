"""Choice of compute device at run time; CPU and CUDA share every code path but these few lines."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when one is present, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], not {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def inference_context(device: torch.device) -> contextlib.AbstractContextManager:
    """No gradients; mixed precision (float16 autocast) on CUDA, full precision on the CPU."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"))
    return stack
