"""Model folders: a card plus weights, loaded safely onto a device and run on uint8 patches.

A model folder holds ``model.json`` (the card) and the weights file it names, or is a WSInfer model-zoo folder
(WSInfer's ``config.json`` with ``model.safetensors``, ``pytorch_model.bin`` and/or ``torchscript_model.pt``),
read as is. The card states the architecture, class names, output kind, input patch size, the µm/px the model
expects, the size the model takes the patch at, and normalisation.

Weights are safetensors or PyTorch state dicts (``.pt``/``.pth``/``.bin``/``.ckpt``) read with
``torch.load(weights_only=True)``, which unpickles nothing but tensors and plain containers: a file pickling
any other object is refused. TorchScript archives are loaded only when the card says ``"weights_format":
"torchscript"`` (or a WSInfer folder has no state dict for a known architecture), with a warning: TorchScript
runs code stored in the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import onnx_engine
from .augment import dihedral
from .checksum import file_sha256
from .cnn import CompactCNN
from .device import inference_context
from .errors import InputError

CARD_NAME = "model.json"
DEFAULT_MODEL = "synthetic-pcam-cnn"  # bundled in models/; trained on synthetic data only
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCAM_MPP = 0.972  # PCam patches: level 2 of Camelyon16 slides scanned at ~0.243 µm/px
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # torch.save'd state dicts, read weights-only
WEIGHTS_FORMATS = ("state_dict", "torchscript")
# WSInfer model-zoo folders (github.com/SBU-BMI/wsinfer-zoo, wsinfer_zoo/client.py and model-config schema)
WSINFER_CONFIG = "config.json"
WSINFER_STATE_DICTS = ("model.safetensors", "pytorch_model.bin")  # weights for the timm architecture named
WSINFER_TORCHSCRIPT = "torchscript_model.pt"
WSINFER_KEYS = ("num_classes", "class_names", "patch_size_pixels", "spacing_um_px", "transform")
WSINFER_TRANSFORMS = ("Resize", "ToTensor", "Normalize")
ENGINES = ("auto", "torch", "onnxruntime")
ONNX_TOLERANCE = 1e-3  # largest |Δ probability| between ONNX Runtime and torch that the load check accepts
CHECK_PATCHES = 8  # random patches of the load check
TIMING_PATCHES, TIMING_ROUNDS = 64, 5  # the engine race of ``auto`` (best of the rounds, alternating)


@dataclass
class ModelCard:
    """What a model is: enough to build it, feed it, and say honestly what it was trained on."""

    name: str
    architecture: str  # a timm name (or "timm:NAME"), "torchvision:NAME", "compact_cnn" or "centre_colour"
    class_names: list[str]
    output: str = "sigmoid"  # "sigmoid": one logit for the last class of two; "softmax": one per class
    patch_size: int = 96  # patch side cut from the slide, pixels at ``mpp``
    mpp: float = PCAM_MPP
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = "weights.safetensors"
    architecture_args: dict = field(default_factory=dict)
    description: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    license: str = ""
    input_size: int | None = None  # side the model takes the patch at (resized on the device); None = as cut
    weights_format: str = "state_dict"  # or "torchscript": the weights file is a TorchScript archive

    @property
    def n_outputs(self) -> int:
        return 1 if self.output == "sigmoid" else len(self.class_names)

    def validate(self) -> None:
        if self.output not in ("sigmoid", "softmax"):
            raise ValueError(f"output must be 'sigmoid' or 'softmax', not {self.output!r}")
        if self.output == "sigmoid" and len(self.class_names) != 2:
            raise ValueError("a sigmoid output needs exactly two class names")
        if self.patch_size <= 0 or self.mpp <= 0 or (self.input_size is not None and self.input_size <= 0):
            raise ValueError("patch_size, mpp and input_size must be positive")
        if self.weights_format not in WEIGHTS_FORMATS:
            raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, not {self.weights_format!r}")
        if self.weights_format == "state_dict":
            if Path(self.weights).suffix not in (".safetensors", *TORCH_SUFFIXES):
                suffixes = "/".join((".safetensors", *TORCH_SUFFIXES))
                raise ValueError(f"weights must be {suffixes}, not {self.weights}")
            module_factory(self.architecture)


class CentreColour(torch.nn.Module):
    """A linear function of the mean normalised colour of the patch's centre square.

    Transparent and deterministic: used to check geometry end to end and to measure pipeline I/O with a model
    that costs next to nothing.
    """

    def __init__(self, num_classes: int = 1, centre: int = 32) -> None:
        super().__init__()
        self.centre = centre
        self.linear = torch.nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left = (height - self.centre) // 2, (width - self.centre) // 2
        colour = x[..., top : top + self.centre, left : left + self.centre].mean(dim=(-2, -1))
        return self.linear(colour)


def module_factory(architecture: str) -> Callable[..., torch.nn.Module]:
    """The constructor of an architecture, called with ``num_classes`` and the card's ``architecture_args``;
    ValueError for an unknown one."""
    if architecture == "centre_colour":
        return CentreColour
    if architecture == "compact_cnn":
        return CompactCNN
    library, _, name = architecture.rpartition(":")
    if library in ("", "timm"):
        import timm

        if timm.is_model(name):
            return functools.partial(timm.create_model, name, pretrained=False)
    elif library == "torchvision":
        import torchvision

        if name in torchvision.models.list_models():
            return functools.partial(torchvision.models.get_model, name, weights=None)
    raise ValueError(
        f"unknown architecture {architecture!r} (a timm name, timm:NAME, torchvision:NAME, compact_cnn or "
        "centre_colour)"
    )


def build_module(card: ModelCard) -> torch.nn.Module:
    """An untrained module for the card's architecture."""
    return module_factory(card.architecture)(num_classes=card.n_outputs, **card.architecture_args)


