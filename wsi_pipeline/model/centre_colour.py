"""The ``centre_colour`` probe architecture."""

from __future__ import annotations

import torch


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
