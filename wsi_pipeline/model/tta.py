"""Test-time augmentation: the 8 flips and rotations (dihedral group D4) of image batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Batch = TypeVar("Batch", np.ndarray, "torch.Tensor")


def dihedral(x: Batch, k: int, dims: tuple[int, int] = (-2, -1)) -> Batch:
    """The k-th (0–7) symmetry of the square over the two spatial ``dims`` of a numpy array (a view) or a
    tensor: k % 4 quarter turns, then a flip of the second dim when k ≥ 4. k = 0 is the identity."""
    if isinstance(x, np.ndarray):
        xp = np
    else:
        import torch as xp
    x = xp.rot90(x, k % 4, dims)
    return xp.flip(x, (dims[1],)) if k >= 4 else x
