"""TIAToolbox's patch classifier (its ``vanilla.CNNModel``), built so that the state dicts TIAToolbox
publishes load as they are: a torchvision backbone without its head (``feat_extract``), global average pooling
(``pool``) and a linear layer (``classifier``).

The layout follows TIAToolbox's ``tiatoolbox/models/architecture/vanilla.py``: ResNets, ResNeXts and Wide
ResNets keep all their children but the last two (average pool, fc); GoogLeNet, built without auxiliary heads,
all but the last three (average pool, dropout, fc); DenseNets, MobileNets and AlexNet keep ``.features``. The
classifier takes as many features as the backbone gives channels on a 96 × 96 input. TIAToolbox's forward ends
in a softmax; this one returns the logits, which ``Model`` turns into the same probabilities (card output
``softmax``)."""

from __future__ import annotations

import torch
from torch import nn

# trailing children of the torchvision network that TIAToolbox drops, or None where it keeps ``.features``
BACKBONES: dict[str, int | None] = {
    "alexnet": None,
    "resnet18": 2,
    "resnet34": 2,
    "resnet50": 2,
    "resnet101": 2,
    "resnext50_32x4d": 2,
    "resnext101_32x8d": 2,
    "wide_resnet50_2": 2,
    "wide_resnet101_2": 2,
    "densenet121": None,
    "densenet161": None,
    "densenet169": None,
    "densenet201": None,
    "mobilenet_v2": None,
    "mobilenet_v3_large": None,
    "mobilenet_v3_small": None,
    "googlenet": 3,
}
BUILD_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": False}}  # torchvision keyword arguments
PROBE_SIDE = 96  # input side on which the backbone's output channels are measured


class TiatoolboxCNN(nn.Module):
    """A torchvision ``backbone`` (one of ``BACKBONES``) cut as TIAToolbox cuts it, average-pooled, and a
    linear layer to ``num_classes`` logits."""

    def __init__(self, num_classes: int, backbone: str) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown TIAToolbox backbone {backbone!r} (one of {', '.join(BACKBONES)})")
        import torchvision

        network = torchvision.models.get_model(backbone, weights=None, **BUILD_OPTIONS.get(backbone, {}))
        dropped = BACKBONES[backbone]
        if dropped is None:
            self.feat_extract = network.features
        else:
            self.feat_extract = nn.Sequential(*list(network.children())[:-dropped])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(output_channels(self.feat_extract), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.feat_extract(x)), 1))


def output_channels(features: nn.Module) -> int:
    """Channels ``features`` gives on a ``PROBE_SIDE``² input (run once, in eval mode, without gradients)."""
    training = features.training
    with torch.no_grad():
        channels = features.eval()(torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE)).shape[1]
    features.train(training)
    return channels
