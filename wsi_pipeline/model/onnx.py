"""ONNX Runtime as a CPU engine: a model's torch module exported to ONNX once (cached), run in a session with
the process's thread budget.

Exports are kept in the user's cache folder (``cache_dir``) under a key made of the weights' sha256, what the
module is built from, and the exporter's versions; they are written atomically, so processes loading the same
model at once never see half a file. ``Model`` (predict.py) checks an export against torch before its first
use and records the check beside it (``mark_checked``); it keeps torch when the two differ or anything here
fails."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import io
import json
import os
import platform
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_pipeline.core.files import CACHE_ENV as CACHE_ENV  # where the tests set the cache folder
from wsi_pipeline.core.files import cache_dir, write_atomically

if TYPE_CHECKING:
    import torch

OPSET = 17


def export_key(identity: dict) -> str:
    """Cache key of an export: ``identity`` (weights sha256 and what builds the module) plus the versions of
    the exporter (torch, onnx: as installed, so neither is imported) and the opset."""
    versions = {name: importlib.metadata.version(name) for name in ("torch", "onnx")}
    versions["opset"] = OPSET
    text = json.dumps({**identity, **versions}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, int, int]) -> bytes:
    """The ONNX model of a CPU module taking float NCHW input of ``input_shape`` (C, H, W), any batch size,
    giving logits."""
    import torch

    example = torch.zeros((2, *input_shape))
    buffer = io.BytesIO()
    # the TorchScript-based exporter: the only one before torch 2.5, and an option (dynamo=False) since
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            module,
            (example,),
            buffer,
            **legacy,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


def cached_export(module: torch.nn.Module, input_shape: tuple[int, int, int], key: str) -> tuple[bytes, Path]:
    """The export of ``module`` from the cache, made (and stored, when the cache folder is writable) on a
    miss; and the cache file's path."""
    path = cache_dir() / "onnx" / f"{key}.onnx"
    if path.is_file():
        return path.read_bytes(), path
    data = export_onnx(module, input_shape)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as error:
        warnings.warn(f"cannot cache the ONNX export in {path.parent} ({error})", UserWarning, stacklevel=2)
    return data, path


def checked_export(key: str) -> tuple[bytes, Path] | None:
    """A cached export that matched torch when it was made (``mark_checked``) and its path; None if none."""
    path = cache_dir() / "onnx" / f"{key}.onnx"
    if not (path.is_file() and _checked_path(path).is_file()):
        return None
    return path.read_bytes(), path


def mark_checked(path: Path, difference: float) -> None:
    """Record that the export at ``path`` gave torch's probabilities within ``difference`` (if the cache is
    writable), so later loads use it without loading the torch module."""
    with contextlib.suppress(OSError):
        write_atomically(_checked_path(path), json.dumps({"max_difference": difference}))


def forget_export(path: Path) -> None:
    """Remove a cached export and its check, so the next load exports afresh."""
    path.unlink(missing_ok=True)
    _checked_path(path).unlink(missing_ok=True)


def _checked_path(path: Path) -> Path:
    return path.with_suffix(".checked.json")


class OnnxEngine:
    """An ONNX Runtime CPU session computing logits from normalised float NCHW input."""

    def __init__(self, model: bytes, threads: int) -> None:
        """``threads``: intra-op threads (0: ONNX Runtime's default)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.threads = threads

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (N, outputs) of a CPU batch."""
        (logits,) = self.session.run(None, {"input": np.ascontiguousarray(x)})
        return logits


def choice_path(key: str, threads: int) -> Path:
    """Where the measured engine choice for an export is kept: per ONNX Runtime version, thread count and
    machine."""
    import onnxruntime

    machine = f"{platform.machine()}-{os.cpu_count()}cpu"
    return cache_dir() / "engine" / f"{key}-ort{onnxruntime.__version__}-{machine}-{threads}t.json"
