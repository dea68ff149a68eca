"""Grad-CAM saliency of a CNN's tumour class, at patch resolution (``Model.explain``).

Grad-CAM (Selvaraju et al., 2017) is computed by captum's ``LayerGradCam`` (the ``explain`` extra), a library
kept by the PyTorch project, rather than by hooks of our own: the channels of the last convolutional stage's
output are weighted by the mean gradient of the tumour class's log-odds, summed, and their positive part is
upsampled (bilinear) to the patch. Each map is scaled to its own maximum: it shows *where* the tumour evidence
lies in the patch, not how strong it is (the probability says that); a map of zeros means nothing in the patch
raised the tumour score.

The last convolutional stage is found by running the module once on a blank input: the last module whose
output is a spatial map (N, C, H, W with H, W > 1), provided the first parametrised layer after it sees the
stage's channels pooled (or flattened), as a CNN's head does. A model where that fails gets
``SaliencyUnavailableError`` rather than a wrong picture: one without convolutions (the ``centre_colour``
probe), a transformer, or a TorchScript archive (which cannot be hooked)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.errors import SaliencyUnavailableError
from wsi_pipeline.model.card import ModelCard

INSTALL_HINT = "pip install 'wsi-pipeline[explain]'"


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _is_map(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[-2] > 1 and shape[-1] > 1


def last_conv_stage(module: nn.Module, side: int) -> nn.Module:
    """The module whose output Grad-CAM weighs (see the module's docstring); ``SaliencyUnavailableError`` when
    ``module`` (taking ``side`` × ``side`` inputs) has none."""
    if isinstance(module, torch.jit.ScriptModule):
        raise SaliencyUnavailableError("a TorchScript model cannot be hooked for Grad-CAM")
    calls: list[
        tuple[nn.Module, tuple[int, ...] | None, tuple[int, ...] | None]
    ] = []  # in the order they end

    def record(layer: nn.Module, inputs: tuple, output: object) -> None:
        calls.append((layer, _shape(inputs[0]) if inputs else None, _shape(output)))

    handles = [layer.register_forward_hook(record) for layer in module.modules()]
    device = next(module.parameters()).device
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, side, side, device=device))
    finally:
        for handle in handles:
            handle.remove()
    maps = [index for index, (_, _, output) in enumerate(calls) if _is_map(output)]
    if not maps or not any(isinstance(layer, nn.Conv2d) for layer, _, _ in calls[: maps[-1] + 1]):
        raise SaliencyUnavailableError("the model has no convolutional stage for Grad-CAM")
    stage, _, (_, channels, height, width) = calls[maps[-1]]
    head = next(
        (inputs for layer, inputs, _ in calls[maps[-1] + 1 :] if _has_own_weights(layer)), (1, channels)
    )
    pooled = head is not None and (len(head) == 2 or (len(head) == 4 and head[-2:] == (1, 1)))
    if not (pooled and head[1] in (channels, channels * height * width)):
        raise SaliencyUnavailableError(
            "the model's last spatial feature map does not feed a pooled head (not a CNN); no Grad-CAM"
        )
    return stage


def _has_own_weights(layer: nn.Module) -> bool:
    """A leaf module with parameters (a layer of the head, not a container)."""
    return next(layer.children(), None) is None and next(layer.parameters(), None) is not None


def tumour_log_odds(logits: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """The tumour class's log-odds (N,) from the module's logits: the sigmoid logit (negated when tumour is
    the first of the two classes), or the tumour logit against the log-sum-exp of the others."""
    tumour = tumour_class_index(card.class_names)
    if card.output == "sigmoid":  # one logit, of the last class
        return logits[:, 0] if tumour == 1 else -logits[:, 0]
    others = torch.cat([logits[:, :tumour], logits[:, tumour + 1 :]], dim=1)
    return logits[:, tumour] - torch.logsumexp(others, dim=1)


class GradCam:
    """Grad-CAM of a module's tumour class on its last convolutional stage; ``SaliencyUnavailableError``
    when it has none or captum is missing."""

    def __init__(self, module: nn.Module, card: ModelCard, side: int) -> None:
        try:
            from captum.attr import LayerAttribution, LayerGradCam
        except ImportError:
            raise SaliencyUnavailableError(f"Grad-CAM needs captum ({INSTALL_HINT})") from None
        self.layer = last_conv_stage(module, side)
        self._interpolate = LayerAttribution.interpolate
        self._grad_cam = LayerGradCam(lambda x: tumour_log_odds(module(x), card), self.layer)

    def __call__(self, inputs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """float32 maps (N, *size) in [0, 1] of normalised inputs (N, 3, side, side), each scaled to its
        maximum."""
        with torch.enable_grad():
            cam = self._grad_cam.attribute(inputs, relu_attributions=True)
        cam = self._interpolate(cam.detach().float(), size, interpolate_mode="bilinear")[:, 0].clamp_(min=0)
        peak = cam.amax(dim=(1, 2), keepdim=True)
        return torch.where(peak > 0, cam / peak.clamp(min=1e-12), 0.0).cpu().numpy()
