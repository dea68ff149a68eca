"""Lesion-level FROC with the Camelyon16 challenge's rules, and detections from a heatmap.

Rules, as in the challenge's evaluation script (``Evaluation_FROC.py``, B. Ehteshami Bejnordi, 2016):

- The evaluation mask is the tumour grown by 75 µm in diameter, "the size of 5 tumour cells" (pixels whose
  centre lies less than 37.5 µm from a tumour pixel's centre), holes filled; its 8-connected components are
  the lesions.
- Isolated tumour cells (ITC): lesions whose major axis (of the ellipse with the same second moments, as
  skimage's ``regionprops`` measures it) is below 275 µm — 200 µm plus the 75 µm growth. They need not be
  found, and detections inside them are neither hits nor false positives.
- A detection (x, y in level-0 px, probability) inside a lesion is a hit on it; a lesion's score is the
  highest probability among its hits (missed: no score). A detection outside every lesion is a false
  positive (FP); on a slide without tumour every detection is one.
- The FROC curve has one point per distinct probability t: (FPs with probability ≥ t / slides, lesions
  scored ≥ t / non-ITC lesions), from (0, 0). The score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 FPs
  per slide, linearly interpolated between points and held at the last point beyond it.

Where this differs: the mask is built from polygons (:class:`~wsi_pipeline.annotations.TumourRegions`), not
read from the challenge's mask TIFF, at ``EVALUATION_MPP`` (0.243 µm/px × 32, the resolution of the
challenge's level 5) whatever the slide's µm/px, and only around the tumour (the rest holds no lesion);
every tumour ring marks at least the pixels holding its vertices. The script drops the lowest probability
from its thresholds (meant for the zeros of missed lesions; with no zero it drops a real operating point);
here every probability is a threshold. Where several points share an FP rate the interpolation takes the
highest sensitivity among them, as the script's ``np.interp`` does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label, regionprops

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.evaluation.annotations import TumourRegions
from wsi_pipeline.store.heatmap import Heatmap

EVALUATION_MPP = 0.243 * 2**5  # µm per evaluation-mask pixel: the challenge's level 5
GROWTH_UM = 75.0  # the lesions' diameter grows by this much (5 tumour cells)
ITC_UM = 275.0  # major axis below this (200 µm + GROWTH_UM): isolated tumour cells
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTION_FLOOR = 0.2


@dataclass
class Lesions:
    """A slide's evaluation mask: lesion labels (0 = none) over a window of the slide at ``downsample``."""

    labels: np.ndarray  # int (rows, cols), 1…n
    origin: tuple[int, int]  # (row, col) of labels[0, 0] in evaluation-mask pixels of the whole slide
    downsample: float  # level-0 pixels per evaluation-mask pixel
    itc: np.ndarray  # bool (n,): lesion k + 1 is isolated tumour cells

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lesion label (0 = none) under level-0 points."""
        rows = np.floor(np.asarray(y, np.float64) / self.downsample).astype(int) - self.origin[0]
        cols = np.floor(np.asarray(x, np.float64) / self.downsample).astype(int) - self.origin[1]
        inside = (rows >= 0) & (rows < self.labels.shape[0]) & (cols >= 0) & (cols < self.labels.shape[1])
        out = np.zeros(len(rows), self.labels.dtype)
        out[inside] = self.labels[rows[inside], cols[inside]]
        return out


def find_lesions(
    regions: TumourRegions, size0: tuple[int, int], mpp0: float, mask_mpp: float = EVALUATION_MPP
) -> Lesions:
    """The lesions of a slide (level-0 ``size0`` = (width, height) at ``mpp0`` µm/px), by the rules above."""
    downsample = mask_mpp / mpp0
    shape = (int(np.ceil(size0[1] / downsample)), int(np.ceil(size0[0] / downsample)))
    tumour = regions.rasterise(shape, downsample, mark_vertices=True)
    if not tumour.any():
        return Lesions(np.zeros((0, 0), np.int32), (0, 0), downsample, np.zeros(0, bool))
    radius = GROWTH_UM / 2 / mask_mpp
    margin = int(np.ceil(radius)) + 1
    rows, cols = np.flatnonzero(tumour.any(axis=1)), np.flatnonzero(tumour.any(axis=0))
    r0, c0 = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    window = tumour[r0 : rows[-1] + margin + 1, c0 : cols[-1] + margin + 1]
    grown = ndimage.binary_fill_holes(ndimage.distance_transform_edt(~window) < radius)
    labels = label(grown, connectivity=2)
    itc = np.array([region.axis_major_length * mask_mpp < ITC_UM for region in regionprops(labels)], bool)
    return Lesions(labels, (int(r0), int(c0)), downsample, itc)


def match_detections(lesions: Lesions, x: np.ndarray, y: np.ndarray, probability: np.ndarray) -> dict:
    """One slide's detections against its lesions: ``hits`` (the score of each non-ITC lesion found), ``fps``
    (probabilities of false positives), ``lesions`` and ``itc`` (counts)."""
    probability = np.asarray(probability, np.float64)
    hit = lesions.label_at(x, y)
    best = np.full(len(lesions.itc) + 1, -np.inf)
    np.maximum.at(best, hit, probability)
    counted = np.r_[False, ~lesions.itc]
    return {
        "lesions": int(counted.sum()),
        "itc": int(lesions.itc.sum()),
        "hits": best[counted & np.isfinite(best)].tolist(),
        "fps": probability[hit == 0].tolist(),
    }


def froc_curve(slides: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPs per slide, sensitivity, threshold) at every distinct probability, from (0, 0) at threshold +inf;
    ``slides`` are :func:`match_detections` results. Raises ValueError without a non-ITC lesion."""
    n_lesions = sum(slide["lesions"] for slide in slides)
    if not n_lesions:
        raise ValueError("FROC is undefined: no lesion to detect (every slide negative or only ITC)")
    hits = np.sort(np.concatenate([np.asarray(s["hits"], np.float64) for s in slides]))
    fps = np.sort(np.concatenate([np.asarray(s["fps"], np.float64) for s in slides]))
    thresholds = np.unique(np.r_[hits, fps])[::-1]

    def at_least(values: np.ndarray) -> np.ndarray:
        return len(values) - np.searchsorted(values, thresholds, side="left")

    return (
        np.r_[0.0, at_least(fps) / len(slides)],
        np.r_[0.0, at_least(hits) / n_lesions],
        np.r_[np.inf, thresholds],
    )


