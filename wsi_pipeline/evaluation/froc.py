"""Lesion-level FROC by the Camelyon16 challenge's rules or corrected ones, and detections from a heatmap.

The challenge's evaluation script is ``Python/Evaluation_FROC.py`` of github.com/computationalpathologygroup/
Camelyon16 (B. Ehteshami Bejnordi, 2016); "L" numbers are its lines. Both rule sets (``rules``) share:

- The evaluation mask: the tumour grown by 75 µm in diameter, "the size of 5 tumour cells" (pixels whose
  centre lies less than 37.5 µm from a tumour pixel's centre, L34-36), holes filled (L37); its 8-connected
  components are the lesions (L38).
- Isolated tumour cells (ITC): lesions whose major axis (of the ellipse with the same second moments,
  skimage's ``regionprops``) is below 275 µm, 200 µm plus the growth (L63-66). They need not be found, and
  detections inside them are neither hits nor false positives (L141).
- A detection (x, y in level-0 px, probability) inside a lesion is a hit on it; a lesion's score is its
  highest hit (L142-145). A detection outside every lesion is a false positive (FP, L136-140); on a slide
  without tumour every detection is one (L146-151).
- The curve has one point per threshold t: (FPs ≥ t / slides, lesion scores ≥ t / non-ITC lesions,
  L177-182), and (0, 0) (L179-180). The score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 FPs per
  slide: linear between points, the highest where points share an FP rate, the last point's beyond the curve,
  as ``np.interp`` over the reversed curve gives it in the script's common extension (NCRF's copy,
  ``wsi/bin/Evaluation_FROC.py``); the script itself stops at the curve.

Where they differ (challenge | corrected):

- Mask resolution: level 5, 32 level-0 px a pixel, whatever the slide's µm/px (L31-33, L214) | 7.776 µm/px
  (``EVALUATION_MPP``: the challenge's level 5 at 0.243 µm/px) at the slide's µm/px.
- µm to mask pixels: at 0.243 µm/px for every slide, the script's ``L0_RESOLUTION`` (L35, L63, L215), so on
  a 0.5 µm/px slide lesions grow by 154 µm and ITC are below 566 µm | at the slide's µm/px.
- Mask from polygons (ASAP XML, GeoJSON): a level-5 pixel is tumour when the level-0 point at its top-left
  corner is, as ASAP's AnnotationToMask (a level-0 pixel is tumour when its integer coordinates are inside)
  and its nearest-neighbour pyramid made the challenge's masks | when its centre is, and so is every pixel
  holding a tumour vertex, so no ring vanishes.
- Mask images: a TIFF's level 32 times smaller than its level 0, as stored (L33), else the image sampled at
  those corners; tumour is 255, the distance being to the nearest pixel of 255 (L34) | outlines of the
  nonzero pixels, rasterised like polygons.
- Matching: the label at (y // 32, x // 32) of the integer coordinates the CSV holds (L88-89, L135) | at
  (floor(y / d), floor(x / d)), d level-0 px per mask pixel.
- A hit needs a probability above 0 (L142); lesion scores are kept, and compared, in float32 (L124, L178) |
  any probability, float64.
- Thresholds: every distinct value among the FP probabilities and the lesion scores (0 for each missed lesion
  and each ITC) but the lowest (L124, L175-176), meant for those zeros; without them a real operating point
  goes | every distinct probability among hits and FPs.

Not reproduced: the script takes a slide for tumour by its name (``Tumor*``, L228), not by its truth; it
fails on a detection beyond the mask (IndexError) and wraps a negative coordinate around (FPs here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from scipy import ndimage
from skimage.measure import label, regionprops

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.evaluation.annotations import TumourRegions, read_mask_image, tiff_levels
from wsi_pipeline.store.heatmap import Heatmap

Rules = Literal["challenge", "corrected"]
RULES: tuple[Rules, ...] = ("challenge", "corrected")
CHALLENGE_DOWNSAMPLE = 2**5  # level-0 px per pixel of the challenge's evaluation mask (level 5)
CHALLENGE_L0_MPP = 0.243  # the script's L0_RESOLUTION
CHALLENGE_TUMOUR = 255  # tumour in the challenge's masks
EVALUATION_MPP = CHALLENGE_L0_MPP * CHALLENGE_DOWNSAMPLE  # µm per evaluation-mask pixel
GROWTH_UM = 75.0  # the lesions' diameter grows by this much (5 tumour cells)
ITC_UM = 275.0  # major axis below this (200 µm + GROWTH_UM): isolated tumour cells
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTION_FLOOR = 0.2
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y (level-0 px), probability


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


def grow_lesions(tumour: np.ndarray, downsample: float, mask_mpp: float = EVALUATION_MPP) -> Lesions:
    """The lesions of a bool tumour mask (one pixel per ``downsample`` level-0 pixels, ``mask_mpp`` µm each):
    grown, holes filled, labelled and ITC marked as the module docstring says. Only a window around the
    tumour is labelled; what lies beyond it is no lesion either way."""
    if not tumour.any():
        return Lesions(np.zeros((0, 0), np.int32), (0, 0), downsample, np.zeros(0, bool))
    radius = GROWTH_UM / (2 * mask_mpp)
    margin = int(np.ceil(radius)) + 1
    rows, cols = np.flatnonzero(tumour.any(axis=1)), np.flatnonzero(tumour.any(axis=0))
    r0, c0 = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    window = tumour[r0 : rows[-1] + margin + 1, c0 : cols[-1] + margin + 1]
    grown = ndimage.binary_fill_holes(ndimage.distance_transform_edt(~window) < radius)
    labels = label(grown, connectivity=2)
    itc = np.array([region.axis_major_length < ITC_UM / mask_mpp for region in regionprops(labels)], bool)
    return Lesions(labels, (int(r0), int(c0)), downsample, itc)


def find_lesions(
    regions: TumourRegions,
    size0: tuple[int, int],
    mpp0: float,
    *,
    rules: Rules = "challenge",
    mask_mpp: float = EVALUATION_MPP,
) -> Lesions:
    """The lesions of a slide (level-0 ``size0`` = (width, height) at ``mpp0`` µm/px) drawn as polygons.
    ``mask_mpp``: the evaluation mask's µm/px under the corrected rules (the challenge's is its level 5)."""
    if rules == "challenge":
        shape = (size0[1] // CHALLENGE_DOWNSAMPLE, size0[0] // CHALLENGE_DOWNSAMPLE)  # ASAP's level 5
        return grow_lesions(
            regions.rasterise(shape, CHALLENGE_DOWNSAMPLE, at_corners=True), CHALLENGE_DOWNSAMPLE
        )
    downsample = mask_mpp / mpp0
    shape = (int(np.ceil(size0[1] / downsample)), int(np.ceil(size0[0] / downsample)))
    return grow_lesions(regions.rasterise(shape, downsample, mark_vertices=True), downsample, mask_mpp)


def _challenge_level(path: Path) -> np.ndarray | None:
    """A TIFF's level whose sides are its level 0's divided by 32, as stored (first channel); else None."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    with tifffile.TiffFile(path) as tif:
        levels = tiff_levels(tif)
        sides = [(lv.shape[lv.axes.index("Y")], lv.shape[lv.axes.index("X")]) for lv in levels]
        for level, (height, width) in zip(levels, sides, strict=True):
            if all(
                side in (side0 // CHALLENGE_DOWNSAMPLE, -(-side0 // CHALLENGE_DOWNSAMPLE))
                for side, side0 in ((height, sides[0][0]), (width, sides[0][1]))
            ):
                image = level.asarray()
                return image[..., 0] if image.ndim == 3 else image
    return None


def read_mask_lesions(
    path: str | Path, slide_size: tuple[int, int], downsample: float | None = None
) -> Lesions:
    """The lesions of a mask image by the challenge's rules: a TIFF's level 5 as stored, else the image
    sampled at the level-0 points (32·col, 32·row) as a nearest-neighbour pyramid would; tumour is 255.
    ``downsample`` and ``slide_size`` (level-0 width, height) as for
    :func:`~wsi_pipeline.evaluation.annotations.read_mask_image`."""
    path = Path(path)
    try:
        image = _challenge_level(path)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise InputError(path, f"cannot be read as an image ({error})") from None
    if image is None:
        pixels, mask_downsample = read_mask_image(path, downsample, slide_size)
        corners = [
            np.arange(side // CHALLENGE_DOWNSAMPLE) * CHALLENGE_DOWNSAMPLE for side in slide_size[::-1]
        ]
        rows, cols = (np.floor(at / mask_downsample).astype(int) for at in corners)
        image = pixels[np.ix_(rows[rows < pixels.shape[0]], cols[cols < pixels.shape[1]])]
    tumour = image == CHALLENGE_TUMOUR
    if image.any() and not tumour.any():
        raise InputError(
            path,
            f"no pixel is {CHALLENGE_TUMOUR}, the challenge's tumour value (its script would find no tumour);"
            " use the corrected FROC rules, which take any nonzero pixel as tumour",
        )
    return grow_lesions(tumour, CHALLENGE_DOWNSAMPLE)


def match_detections(
    lesions: Lesions, x: np.ndarray, y: np.ndarray, probability: np.ndarray, *, rules: Rules = "challenge"
) -> dict:
    """One slide's detections against its lesions: ``hits`` (the score of each non-ITC lesion found), ``fps``
    (probabilities of false positives), ``lesions`` and ``itc`` (counts)."""
    probability = np.asarray(probability, np.float64)
    hit = lesions.label_at(x, y)
    best = np.full(len(lesions.itc) + 1, -np.inf)
    np.maximum.at(best, hit, probability)
    counted = np.r_[False, ~lesions.itc]
    found = counted & np.isfinite(best)
    if rules == "challenge":
        found &= best > 0
    return {
        "lesions": int(counted.sum()),
        "itc": int(lesions.itc.sum()),
        "hits": best[found].tolist(),
        "fps": probability[hit == 0].tolist(),
    }


def froc_curve(
    slides: Sequence[dict], *, rules: Rules = "challenge"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPs per slide, sensitivity, threshold) from (0, 0) at threshold +inf down the thresholds;
    ``slides`` are :func:`match_detections` results. Raises ValueError without a non-ITC lesion."""
    n_lesions = sum(slide["lesions"] for slide in slides)
    if not n_lesions:
        raise ValueError("FROC is undefined: no lesion to detect (every slide negative or only ITC)")
    hits = np.sort(np.concatenate([np.asarray(s["hits"], np.float64) for s in slides]))
    fps = np.sort(np.concatenate([np.asarray(s["fps"], np.float64) for s in slides]))
    if rules == "challenge":
        # the script's lesion scores: float32, one per label, 0 for each missed lesion and each ITC
        unscored = sum(s["lesions"] - len(s["hits"]) + s["itc"] for s in slides)
        hits = np.sort(np.r_[hits.astype(np.float32), np.zeros(unscored)])
        thresholds = np.unique(np.r_[hits, fps])[1:][::-1]  # all but the lowest
        hit_thresholds = thresholds.astype(np.float32).astype(np.float64)  # scores compare in float32
    else:
        thresholds = hit_thresholds = np.unique(np.r_[hits, fps])[::-1]

    def at_least(values: np.ndarray, at: np.ndarray) -> np.ndarray:
        return len(values) - np.searchsorted(values, at, side="left")

    return (
        np.r_[0.0, at_least(fps, thresholds) / len(slides)],
        np.r_[0.0, at_least(hits, hit_thresholds) / n_lesions],
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


def froc_score(
    slides: Sequence[dict], rates: Sequence[float] = FP_RATES, *, rules: Rules = "challenge"
) -> dict:
    """The FROC score (mean sensitivity at ``rates`` FPs per slide), the sensitivities, the curve and the rule
    set."""
    fp_rate, sensitivity, thresholds = froc_curve(slides, rules=rules)
    at = sensitivity_at(fp_rate, sensitivity, rates)
    return {
        "rules": rules,
        "score": float(at.mean()),
        "sensitivity_at": {f"{rate:g}": float(value) for rate, value in zip(rates, at, strict=True)},
        "curve": {
            "fp_per_slide": fp_rate.tolist(),
            "sensitivity": sensitivity.tolist(),
            "threshold": [None, *thresholds[1:].tolist()],  # None: +inf, nothing detected
        },
    }


def heatmap_detections(heatmap: Heatmap, floor: float = DETECTION_FLOOR) -> Detections:
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
