"""Synthetic data with ground truth: H&E-like slides with their truth files, and PCam-format patch sets
sampled from those slides through the same reader the pipeline uses.

Beside ``<stem>.svs`` a slide gets:
- ``<stem>.truth.geojson``: the metastases as QuPath annotations (polygons in level-0 pixels);
- ``<stem>.truth_mask.png``: the tumour mask, one pixel per ``MASK_DOWNSAMPLE`` level-0 pixels (255 = tumour);
- ``<stem>.truth.json``: slide size, µm/px, seed, the mask's downsample, and per metastasis its area and
  longest diameter."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.polygons import points_in_polygons, polygon_area
from wsi_pipeline.datasets.patches import write_pcam_split
from wsi_pipeline.model.card import PCAM_MPP
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.synthetic.scene import HEScene, truth_geojson
from wsi_pipeline.synthetic.svs import write_slide
from wsi_pipeline.tiling.tissue import TISSUE_MPP, detect_tissue

MASK_DOWNSAMPLE = 16
PATCH = 96  # PCam's patch side in target pixels
CENTRE = 32  # PCam's label covers the centre 32 × 32


def truth_paths(slide_path: str | Path) -> dict[str, Path]:
    """The truth files that belong to a synthetic slide."""
    slide_path = Path(slide_path)
    stem = slide_path.with_suffix("")
    return {
        "json": stem.with_name(stem.name + ".truth.json"),
        "geojson": stem.with_name(stem.name + ".truth.geojson"),
        "mask": stem.with_name(stem.name + ".truth_mask.png"),
    }


def write_synthetic_slide(
    path: str | Path,
    scene: HEScene,
    downsamples: Sequence[int] = (1, 4, 16),
    quality: int = 90,
    workers: int = 1,
) -> dict:
    """Write a synthetic lymph-node slide (e.g. of ``make_scene(...)``) and its ground truth; return the truth
    record."""
    path = Path(path)
    write_slide(
        path, scene, scene.width0, scene.height0, scene.mpp, downsamples, quality=quality, workers=workers
    )
    files = truth_paths(path)
    geojson = truth_geojson(scene)
    files["geojson"].write_text(json.dumps(geojson) + "\n")
    Image.fromarray(scene.tumour_mask(MASK_DOWNSAMPLE).astype(np.uint8) * 255).save(files["mask"])
    metastases = []
    for feature in geojson["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])[:-1]
        metastases.append(
            {
                "id": feature["id"],
                "area_um2": round(feature["properties"]["area_um2"], 1),
                "diameter_um": round(feature["properties"]["diameter_um"], 1),
                "centroid_level0": ring.mean(axis=0).round(1).tolist(),
            }
        )
    truth = {
        "slide": path.name,
        "width0": scene.width0,
        "height0": scene.height0,
        "mpp": scene.mpp,
        "seed": scene.seed,
        "generator": "wsi_pipeline.synthetic.scene.make_scene",
        "mask": {"file": files["mask"].name, "downsample": MASK_DOWNSAMPLE},
        "geojson": files["geojson"].name,
        "metastases": metastases,
        "tumour_area_um2": round(sum(m["area_um2"] for m in metastases), 1),
    }
    files["json"].write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def read_truth_polygons(slide_path: str | Path) -> list[np.ndarray]:
    """The ground-truth tumour polygons of a synthetic slide, (n, 2) arrays of level-0 (x, y)."""
    path = truth_paths(slide_path)["geojson"]
    if not path.is_file():
        raise InputError(slide_path, f"no ground truth beside it ({path.name}); is it a wsi-synth slide?")
    geojson = json.loads(path.read_text())
    return [np.asarray(f["geometry"]["coordinates"][0], np.float64) for f in geojson["features"]]


def _square_samples(x0: np.ndarray, y0: np.ndarray, side: float, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """n × n sample points per square ``[x0, x0+side) × [y0, y0+side)``, at the centres of its sub-squares."""
    offsets = (np.arange(n) + 0.5) * side / n
    x = x0[:, None, None] + offsets[None, None, :]
    y = y0[:, None, None] + offsets[None, :, None]
    return np.broadcast_to(x, (len(x0), n, n)).reshape(-1), np.broadcast_to(y, (len(y0), n, n)).reshape(-1)


def patch_labels(
    polygons: list[np.ndarray], x0_level0: np.ndarray, y0_level0: np.ndarray, ds: float
) -> tuple[np.ndarray, np.ndarray]:
    """PCam's two labels of 96-px patches with level-0 corners (x0, y0) at ``ds`` level-0 px per target px:
    tumour anywhere in the patch, and tumour in its centre 32 × 32 (the training label). Sampled on
    8 × 8 points per centre square and 24 × 24 per patch, i.e. every 4 target px."""
    n = len(x0_level0)
    offset = (PATCH - CENTRE) / 2 * ds
    centre = points_in_polygons(
        polygons, *_square_samples(x0_level0 + offset, y0_level0 + offset, CENTRE * ds)
    )
    centre = centre.reshape(n, -1).any(axis=1)
    anywhere = points_in_polygons(polygons, *_square_samples(x0_level0, y0_level0, PATCH * ds, 24))
    return centre, anywhere.reshape(n, -1).any(axis=1) | centre


def _random_points_in(polygons: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniformly inside the union of polygons (rejection sampling; polygons chosen by area)."""
    areas = np.array([polygon_area(ring) for ring in polygons])
    chosen = rng.choice(len(polygons), size=n, p=areas / areas.sum())
    out = np.empty((n, 2))
    for index in range(len(polygons)):
        todo = np.flatnonzero(chosen == index)
        ring = polygons[index]
        (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
        while len(todo):
            candidates = rng.uniform((x0, y0), (x1, y1), size=(len(todo) * 2 + 8, 2))
            inside = candidates[points_in_polygons([ring], *candidates.T)][: len(todo)]
            out[todo[: len(inside)]] = inside
            todo = todo[len(inside) :]
    return out


def sample_patches(
    slide_path: str | Path,
    n_patches: int,
    rng: np.random.Generator,
    positive_fraction: float = 0.5,
    mpp_out: float = PCAM_MPP,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """PCam-style 96 × 96 patches at ``mpp_out`` read from a synthetic slide: about ``positive_fraction``
    centred on tumour (when the slide has any), the rest anywhere in the detected tissue. Labels are
    computed from the ground truth for every patch, wherever it was drawn. Returns (patches, labels, meta)."""
    polygons = read_truth_polygons(slide_path)
    with Slide(slide_path) as slide:
        ds = mpp_out / slide.mpp  # level-0 px per target px
        tissue = detect_tissue(slide.thumbnail(TISSUE_MPP), TISSUE_MPP)
        n_positive = round(n_patches * positive_fraction) if polygons else 0
        rows, cols = np.nonzero(tissue.mask)
        picks = rng.integers(len(rows), size=n_patches - n_positive)
        tissue_ds = TISSUE_MPP / slide.mpp
        centres_level0 = np.concatenate(
            [
                _random_points_in(polygons, n_positive, rng) if n_positive else np.empty((0, 2)),
                np.stack(
                    [cols[picks] + rng.uniform(size=len(picks)), rows[picks] + rng.uniform(size=len(picks))],
                    1,
                )
                * tissue_ds,
            ]
        )
        # patch corners in whole target pixels: every patch is read on the same sampling lattice
        x0_out = np.round(centres_level0[:, 0] / ds - PATCH / 2)
        y0_out = np.round(centres_level0[:, 1] / ds - PATCH / 2)
        centre_label, any_tumour = patch_labels(polygons, x0_out * ds, y0_out * ds, ds)
        patches = np.stack(
            [slide.read_at_mpp(x, y, PATCH, PATCH, mpp_out) for x, y in zip(x0_out, y0_out, strict=True)]
        )
    meta = [
        {
            "coord_y": round(y * ds),
            "coord_x": round(x * ds),
            "tumor_patch": bool(a),
            "center_tumor_patch": bool(c),
            "wsi": Path(slide_path).name,
        }
        for x, y, a, c in zip(x0_out, y0_out, any_tumour, centre_label, strict=True)
    ]
    return patches, centre_label.astype(np.int64), meta


def write_patch_split(
    slide_paths: Sequence[str | Path],
    out_folder: str | Path,
    split: str,
    patches_per_slide: int,
    seed: int,
    positive_fraction: float = 0.5,
) -> dict:
    """Sample every slide and write one PCam-format split (x, y and meta files; patches shuffled within each
    slide); return patches per class."""
    rng = np.random.default_rng(seed)
    meta: list[dict] = []

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for path in slide_paths:
            patches, labels, rows = sample_patches(path, patches_per_slide, rng, positive_fraction)
            order = rng.permutation(len(labels))
            meta.extend(rows[i] for i in order)
            yield patches[order], labels[order]

    return write_pcam_split(out_folder, split, chunks(), meta)
