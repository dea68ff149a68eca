"""Test-time augmentation: the 8 flips and rotations (dihedral group D4) of image batches."""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, k: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """The k-th (0–7) symmetry of the square over the two spatial ``dims``: k % 4 quarter turns, then a flip
    of the second dim when k ≥ 4. k = 0 is the identity."""
    x = torch.rot90(x, k % 4, dims)
    return x.flip(dims[1]) if k >= 4 else x
