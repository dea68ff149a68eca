"""A compact CNN of configurable depth: each block doubles the filters and halves the resolution."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class CompactCNN(nn.Module):
    """``depth`` blocks of two 3×3 conv-BN-ReLU layers and a 2× max-pool; filters ``width · 2^i`` in block i;
    then global average pooling, dropout and one linear layer."""

    def __init__(self, num_classes: int = 1, depth: int = 4, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("depth and width must be positive")
        channels = [3] + [width * 2**i for i in range(depth)]
        self.features = nn.Sequential(*(_block(a, b) for a, b in itertools.pairwise(channels)))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))
