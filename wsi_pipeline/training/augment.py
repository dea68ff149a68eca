"""Batched patch augmentation in torch, on whatever device the batch is on (CPU or CUDA, same code).

Images are float tensors in [0, 1], shape (N, 3, H, W). Every random draw is per sample and comes from the
``torch.Generator`` passed in (on the batch's device), so a seeded generator gives the same batch every time.
All strengths at 0 leave the batch unchanged (up to float rounding in the colour-space round trips)."""

from __future__ import annotations

import math

import torch

from wsi_pipeline.model.tta import dihedral
from wsi_pipeline.training.config import AugmentConfig

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB (rows), as in scikit-image.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, as torchvision's grayscale
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
MIN_INTENSITY = 1e-6  # floor before the logarithm of optical density


def random_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each square image of (N, C, H, W) under one of the 8 symmetries of the square, drawn uniformly."""
    choice = torch.randint(0, 8, (len(x),), generator=generator, device=x.device)
    out = torch.empty_like(x)
    for k in range(8):
        chosen = (choice == k).nonzero()[:, 0]
        out.index_copy_(0, chosen, dihedral(x.index_select(0, chosen), k))
    return out


def _uniform(
    shape: tuple[int, ...], half_width: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Draws from U(-half_width, half_width)."""
    return (torch.rand(shape, generator=generator, device=device) * 2 - 1) * half_width


def _affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``matrix @ pixel + offset`` at each pixel of (N, 3, H, W), with a (3, 3) matrix and (3,) offset per
    sample."""
    n, c, h, w = x.shape
    return torch.baddbmm(offset.view(n, c, 1), matrix, x.reshape(n, c, h * w)).view(n, c, h, w)


def colour_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue jitter of (N, 3, H, W) images in [0, 1], clipped to [0, 1]
    once at the end. All four are affine in the colour, so they are applied as one affine map per sample:
    brightness scales by b; contrast moves by a factor c about the mean grey m (of the brightened image, b·m);
    saturation moves by a factor s away from each pixel's grey (luma); hue rotates the (I, Q) chroma of YIQ by
    an angle. Grey stays grey under the last two, so the offset is (1 − c)·b·m on every channel."""
    n, device = len(x), x.device
    strengths = torch.tensor([[brightness], [contrast], [saturation]], device=device)
    b, c, s = 1 + _uniform((3, n), 1.0, generator, device) * strengths
    angle = _uniform((n,), hue, generator, device) * 2 * math.pi
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(n, 3, 3)
    to_yiq, luma, eye = RGB_TO_YIQ.to(device), LUMA.to(device), torch.eye(3, device=device)
    hue_matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    saturation_matrix = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * luma.view(1, 1, 3)
    mean_grey = torch.einsum("c,nchw->n", luma, x) / x[0, 0].numel()
    matrix = (c * b).view(n, 1, 1) * hue_matrix @ saturation_matrix
    offset = ((1 - c) * b * mean_grey).view(n, 1).expand(n, 3)
    return _affine(x, matrix, offset).clamp_(0, 1)


def hed_jitter(
    x: torch.Tensor, generator: torch.Generator, scale: float = 0.0, shift: float = 0.0
) -> torch.Tensor:
    """Stain jitter (Tellez et al. 2018): RGB → optical density → haematoxylin/eosin/DAB concentrations
    (Ruifrok–Johnston), each scaled by U(1 − scale, 1 + scale) and shifted by U(−shift, shift) per sample,
    then back to RGB in [0, 1]. The three linear steps on optical density are one affine map per sample."""
    n, device = len(x), x.device
    alpha = 1 + _uniform((n, 3), scale, generator, device)
    beta = _uniform((n, 3), shift, generator, device)
    to_rgb = RGB_FROM_HED.T.to(device)  # column convention: density = to_rgb @ concentrations
    matrix = to_rgb @ (alpha.unsqueeze(2) * HED_FROM_RGB.T.to(device))
    density = _affine(-torch.log(x.clamp_min(MIN_INTENSITY)), matrix, beta @ to_rgb.T)
    return torch.exp(density.neg_()).clamp_(0, 1)


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation of a batch (N, 3, H, W) in [0, 1]: symmetries, colour, then stain jitter."""
    if config.dihedral:
        x = random_dihedral(x, generator)
    x = colour_jitter(x, generator, config.brightness, config.contrast, config.saturation, config.hue)
    return hed_jitter(x, generator, config.hed_scale, config.hed_shift)
