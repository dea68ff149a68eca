"""Architectures by name: a registry of our own and publishers' (``compact_cnn``, the ``centre_colour`` probe,
``tiatoolbox_cnn``), and any timm or torchvision model."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pipeline.core.files import cache_dir, write_atomically
from wsi_pipeline.model.card import ModelCard

if TYPE_CHECKING:
    import torch

# Architectures by card name (``module:class``, imported when built, so that naming one needs no torch), each
# called with ``num_classes`` and the card's ``architecture_args``
ARCHITECTURES = {
    "centre_colour": "wsi_pipeline.model.centre_colour:CentreColour",
    "compact_cnn": "wsi_pipeline.model.compact_cnn:CompactCNN",
    "tiatoolbox_cnn": "wsi_pipeline.model.tiatoolbox:TiatoolboxCNN",
}


def _timm_factory(name: str) -> Callable[..., torch.nn.Module] | None:
    import timm

    return functools.partial(timm.create_model, name, pretrained=False) if timm.is_model(name) else None


def _torchvision_factory(name: str) -> Callable[..., torch.nn.Module] | None:
    import torchvision

    known = name in torchvision.models.list_models()
    return functools.partial(torchvision.models.get_model, name, weights=None) if known else None


LIBRARIES = {
    "timm": _timm_factory,
    "torchvision": _torchvision_factory,
}  # "LIBRARY:NAME"; a bare name is timm's


def module_factory(architecture: str) -> Callable[..., torch.nn.Module]:
    """The constructor of an architecture, called with ``num_classes`` and the card's ``architecture_args``;
    ValueError for an unknown one. Ours are named without importing torch; a library's name is looked up
    in the library (which imports torch)."""
    if architecture in ARCHITECTURES:
        module, _, name = ARCHITECTURES[architecture].partition(":")
        return functools.partial(_ours, module, name)
    library, _, name = architecture.rpartition(":")
    lookup = LIBRARIES.get(library or "timm")
    factory = lookup(name) if lookup else None
    if factory is None:
        raise ValueError(
            f"unknown architecture {architecture!r} (a timm name, timm:NAME, torchvision:NAME or one of "
            f"{', '.join(ARCHITECTURES)})"
        )
    return factory


def check_architecture(architecture: str) -> None:
    """ValueError for an architecture ``module_factory`` does not know. A library's name found there once is
    recorded in the cache, per library version, so that later checks import neither the library nor torch."""
    if architecture in ARCHITECTURES:
        return
    library, _, name = architecture.rpartition(":")
    record = _known_names(library or "timm")
    if record is not None and name in _read_names(record):
        return
    module_factory(architecture)
    if record is not None:
        with contextlib.suppress(OSError):  # a read-only cache: checked again next time
            record.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(record, json.dumps(sorted({*_read_names(record), name})))


def _known_names(library: str) -> Path | None:
    """Where the names found in an installed library are recorded; None for an unknown or missing one."""
    if library not in LIBRARIES:
        return None
    try:
        version = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None
    return cache_dir() / "architectures" / f"{library}-{version}.json"


def _read_names(record: Path) -> list[str]:
    try:
        names = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    return names if isinstance(names, list) else []


def _ours(module: str, name: str, **arguments: object) -> torch.nn.Module:
    return getattr(importlib.import_module(module), name)(**arguments)


def build_module(card: ModelCard) -> torch.nn.Module:
    """An untrained module for the card's architecture."""
    return module_factory(card.architecture)(num_classes=card.n_outputs, **card.architecture_args)
