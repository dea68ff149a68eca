"""WSInfer model-zoo folders read as they are (layout and schema of SBU-BMI/wsinfer-zoo's client)."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.model.architectures import check_architecture
from wsi_pipeline.model.card import ModelCard

# WSInfer model-zoo folders (github.com/SBU-BMI/wsinfer-zoo, wsinfer_zoo/client.py and model-config schema)
WSINFER_CONFIG = "config.json"
WSINFER_STATE_DICTS = ("model.safetensors", "pytorch_model.bin")  # weights for the timm architecture named
WSINFER_TORCHSCRIPT = "torchscript_model.pt"
WSINFER_KEYS = ("num_classes", "class_names", "patch_size_pixels", "spacing_um_px", "transform")
WSINFER_TRANSFORMS = ("Resize", "ToTensor", "Normalize")


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
        check_architecture(architecture)
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
