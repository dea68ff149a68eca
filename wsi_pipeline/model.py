"""Model folders: a JSON card plus safetensors weights, loaded safely onto a device and run on uint8 patches.

A model folder holds ``model.json`` (the card) and the weights file it names. The card states the
architecture, class names, output kind, input patch size, the µm/px the model expects, and normalisation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .checksum import file_sha256
from .cnn import CompactCNN
from .device import inference_context
from .errors import InputError

CARD_NAME = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCAM_MPP = 0.972  # PCam patches: level 2 of Camelyon16 slides scanned at ~0.243 µm/px


@dataclass
class ModelCard:
    """What a model is: enough to build it, feed it, and say honestly what it was trained on."""

    name: str
    architecture: str  # a timm model name, "compact_cnn" or "centre_colour"
    class_names: list[str]
    output: str = "sigmoid"  # "sigmoid": one logit for the last class of two; "softmax": one per class
    patch_size: int = 96
    mpp: float = PCAM_MPP
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = "weights.safetensors"
    architecture_args: dict = field(default_factory=dict)
    description: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    license: str = ""

    @property
    def n_outputs(self) -> int:
        return 1 if self.output == "sigmoid" else len(self.class_names)

    def validate(self) -> None:
        if self.output not in ("sigmoid", "softmax"):
            raise ValueError(f"output must be 'sigmoid' or 'softmax', not {self.output!r}")
        if self.output == "sigmoid" and len(self.class_names) != 2:
            raise ValueError("a sigmoid output needs exactly two class names")
        if self.patch_size <= 0 or self.mpp <= 0:
            raise ValueError("patch_size and mpp must be positive")


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


def build_module(card: ModelCard) -> torch.nn.Module:
    """An untrained module for the card's architecture."""
    if card.architecture == "centre_colour":
        return CentreColour(card.n_outputs, **card.architecture_args)
    if card.architecture == "compact_cnn":
        return CompactCNN(card.n_outputs, **card.architecture_args)
    import timm

    return timm.create_model(
        card.architecture, pretrained=False, num_classes=card.n_outputs, **card.architecture_args
    )


def save_model(folder: str | Path, module: torch.nn.Module, card: ModelCard) -> Path:
    """Write a model folder (card + safetensors weights)."""
    card.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(state, folder / card.weights)
    (folder / CARD_NAME).write_text(json.dumps(asdict(card), indent=2) + "\n")
    return folder


def read_card(folder: str | Path) -> ModelCard:
    """The card of a model folder, with a clear error naming what is wrong."""
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not folder.is_dir():
        raise InputError(folder, "model folder not found")
    if not card_path.is_file():
        raise InputError(folder, f"not a model folder (no {CARD_NAME})")
    try:
        card = ModelCard(**json.loads(card_path.read_text()))
        card.validate()
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise InputError(card_path, f"invalid model card ({error})") from None
    if not (folder / card.weights).is_file():
        raise InputError(folder / card.weights, "weights file named by the model card is missing")
    return card


class Model:
    """A loaded model on a device, scoring uint8 RGB patches in batches."""

    def __init__(self, folder: str | Path, device: torch.device) -> None:
        self.folder = resolve_model_folder(folder)
        self.card = read_card(self.folder)
        weights_path = self.folder / self.card.weights
        self.weights_sha256 = file_sha256(weights_path)
        self.device = device
        module = build_module(self.card)
        try:
            module.load_state_dict(load_file(weights_path))
        except Exception as error:
            raise InputError(weights_path, f"weights do not fit the card ({type(error).__name__})") from None
        self.module = module.eval().to(device, memory_format=torch.channels_last)
        # uint8 → normalised float in one multiply-add over the last (channel) axis of NHWC patches
        std = torch.tensor(self.card.std, device=device)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -torch.tensor(self.card.mean, device=device) / std

    def predict(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, n_classes) float32 of uint8 patches (N, H, W, 3)."""
        out = np.empty((len(patches), len(self.card.class_names)), np.float32)
        for start in range(0, len(patches), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size]))
            x = batch.to(self.device, non_blocking=True).float().mul_(self._scale).add_(self._shift)
            x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last, no copy
            with inference_context(self.device):
                logits = self.module(x).float()
            if self.card.output == "sigmoid":
                positive = torch.sigmoid(logits[:, 0])
                probs = torch.stack([1 - positive, positive], dim=1)
            else:
                probs = torch.softmax(logits, dim=1)
            out[start : start + len(batch)] = probs.cpu().numpy()
        return out


def bundled_models_dir() -> Path:
    """The project's top-level ``models/`` folder."""
    return Path(__file__).resolve().parent.parent / "models"


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A model folder given by path, or by the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    bundled = bundled_models_dir() / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise InputError(path, "model folder not found (neither a folder nor a bundled model name)")
