"""A loaded model scoring uint8 patches in batches, on torch or (CPU) ONNX Runtime, chosen by measurement.

ONNX Runtime's path needs no torch: a process that scores with a checked export never imports it."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_pipeline.core.errors import InputError, summarise_error
from wsi_pipeline.core.files import file_sha256, write_atomically
from wsi_pipeline.model import onnx as onnx_engine
from wsi_pipeline.model import quantize
from wsi_pipeline.model.bundled import resolve_model_folder
from wsi_pipeline.model.card import ENGINES, PRECISIONS, ModelCard
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.model.quantize import Agreement
from wsi_pipeline.model.tta import dihedral

if TYPE_CHECKING:
    import torch

    from wsi_pipeline.model.saliency import GradCam

    Inputs = np.ndarray | torch.Tensor  # normalised float NCHW: numpy for ONNX Runtime, a tensor for torch

ONNX_TOLERANCE = 1e-3  # largest |Δ probability| between ONNX Runtime and torch that the load check accepts
CHECK_PATCHES = 8  # random patches of the load check
TIMING_PATCHES, TIMING_ROUNDS = 64, 5  # the engine race of ``auto`` (best of the rounds, alternating)
MIN_CALIBRATION_PATCHES = 12  # fewer calibrate int8 too poorly to trust


class Model:
    """A loaded model on a device, scoring uint8 RGB patches in batches with one of ``ENGINES``.

    ``auto`` runs torch on CUDA (float16 autocast, channels_last). On the CPU it runs whichever of torch and
    ONNX Runtime scored a small batch faster, measured once per model and machine and cached
    (``onnx_engine``); ``onnxruntime`` asks for ONNX Runtime on the CPU. An ONNX Runtime export is used only
    after it gave the same probabilities as torch (within ``ONNX_TOLERANCE``) on random patches, checked once
    when exported and recorded in the cache (later loads of a checked export do not load the torch module
    until something needs it); when it does not, or ONNX Runtime is missing or the export fails, the model
    warns and runs torch. ``engine`` says which runs.

    The default is torch. Scoring runs choose once, in the client, with ``choose_engine`` and give every
    worker that choice: ``auto``'s race can differ between processes with different thread counts, and a
    heatmap must not depend on the scheduler.

    ``precision="int8"`` (CPU) runs ONNX Runtime on the model quantized by ``quantize`` with ``calibration``:
    uint8 patches (N, H, W, 3) of the tissue to be scored, of which a third is held out to check that int8
    agrees with float32 (``quantize.MAX_DIFFERENCE``, ``MEAN_DIFFERENCE``); the int8 model and its agreement
    are cached under the patches' sha256. When it does not agree, or anything fails, the model warns and runs
    float32 with ``engine``. ``calibration`` may instead be that sha256 (workers get it from the client that
    calibrated): the cached model is then used as it is, and its absence is an error. ``precision`` says
    which runs, ``calibration_sha256`` what int8 was calibrated on.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (or a ``torch.device``); ``Model.device`` is its name.
    ``threads``: the intra-op threads of its ONNX Runtime sessions (None: ONNX Runtime's default, one per
    physical core); scoring workers give one, each of their threads being one core.

    Loading a TorchScript model (``weights_format: torchscript``) warns: it runs code stored in the file.
    """

    def __init__(
        self,
        folder: str | Path,
        device: str | torch.device = "cpu",
        engine: str = "torch",
        precision: str = "float32",
        calibration: np.ndarray | str | None = None,
        threads: int | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.device = str(device)
        on_cpu = self.device_type == "cpu"
        if engine == "onnxruntime" and not on_cpu:
            raise ValueError(f"the onnxruntime engine runs on the CPU, not {device}")
        if precision == "int8" and not on_cpu:
            raise ValueError(f"int8 runs on the CPU, not {device}")
        if precision == "int8" and calibration is None:
            raise ValueError("int8 needs calibration patches (or the sha256 of cached ones)")
        self.folder = resolve_model_folder(folder)
        self.card = read_card(self.folder)
        self.weights_path = self.folder / self.card.weights
        self.weights_sha256 = file_sha256(self.weights_path)
        self.threads = threads or 0  # of its ONNX Runtime sessions (0: ONNX Runtime's default)
        # uint8 → normalised float in one multiply-add per channel (``normalisation``)
        self._scale, self._shift = normalisation(self.card)
        self.engine, self.precision = "torch", "float32"
        self.calibration_sha256: str | None = None
        self._logits: Callable[[Inputs], np.ndarray] = self._torch_logits
        if precision == "int8":
            self._try_int8(calibration)
        if on_cpu and engine != "torch" and self.precision == "float32":
            self._try_onnxruntime(measure=engine == "auto")
        if self.engine == "torch":
            _ = self.module  # loaded now: a model torch runs fails here, not at its first batch

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``."""
        return self.device.split(":")[0]

    @functools.cached_property
    def module(self) -> torch.nn.Module:
        """The torch module on the device, loaded on first use (a checked ONNX export runs without it)."""
        import torch

        from wsi_pipeline.model.weights import load_module

        module = load_module(self.weights_path, self.card)
        return module.eval().to(self.device, memory_format=torch.channels_last)

    def predict(
        self, patches: np.ndarray | torch.Tensor, batch_size: int = 256, tta: bool = False
    ) -> np.ndarray:
        """Class probabilities (N, n_classes) float32 of uint8 patches (N, H, W, 3) (a tensor in pinned memory
        is copied to a CUDA device asynchronously), resized (bilinear,
        antialiased) to the card's ``input_size`` when that differs from H × W; with ``tta``, the mean over
        the 8 flips and rotations of each patch (8× the compute)."""
        out = np.empty((len(patches), len(self.card.class_names)), np.float32)
        views = range(8) if tta else (0,)
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            x = self._inputs(batch, tensor=self.engine == "torch")
            probs = sum(self._probabilities(dihedral(x, k)) for k in views)
            out[start : start + len(batch)] = probs / len(views)
        return out

    def explain(self, patches: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Grad-CAM saliency of the tumour class (``core.classes.tumour_class_index``) for uint8 patches
        (N, H, W, 3): float32 maps (N, H, W) in [0, 1] at patch resolution, each scaled to its maximum
        (``model.saliency``). Runs the torch module whatever the engine. Raises ``SaliencyUnavailableError``
        for a model without a convolutional stage (the ``centre_colour`` probe, TorchScript, transformers)."""
        grad_cam = self._grad_cam
        maps = np.empty(patches.shape[:3], np.float32)
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            maps[start : start + len(batch)] = grad_cam(self._inputs(batch, tensor=True), batch.shape[1:3])
        return maps

    @functools.cached_property
    def _grad_cam(self) -> GradCam:
        from wsi_pipeline.model.saliency import GradCam

        return GradCam(self.module, self.card, self.input_side)

    def _probabilities(self, x: Inputs) -> np.ndarray:
        logits = self._logits(x)
        if logits.shape[1:] != (self.card.n_outputs,):
            problem = f"the model gives outputs of shape {tuple(logits.shape[1:])}, not one per class"
            raise InputError(self.weights_path, problem)
        return probabilities(logits, self.card.output)

    @property
    def input_side(self) -> int:
        """Side of the square input the module takes."""
        return self.card.input_size or self.card.patch_size

    def _inputs(self, patches: np.ndarray | torch.Tensor, *, tensor: bool) -> Inputs:
        """Normalised float NCHW at ``input_side``: a tensor on the device, a view of NHWC memory
        (channels_last), when ``tensor`` (torch's engine) or the patches are one; else a C-contiguous numpy
        array (as ONNX Runtime takes it), made without torch unless the patches are resized."""
        side = self.input_side
        if not tensor and isinstance(patches, np.ndarray) and patches.shape[1:3] == (side, side):
            x = patches.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # NCHW while uint8: faster
            x *= self._scale[:, None, None]
            x += self._shift[:, None, None]
            return x
        import torch

        batch = (
            patches if isinstance(patches, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(patches))
        )
        scale, shift = self._torch_normalisation
        x = batch.to(self.device, non_blocking=True).float().mul_(scale).add_(shift).permute(0, 3, 1, 2)
        if x.shape[-2:] != (side, side):
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        return x if tensor else x.numpy()

    @functools.cached_property
    def _torch_normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        return torch.from_numpy(self._scale).to(self.device), torch.from_numpy(self._shift).to(self.device)

    def _torch_logits(self, x: Inputs) -> np.ndarray:
        import torch

        from wsi_pipeline.model.device import inference_context

        with inference_context(self.device_type):
            x = torch.as_tensor(x, device=self.device).contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu().numpy()

    def _random_inputs(self, n: int) -> np.ndarray:
        side = self.card.patch_size
        patches = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), np.uint8)
        return self._inputs(patches, tensor=False)

    def _export_key(self) -> str:
        return export_key(self.card, self.weights_sha256)

    def _try_int8(self, calibration: np.ndarray | str) -> None:
        """Switch to the int8 model calibrated on ``calibration`` when it agrees with float32; warn and keep
        float32 when it does not, or when calibrating fails. A cached model named by its patches' sha256 that
        is missing or disagrees is an error."""
        named = isinstance(calibration, str)
        sha256 = calibration if named else quantize.calibration_sha256(calibration)
        try:
            export_key = self._export_key()
            path = quantize.int8_path(export_key, sha256)
            found = quantize.cached_int8(path)
            if found is None and named:
                raise FileNotFoundError(f"no int8 model calibrated on {sha256[:12]}… in {path.parent}")
            model, agreement = found or self._calibrate(calibration, export_key, path)
            if not agreement.acceptable:
                raise ValueError(f"int8 differs from float32: {agreement}")
            engine = onnx_engine.OnnxEngine(model, self.threads)
        except Exception as error:  # not installed, quantization failed, or wrong numbers
            if named:
                raise RuntimeError(f"{self.folder}: no int8 model ({summarise_error(error)})") from error
            message = f"{self.folder}: int8 not used, scoring in float32 ({type(error).__name__}: "
            warnings.warn(message + f"{summarise_error(error)})", UserWarning, stacklevel=3)
            return
        self.engine, self.precision, self._logits = "onnxruntime", "int8", engine
        self.calibration_sha256 = sha256

    def _calibrate(self, patches: np.ndarray, export_key: str, path: Path) -> tuple[bytes, Agreement]:
        """The int8 model calibrated on the first patches and its agreement with float32 (torch) on the rest
        (held out), cached at ``path``."""
        if len(patches) < MIN_CALIBRATION_PATCHES:
            raise ValueError(f"{len(patches)} calibration patches, fewer than {MIN_CALIBRATION_PATCHES}")
        x = self._inputs(patches, tensor=False)
        fit = quantize.held_out_split(len(x))
        side = self.input_side
        float_model, _ = onnx_engine.cached_export(self.module, (3, side, side), export_key)
        model = quantize.quantize(float_model, np.ascontiguousarray(x[:fit]))
        int8 = onnx_engine.OnnxEngine(model, self.threads)
        agreement = Agreement.of(
            *(probabilities(run(x[fit:]), self.card.output) for run in (self._torch_logits, int8))
        )
        with contextlib.suppress(OSError):
            quantize.store_int8(path, model, agreement)
        return model, agreement

    def _try_onnxruntime(self, measure: bool) -> None:
        """Switch to an ONNX Runtime session that agrees with torch (and, when ``measure``, is the faster);
        warn and keep torch when there is none."""
        card, side, path = self.card, self.input_side, None
        try:
            key = self._export_key()
            choice = onnx_engine.choice_path(key, self.threads)
            known = faster_engine(choice) if measure else "onnxruntime"
            if known == "torch":
                return
            checked = onnx_engine.checked_export(key)  # matched torch when it was made
            data, path = checked or onnx_engine.cached_export(self.module, (3, side, side), key)
            engine = onnx_engine.OnnxEngine(data, self.threads)
            if checked is None:
                x = self._random_inputs(CHECK_PATCHES)
                reference, result = (
                    probabilities(run(x), card.output) for run in (self._torch_logits, engine)
                )
                difference = float(np.abs(reference - result).max())
                if not difference <= ONNX_TOLERANCE:
                    raise ValueError(
                        f"it differs from torch by up to {difference:.2g} (tolerance {ONNX_TOLERANCE:g})"
                    )
                onnx_engine.mark_checked(path, difference)
        except InputError:  # the weights cannot be loaded at all: no engine can run them
            raise
        except Exception as error:  # not installed, export or session failed, or wrong numbers
            if path is not None:
                onnx_engine.forget_export(path)  # a fresh export next time
            message = f"{self.folder}: ONNX Runtime not used, scoring with torch ({type(error).__name__}: "
            warnings.warn(message + f"{summarise_error(error)})", UserWarning, stacklevel=3)
            return
        if (known or self._race(engine, choice)) == "onnxruntime":
            self.engine, self._logits = "onnxruntime", engine

    def _race(self, engine: onnx_engine.OnnxEngine, choice: Path) -> str:
        """The engine that scores ``TIMING_PATCHES`` faster (best of ``TIMING_ROUNDS``, alternating), with the
        times stored in ``choice``."""
        runs = {"torch": self._torch_logits, "onnxruntime": engine}
        x = self._random_inputs(TIMING_PATCHES)
        seconds = dict.fromkeys(runs, math.inf)
        for run in runs.values():
            run(x)  # first-call overheads
        for _ in range(TIMING_ROUNDS):
            for name, run in runs.items():
                start = time.perf_counter()
                run(x)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
        with contextlib.suppress(OSError):
            choice.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(choice, json.dumps({**seconds, "patches": TIMING_PATCHES}))
        return min(seconds, key=seconds.get)


def choose_engine(folder: str | Path, engine: str = "auto", *, weights_sha256: str | None = None) -> str:
    """The CPU engine (torch or onnxruntime) a scoring run's workers are to use: ``engine`` unless it is
    ``auto``: the engine measured faster with one thread (as each Dask worker has) when this model was raced
    on this machine before, else the one the model picks when loaded on the CPU with one torch thread (and
    cached). Runs on CUDA use torch regardless. ``weights_sha256``: the weights' hash when the caller has
    it (else the weights are hashed here)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if engine != "auto":
        return engine
    folder = resolve_model_folder(folder)
    card = read_card(folder)
    with contextlib.suppress(ImportError):  # without ONNX Runtime the model warns and runs torch
        key = export_key(card, weights_sha256 or file_sha256(folder / card.weights))
        known = faster_engine(onnx_engine.choice_path(key, 1))
        if known is not None:  # measured before: no need to load the model
            return known
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Model(folder, "cpu", "auto", threads=1).engine
    finally:
        torch.set_num_threads(threads)


def export_key(card: ModelCard, weights_sha256: str) -> str:
    """The cache key of a model's ONNX export (and of its engine race and int8 models)."""
    identity = {
        "weights_sha256": weights_sha256,
        "architecture": card.architecture,
        "architecture_args": card.architecture_args,
        "weights_format": card.weights_format,
        "outputs": card.n_outputs,
        "side": card.input_size or card.patch_size,
    }
    return onnx_engine.export_key(identity)


def choose_int8(folder: str | Path, calibration: np.ndarray) -> str | None:
    """The sha256 of ``calibration`` when the model's int8 calibrated on it agrees with float32 (calibrated,
    checked and cached here, on the CPU, for workers to load by that sha256); None, after ``Model``'s warning,
    when a scoring run is to use float32."""
    return Model(folder, "cpu", "torch", "int8", calibration).calibration_sha256


def faster_engine(choice: Path) -> str | None:
    """The faster engine by the times stored in ``choice``; None when there are none."""
    try:
        seconds = json.loads(choice.read_text())
        return "onnxruntime" if seconds["onnxruntime"] < seconds["torch"] else "torch"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def normalisation(card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, shift) per channel that take uint8 values to the card's normalised input in one
    multiply-add: ``x · 1/(255 std) − mean/std``."""
    std = np.asarray(card.std, np.float32)
    return np.float32(1.0) / (np.float32(255.0) * std), -np.asarray(card.mean, np.float32) / std


def probabilities(logits: np.ndarray, output: str) -> np.ndarray:
    """float32 class probabilities (N, classes) from logits: one sigmoid logit for the last of two classes,
    else softmax. Computed in float64 and rounded, so the same logits give the same probabilities whatever
    the machine's vector instructions."""
    logits = np.asarray(logits, np.float64)
    if output == "sigmoid":
        positive = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - positive, positive], axis=1).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
