"""int8 on the CPU: a model's ONNX export quantized statically by ONNX Runtime, calibrated on tissue patches,
and trusted only when it agrees with float32 on patches held out from the calibration.

The recipe was chosen by measurement on AVX2 without VNNI (``benchmarks/bench_int8.py``): QDQ format (ONNX
Runtime fuses it into the same integer kernels as QOperator, at the same speed), uint8 activations with int8
weights (U8S8; U8U8 ran at 0.5–0.9× the speed, int8 activations 3× slower on resnet18), weights per output
channel (a third of the error of per-tensor weights, at the same speed), MinMax calibration (percentile and
entropy calibration were no closer), no reduced range (twice the error), and the float graph pre-processed
(shape inference and ONNX Runtime's optimizations; without it resnet18 ran at 0.2× the speed).

Quantized models are cached beside the float exports (``core.files.cache_dir()/int8``) under a key of the
float export's key, the calibration patches' sha256, the recipe and ONNX Runtime's version, each with its
agreement measured on the held-out patches, so a second load neither calibrates nor checks again."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wsi_pipeline.core.files import cache_dir, write_atomically

# int8 is used only when, on the held-out calibration patches, no probability moves more than MAX_DIFFERENCE
# from float32's and they move MEAN_DIFFERENCE on average (ResNets and the bundled model: max 0.009–0.037,
# mean 0.0001–0.005; calibrations on background or noise and int8-averse models: max ≥ 0.06, most ≥ 0.18).
MAX_DIFFERENCE, MEAN_DIFFERENCE = 0.05, 0.01
HELD_OUT = 1 / 3  # share of the calibration patches kept for the agreement check
BATCH = 32  # patches per calibration batch
RECIPE = {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": True, "method": "MinMax"}


def calibration_sha256(patches: np.ndarray) -> str:
    """sha256 of uint8 calibration patches (N, H, W, 3): their shape and bytes."""
    digest = hashlib.sha256(repr(patches.shape).encode())
    digest.update(np.ascontiguousarray(patches, np.uint8).tobytes())
    return digest.hexdigest()


def held_out_split(n: int) -> int:
    """How many of ``n`` calibration patches calibrate (the first ones); the rest are held out."""
    return n - max(1, round(n * HELD_OUT))


@dataclass(frozen=True)
class Agreement:
    """How far int8 probabilities are from float32's on held-out patches."""

    max: float  # largest |Δ probability| over patches and classes
    mean: float  # mean |Δ probability|
    patches: int

    @classmethod
    def of(cls, float32: np.ndarray, int8: np.ndarray) -> Agreement:
        """The agreement of two (N, classes) probability arrays."""
        difference = np.abs(np.asarray(float32, np.float64) - np.asarray(int8, np.float64))
        return cls(float(difference.max()), float(difference.mean()), len(difference))

    @property
    def acceptable(self) -> bool:
        return self.max <= MAX_DIFFERENCE and self.mean <= MEAN_DIFFERENCE

    def __str__(self) -> str:
        return (
            f"|Δp| up to {self.max:.3f}, mean {self.mean:.4f} on {self.patches} held-out patches (tolerance "
            f"{MAX_DIFFERENCE:g}, mean {MEAN_DIFFERENCE:g})"
        )


def int8_path(export_key: str, calibration: str) -> Path:
    """Where the int8 model of a float export calibrated on patches of sha256 ``calibration`` is cached."""
    import onnxruntime

    text = json.dumps([export_key, calibration, RECIPE, onnxruntime.__version__], sort_keys=True)
    return cache_dir() / "int8" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.onnx"


def cached_int8(path: Path) -> tuple[bytes, Agreement] | None:
    """A cached int8 model and its agreement; None when it is not (wholly) cached."""
    try:
        return path.read_bytes(), Agreement(**json.loads(path.with_suffix(".json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def store_int8(path: Path, model: bytes, agreement: Agreement) -> None:
    """Cache an int8 model with its agreement (the agreement last: its presence marks a whole entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, model)
    write_atomically(path.with_suffix(".json"), json.dumps(asdict(agreement)))


def quantize(float_model: bytes, inputs: np.ndarray) -> bytes:
    """The int8 model (``RECIPE``) of an ONNX model taking float NCHW ``input``, calibrated on ``inputs``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (
                {"input": np.ascontiguousarray(inputs[start : start + BATCH], np.float32)}
                for start in range(0, len(inputs), BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="wsi-int8-") as scratch:
        source, prepared, quantized = (Path(scratch) / name for name in ("float", "prepared", "int8"))
        source.write_bytes(float_model)
        quant_pre_process(source, prepared)
        quantize_static(
            prepared,
            quantized,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return quantized.read_bytes()
