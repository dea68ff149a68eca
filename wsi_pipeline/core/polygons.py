"""Polygon measurements in level-0 pixels: area, longest diameter, and which points lie inside."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import points_in_poly


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring of (x, y) vertices, closed or not: positive when counter-clockwise in x/y as
    written (clockwise on screen, where y points down)."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def polygon_area(vertices: np.ndarray) -> float:
    """Area of a simple polygon, in the squared units of its vertices."""
    return abs(signed_area(vertices))


def max_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two vertices (a polygon's longest diameter). The farthest pair lies on the
    convex hull, so only hull vertices are compared (memory stays small for outlines of thousands of
    vertices)."""
    points = np.unique(np.asarray(vertices, np.float64), axis=0)
    if len(points) > 3:
        with contextlib.suppress(QhullError):  # all on one line: every point stays a candidate
            points = points[ConvexHull(points).vertices]
    longest_squared = 0.0
    for start in range(0, len(points), 1024):  # rows of the distance matrix in chunks: bounded memory
        diff = points[start : start + 1024, None, :] - points[None, :, :]
        longest_squared = max(longest_squared, float((diff**2).sum(-1).max()))
    return float(np.sqrt(longest_squared))


def points_in_polygons(polygons: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (1-D arrays x, y) lie inside any of the polygons ((n, 2) rings of (x, y))."""
    points = np.stack([x, y], axis=1)
    out = np.zeros(len(points), bool)
    for ring in polygons:
        (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
        near = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
        if near.any():
            out[near] |= points_in_poly(points[near], ring)
    return out
