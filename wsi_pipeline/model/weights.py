"""Safe weight loading (safetensors, weights-only ``torch.load``; TorchScript only when declared) and
saving."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wsi_pipeline.core.errors import InputError, summarise_error
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.card import ModelCard, write_card


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a weights-only PyTorch checkpoint: a state dict, possibly wrapped
    as ``{"state_dict": ...}`` or ``{"model": ...}``, with a DataParallel ``module.`` prefix removed."""
    if path.suffix == ".safetensors":
        try:
            state: object = load_file(path)
        except Exception as error:
            raise InputError(path, f"not a safetensors file ({summarise_error(error)})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            problem = (
                "refused: a weights-only load failed (it pickles objects other than tensors, or is corrupt)"
            )
            raise InputError(path, problem) from None
        except Exception as error:
            raise InputError(path, f"not a PyTorch weights file ({summarise_error(error)})") from None
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
            raise InputError(path, f"not a TorchScript archive ({summarise_error(error)})") from None
    module = build_module(card)
    try:
        module.load_state_dict(read_state_dict(path))
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the card ({summarise_error(error)})") from None
    return module