def save_model(folder: str | Path, module: torch.nn.Module, card: ModelCard) -> Path:
    """Write a model folder (card + safetensors weights)."""
    card.validate()
    if card.weights_format != "state_dict" or Path(card.weights).suffix != ".safetensors":
        raise ValueError(
            f"save_model writes safetensors state dicts, not {card.weights_format} {card.weights}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(state, folder / card.weights)
    write_card(folder, card)
    return folder


def wsinfer_card(config: object, folder: Path) -> ModelCard:
    """A card for a WSInfer model-zoo folder from its ``config.json``: one output per class (softmax), or a
    sigmoid for a one-class model; the Resize transform gives ``input_size``. Prefers a state dict for a known
    architecture to the TorchScript archive."""
    missing = [key for key in WSINFER_KEYS if key not in config] if isinstance(config, dict) else WSINFER_KEYS
    if missing:
        raise ValueError(f"not WSInfer's config: no {', '.join(missing)}")
    arguments = {}
    for step in config["transform"]:
        if step["name"] not in WSINFER_TRANSFORMS:
            raise ValueError(f"unsupported transform {step['name']!r} (only {', '.join(WSINFER_TRANSFORMS)})")
        arguments[step["name"]] = step.get("arguments") or {}
    size = arguments.get("Resize", {}).get("size")
    sides = set(size) if isinstance(size, list) else {size}
    if len(sides) != 1:
        raise ValueError(f"Resize to a non-square size {size} is not supported")
    names = list(config["class_names"])
    if len(names) != config["num_classes"]:
        raise ValueError("class_names and num_classes differ")
    normalize = arguments.get("Normalize", {})
    architecture = config.get("architecture", "")
    state_dicts = [name for name in WSINFER_STATE_DICTS if (folder / name).is_file()]
    try:
        module_factory(architecture)
    except ValueError:
        state_dicts = []
    if not state_dicts and not (folder / WSINFER_TORCHSCRIPT).is_file():
        known = " or ".join(WSINFER_STATE_DICTS)
        raise ValueError(f"no weights: {known} for a known architecture, or {WSINFER_TORCHSCRIPT}")
    return ModelCard(
        name=folder.resolve().name,
        architecture=architecture,
        class_names=names if len(names) > 1 else [f"not {names[0]}", names[0]],
        output="softmax" if len(names) > 1 else "sigmoid",
        patch_size=config["patch_size_pixels"],
        mpp=config["spacing_um_px"],
        mean=tuple(normalize.get("mean", (0.0, 0.0, 0.0))),
        std=tuple(normalize.get("std", (1.0, 1.0, 1.0))),
        weights=state_dicts[0] if state_dicts else WSINFER_TORCHSCRIPT,
        weights_format="state_dict" if state_dicts else "torchscript",
        input_size=sides.pop(),
        description=f"WSInfer model-zoo folder, read as is from its {WSINFER_CONFIG}",
        training={"source": "WSInfer model zoo", "wsinfer_config": config},
    )


def read_card(folder: str | Path) -> ModelCard:
    """The card of a model folder (``model.json``, else WSInfer's ``config.json``), with a clear error naming
    what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder not found")
    path = folder / CARD_NAME
    if not path.is_file():
        path = folder / WSINFER_CONFIG
    if not path.is_file():
        raise InputError(folder, f"not a model folder (no {CARD_NAME}, nor WSInfer's {WSINFER_CONFIG})")
    kind = "model card" if path.name == CARD_NAME else "WSInfer model config"
    try:
        config = json.loads(path.read_text())
        card = ModelCard(**config) if path.name == CARD_NAME else wsinfer_card(config, folder)
        card.validate()
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as error:
        raise InputError(path, f"invalid {kind} ({error})") from None
    if not (folder / card.weights).is_file():
        raise InputError(folder / card.weights, f"weights file named by the {kind} is missing")
    return card


def _summary(error: Exception) -> str:
    """The first sentence of an error message, on one line."""
    return " ".join(str(error).split()).split(". ")[0][:200]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a weights-only PyTorch checkpoint: a state dict, possibly wrapped
    as ``{"state_dict": ...}`` or ``{"model": ...}``, with a DataParallel ``module.`` prefix removed."""
    if path.suffix == ".safetensors":
        try:
            state: object = load_file(path)
        except Exception as error:
            raise InputError(path, f"not a safetensors file ({_summary(error)})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            problem = (
                "refused: a weights-only load failed (it pickles objects other than tensors, or is corrupt)"
            )
            raise InputError(path, problem) from None
        except Exception as error:
            raise InputError(path, f"not a PyTorch weights file ({_summary(error)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(path, "not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_module(path: Path, card: ModelCard) -> torch.nn.Module:
    """The card's module with its weights, on the CPU. A TorchScript archive runs code stored in the file, so
    loading one warns."""
    if card.weights_format == "torchscript":
        warnings.warn(
            f"{path}: loading TorchScript, which runs code stored in the file; use only models you trust",
            UserWarning,
            stacklevel=3,
        )
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise InputError(path, f"not a TorchScript archive ({_summary(error)})") from None
    module = build_module(card)
    try:
        module.load_state_dict(read_state_dict(path))
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the card ({_summary(error)})") from None
    return module


class Model:
    """A loaded model on a device, scoring uint8 RGB patches in batches with one of ``ENGINES``.

    ``auto`` runs torch on CUDA (float16 autocast, channels_last). On the CPU it runs whichever of torch and
    ONNX Runtime scored a small batch faster, measured once per model and machine and cached
    (``onnx_engine``); ``onnxruntime`` asks for ONNX Runtime on the CPU. An ONNX Runtime session is used only
    after it gave the same probabilities as torch (within ``ONNX_TOLERANCE``) on random patches; when it does
    not, or ONNX Runtime is missing or the export fails, the model warns and runs torch. ``engine`` says which
    runs.

    The default is torch. Scoring runs choose once, in the client, with ``choose_engine`` and give every
    worker that choice: ``auto``'s race can differ between processes with different thread counts, and a
    heatmap must not depend on the scheduler.

    Loading a TorchScript model (``weights_format: torchscript``) warns: it runs code stored in the file.
    """

    def __init__(self, folder: str | Path, device: torch.device, engine: str = "torch") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if engine == "onnxruntime" and device.type != "cpu":
            raise ValueError(f"the onnxruntime engine runs on the CPU, not {device}")
        self.folder = resolve_model_folder(folder)
        self.card = read_card(self.folder)
        self.weights_path = self.folder / self.card.weights
        self.weights_sha256 = file_sha256(self.weights_path)
        self.device = device
        module = load_module(self.weights_path, self.card)
        self.module = module.eval().to(device, memory_format=torch.channels_last)
        # uint8 → normalised float in one multiply-add over the last (channel) axis of NHWC patches
        self._scale, self._shift = normalisation(self.card, device)
        self.engine = "torch"
        self._logits: Callable[[torch.Tensor], torch.Tensor] = self._torch_logits
        if device.type == "cpu" and engine != "torch":
            self._try_onnxruntime(measure=engine == "auto")

    def predict(self, patches: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, n_classes) float32 of uint8 patches (N, H, W, 3), resized (bilinear,
        antialiased) to the card's ``input_size`` when that differs from H × W; with ``tta``, the mean over
        the 8 flips and rotations of each patch (8× the compute)."""
        out = np.empty((len(patches), len(self.card.class_names)), np.float32)
        views = range(8) if tta else (0,)
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            x = self._inputs(batch)
            probs = sum(self._probabilities(dihedral(x, k)) for k in views) / len(views)
            out[start : start + len(batch)] = probs.cpu().numpy()
        return out

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._logits(x)
        if logits.shape[1:] != (self.card.n_outputs,):
            problem = f"the model gives outputs of shape {tuple(logits.shape[1:])}, not one per class"
            raise InputError(self.weights_path, problem)
        return probabilities(logits, self.card.output)

    @property
    def input_side(self) -> int:
        """Side of the square input the module takes."""
        return self.card.input_size or self.card.patch_size

    def _inputs(self, patches: np.ndarray) -> torch.Tensor:
        """Normalised float NCHW (a view of NHWC memory: channels_last) on the device, at ``input_side``."""
        batch = torch.from_numpy(np.ascontiguousarray(patches))
        x = batch.to(self.device, non_blocking=True).float().mul_(self._scale).add_(self._shift)
        x = x.permute(0, 3, 1, 2)
        side = self.input_side
        if x.shape[-2:] != (side, side):
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        return x

    def _torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        with inference_context(self.device):
            return self.module(x).float()

    def _random_inputs(self, n: int) -> torch.Tensor:
        side = self.card.patch_size
        return self._inputs(np.random.default_rng(0).integers(0, 256, (n, side, side, 3), np.uint8))

    def _try_onnxruntime(self, measure: bool) -> None:
        """Switch to an ONNX Runtime session that agrees with torch (and, when ``measure``, is the faster);
        warn and keep torch when there is none."""
        card, side, path = self.card, self.input_side, None
        try:
            identity = {
                "weights_sha256": self.weights_sha256,
                "architecture": card.architecture,
                "architecture_args": card.architecture_args,
                "weights_format": card.weights_format,
                "outputs": card.n_outputs,
                "side": side,
            }
            key = onnx_engine.export_key(identity)
            # one intra-op thread per Dask worker, as torch there (its workers set OMP_NUM_THREADS=1)
            threads = torch.get_num_threads()
            choice = onnx_engine.choice_path(key, threads)
            known = faster_engine(choice) if measure else "onnxruntime"
            if known == "torch":
                return
            data, path = onnx_engine.cached_export(self.module, (3, side, side), key)
            engine = onnx_engine.OnnxEngine(data, threads)
            x = self._random_inputs(CHECK_PATCHES)
            reference, result = (probabilities(run(x), card.output) for run in (self._torch_logits, engine))
            difference = float((reference - result).abs().max())
            if not difference <= ONNX_TOLERANCE:
                raise ValueError(
                    f"it differs from torch by up to {difference:.2g} (tolerance {ONNX_TOLERANCE:g})"
                )
        except Exception as error:  # not installed, export or session failed, or wrong numbers
            if path is not None:
                path.unlink(missing_ok=True)  # a fresh export next time
            message = f"{self.folder}: ONNX Runtime not used, scoring with torch ({type(error).__name__}: "
            warnings.warn(message + f"{_summary(error)})", UserWarning, stacklevel=3)
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
            onnx_engine.write_atomically(choice, json.dumps({**seconds, "patches": TIMING_PATCHES}).encode())
        return min(seconds, key=seconds.get)


def choose_engine(folder: str | Path, engine: str = "auto") -> str:
    """The CPU engine (torch or onnxruntime) a scoring run's workers are to use: ``engine`` unless it is
    ``auto``, which loads the model on the CPU with one torch thread (as each Dask worker has) and takes the
    engine it picks (measured once per model and machine, then cached). Runs on CUDA use torch regardless."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if engine != "auto":
        return engine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Model(folder, torch.device("cpu"), "auto").engine
    finally:
        torch.set_num_threads(threads)


def faster_engine(choice: Path) -> str | None:
    """The faster engine by the times stored in ``choice``; None when there are none."""
    try:
        seconds = json.loads(choice.read_text())
        return "onnxruntime" if seconds["onnxruntime"] < seconds["torch"] else "torch"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_metrics(folder: str | Path, key: str, entry: dict) -> None:
    """Store ``entry`` in a model folder's card under ``metrics[key]`` (the card is rewritten atomically)."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise InputError(folder, f"metrics can only be recorded in a {CARD_NAME} card")
    card = read_card(folder)
    card.metrics[key] = entry
    write_card(folder, card)


def write_card(folder: Path, card: ModelCard) -> None:
    """Write ``model.json`` atomically (a reader never sees half a card)."""
    partial = folder / f"{CARD_NAME}.partial"
    partial.write_text(json.dumps(asdict(card), indent=2) + "\n")
    partial.replace(folder / CARD_NAME)


def normalisation(card: ModelCard, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel that take uint8 values to the card's normalised input in one multiply-add:
    ``x · 1/(255 std) − mean/std``."""
    std = torch.tensor(card.std, device=device)
    return 1.0 / (255.0 * std), -torch.tensor(card.mean, device=device) / std


def probabilities(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Class probabilities (N, classes) from logits: one sigmoid logit for the last of two classes, else
    softmax."""
    if output == "sigmoid":
        positive = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def bundled_models_dir() -> Path:
    """Bundled model folders: ``wsi_pipeline/models`` in a wheel, else the checkout's ``models/``."""
    installed = Path(__file__).resolve().parent / "models"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "models"


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A model folder given by path, or by the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    bundled = bundled_models_dir() / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise InputError(path, "model folder not found (neither a folder nor a bundled model name)")