def sensitivity_at(
    fp_rate: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float] = FP_RATES
) -> np.ndarray:
    """Sensitivity at the given FP rates: linear between curve points, the highest where points share an FP
    rate, the last point's beyond the curve."""
    last = np.searchsorted(fp_rate, rates, side="right") - 1  # the last point at or below each rate
    following = np.minimum(last + 1, len(fp_rate) - 1)
    span = fp_rate[following] - fp_rate[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(span > 0, (np.asarray(rates) - fp_rate[last]) / span, 0.0)
    return sensitivity[last] + step * (sensitivity[following] - sensitivity[last])


def froc_score(slides: Sequence[dict], rates: Sequence[float] = FP_RATES) -> dict:
    """The FROC score (mean sensitivity at ``rates`` FPs per slide), the sensitivities and the curve."""
    fp_rate, sensitivity, thresholds = froc_curve(slides)
    at = sensitivity_at(fp_rate, sensitivity, rates)
    return {
        "score": float(at.mean()),
        "sensitivity_at": {f"{rate:g}": float(value) for rate, value in zip(rates, at, strict=True)},
        "curve": {
            "fp_per_slide": fp_rate.tolist(),
            "sensitivity": sensitivity.tolist(),
            "threshold": [None, *thresholds[1:].tolist()],  # None: +inf, nothing detected
        },
    }


def heatmap_detections(
    heatmap: Heatmap, floor: float = DETECTION_FLOOR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections (x, y level-0 px, probability) of a heatmap: one per 8-connected region of scored cells
    whose tumour probability is at least ``floor``, at the centre of its highest cell (the first in row-major
    order on ties) with that cell's probability."""
    scores = heatmap.probabilities[tumour_class_index(heatmap.class_names)].astype(np.float64)
    regions, _ = ndimage.label(heatmap.tissue & (np.nan_to_num(scores, nan=-1.0) >= floor), np.ones((3, 3)))
    cells = np.flatnonzero(regions)  # row-major
    region, value = regions.ravel()[cells], scores.ravel()[cells]
    order = np.lexsort((cells, -value, region))  # by region, then highest first, then row-major
    peaks = cells[order[np.r_[True, region[order][1:] != region[order][:-1]]]] if len(cells) else cells
    rows, cols = np.unravel_index(peaks, scores.shape)
    grid = heatmap.grid
    x = grid.cell_spans_level0(cols).mean(axis=1)
    y = grid.cell_spans_level0(rows).mean(axis=1)
    return x, y, scores[rows, cols]
