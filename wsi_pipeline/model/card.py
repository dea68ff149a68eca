"""The model card (``model.json``): what a model is, how to feed it, what it was trained on; read and written
without loading torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wsi_pipeline.core.files import write_atomically

CARD_NAME = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCAM_MPP = 0.972  # PCam patches: level 2 of Camelyon16 slides scanned at ~0.243 µm/px
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # torch.save'd state dicts, read weights-only
WEIGHTS_FORMATS = ("state_dict", "torchscript")
ENGINES = ("auto", "torch", "onnxruntime")  # CPU engines Model runs (predict.py); auto: the faster
PRECISIONS = ("float32", "int8")  # int8: ONNX Runtime, calibrated and checked (quantize.py); CPU only


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
    intended_use: str = ""  # what the model is for (and not for), in the publisher's or trainer's words
    demonstration: bool = False  # for demonstration and pipeline checks only: no answers on real tissue
    source: dict = field(default_factory=dict)  # a downloaded model: repo, revision, files, sha256, citation

    @property
    def n_outputs(self) -> int:
        return 1 if self.output == "sigmoid" else len(self.class_names)

    def validate(self) -> None:
        """Check the card's own fields (ValueError); ``read_card`` also checks the architecture."""
        if self.output not in ("sigmoid", "softmax"):
            raise ValueError(f"output must be 'sigmoid' or 'softmax', not {self.output!r}")
        if self.output == "sigmoid" and len(self.class_names) != 2:
            raise ValueError("a sigmoid output needs exactly two class names")
        if self.patch_size <= 0 or self.mpp <= 0 or (self.input_size is not None and self.input_size <= 0):
            raise ValueError("patch_size, mpp and input_size must be positive")
        if self.weights_format not in WEIGHTS_FORMATS:
            raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, not {self.weights_format!r}")
        suffixes = (".safetensors", *TORCH_SUFFIXES)
        if self.weights_format == "state_dict" and Path(self.weights).suffix not in suffixes:
            raise ValueError(f"weights must be {'/'.join(suffixes)}, not {self.weights}")


def ensemble_difference(first: ModelCard, other: ModelCard) -> str | None:
    """What keeps two models from scoring as one ensemble (the mean of their probabilities per patch): a
    different patch size, µm/px or class names (in order); None when they agree."""
    for what, mine, theirs in (
        ("patch size", first.patch_size, other.patch_size),
        ("µm/px", first.mpp, other.mpp),
        ("class names", first.class_names, other.class_names),
    ):
        if mine != theirs:
            return f"{what}: {first.name} {mine}, {other.name} {theirs}"
    return None


def write_card(folder: Path, card: ModelCard) -> None:
    """Write ``model.json`` atomically (a reader never sees half a card)."""
    write_atomically(folder / CARD_NAME, json.dumps(asdict(card), indent=2) + "\n")
