"""Architectures by name: a registry of our own and publishers' (``compact_cnn``, the ``centre_colour`` probe,
``tiatoolbox_cnn``), and any timm or torchvision model."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.compact_cnn import CompactCNN
from wsi_pipeline.model.tiatoolbox import TiatoolboxCNN


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


# Architectures by card name, each called with ``num_classes`` and the card's ``architecture_args``
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "centre_colour": CentreColour,
    "compact_cnn": CompactCNN,
    "tiatoolbox_cnn": TiatoolboxCNN,
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
    ValueError for an unknown one."""
    if architecture in ARCHITECTURES:
        return ARCHITECTURES[architecture]
    library, _, name = architecture.rpartition(":")
    lookup = LIBRARIES.get(library or "timm")
    factory = lookup(name) if lookup else None
    if factory is None:
        raise ValueError(
            f"unknown architecture {architecture!r} (a timm name, timm:NAME, torchvision:NAME or one of "
            f"{', '.join(ARCHITECTURES)})"
        )
    return factory


def build_module(card: ModelCard) -> torch.nn.Module:
    """An untrained module for the card's architecture."""
    return module_factory(card.architecture)(num_classes=card.n_outputs, **card.architecture_args)
