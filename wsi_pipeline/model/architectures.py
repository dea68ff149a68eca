"""Architectures by name: timm, torchvision, ``compact_cnn`` and the ``centre_colour`` probe."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from wsi_pipeline.model.card import ModelCard
from wsi_pipeline.model.compact_cnn import CompactCNN


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
