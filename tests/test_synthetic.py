"""Synthetic H&E slides: ground truth consistent with the pixels, reproducible, readable, sampled honestly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage.measure import points_in_poly

from wsi_pipeline import Slide, detect_tissue
from wsi_pipeline.cli.synth import main as synth_main
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.core.polygons import polygon_area, signed_area
from wsi_pipeline.datasets.patches import open_patch_dataset
from wsi_pipeline.synthetic.scene import LYMPHOID, STROMA, TUMOUR, make_scene
from wsi_pipeline.synthetic.sets import (
    MASK_DOWNSAMPLE,
    patch_labels,
    read_truth_polygons,
    sample_patches,
    truth_paths,
    write_synthetic_slide,
)

WIDTH0, HEIGHT0, MPP = 3200, 2400, 0.5
SCENE = make_scene(WIDTH0, HEIGHT0, MPP, seed=5, n_metastases=3, metastasis_diameter_um=(40, 400))


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("he") / "node.svs"
    truth = write_synthetic_slide(path, SCENE)
    return path, truth


def test_truth_files_agree_with_each_other(he_slide):
    path, truth = he_slide
    files = truth_paths(path)
    geojson = json.loads(files["geojson"].read_text())
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == 3 == len(
        truth["metastases"]
    )
    polygons = read_truth_polygons(path)
    for feature, ring, record in zip(geojson["features"], polygons, truth["metastases"], strict=True):
        assert feature["geometry"]["type"] == "Polygon"
        assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 4  # closed linear ring
        assert signed_area(ring[:-1]) > 0  # RFC 7946: exterior rings counter-clockwise
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] == "Tumor"
        area_um2 = polygon_area(ring[:-1]) * MPP**2
        assert record["area_um2"] == pytest.approx(area_um2, rel=1e-3)
        assert 40 * 0.5 <= record["diameter_um"] <= 400 * 1.5
    # the mask is the polygons rasterised: compare at the mask's pixel centres
    mask = np.asarray(Image.open(files["mask"])) > 0
    assert mask.shape == (HEIGHT0 // MASK_DOWNSAMPLE, WIDTH0 // MASK_DOWNSAMPLE)
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    centres = np.stack([(cols.ravel() + 0.5) * MASK_DOWNSAMPLE, (rows.ravel() + 0.5) * MASK_DOWNSAMPLE], 1)
    from_polygons = np.zeros(mask.size, bool)
    for ring in polygons:
        from_polygons |= points_in_poly(centres, ring)
    assert mask.sum() > 50
    assert (from_polygons.reshape(mask.shape) != mask).sum() <= 0.01 * mask.sum()
    tumour_um2 = mask.sum() * (MASK_DOWNSAMPLE * MPP) ** 2
    assert tumour_um2 == pytest.approx(truth["tumour_area_um2"], rel=0.1)


def test_slide_pixels_show_the_scene(he_slide):
    path, _ = he_slide
    with Slide(path, backend="openslide") as a, Slide(path, backend="tiffslide") as b:
        assert a.mpp == b.mpp == MPP and a.level_dimensions == b.level_dimensions
        assert a.level_dimensions == (
            (WIDTH0, HEIGHT0),
            (WIDTH0 // 4, HEIGHT0 // 4),
            (WIDTH0 // 16, HEIGHT0 // 16),
        )
        level0 = a.read_level(0, 0, 0, WIDTH0, HEIGHT0)
        assert np.array_equal(level0, b.read_level(0, 0, 0, WIDTH0, HEIGHT0))
        # reduced levels are box averages of level 0 (up to JPEG error)
        level1 = a.read_level(1, 0, 0, WIDTH0 // 4, HEIGHT0 // 4).astype(np.float64)
        reduced = level0.reshape(HEIGHT0 // 4, 4, WIDTH0 // 4, 4, 3).mean(axis=(1, 3))
        assert np.abs(level1 - reduced).mean() < 4
        tissue = detect_tissue(a.thumbnail(8.0), 8.0)
    # detected tissue matches the scene's tissue, and holds every metastasis
    ds = 8.0 / MPP
    h, w = tissue.mask.shape
    x, y = (np.arange(w) + 0.5) * ds, (np.arange(h) + 0.5) * ds
    labels = SCENE.labels(x[None, :], y[:, None])
    truth_tissue = labels > 0
    iou = (truth_tissue & tissue.mask).sum() / (truth_tissue | tissue.mask).sum()
    assert iou > 0.95
    assert tissue.mask[labels == TUMOUR].mean() > 0.99
    # tumour is darker (more haematoxylin) than stroma; lymphoid tissue is a good part of the node
    x0, y0 = (np.arange(WIDTH0) + 0.5), (np.arange(HEIGHT0) + 0.5)
    labels0 = SCENE.labels(x0[None, :], y0[:, None])
    brightness = level0.mean(axis=2)
    assert brightness[labels0 == TUMOUR].mean() < brightness[labels0 == STROMA].mean() - 20
    assert (labels0 == LYMPHOID).sum() > 0.3 * (labels0 > 0).sum()


def test_same_seed_same_file_with_any_number_of_workers(tmp_path):
    # the same seed makes the same scene; the same scene makes the same file, however it is rendered
    assert make_scene(1500, 1100, 0.5, 9, 1, (40, 100)) == make_scene(1500, 1100, 0.5, 9, 1, (40, 100))
    scene = make_scene(1500, 1100, 0.5, 9, 1, (40, 100))
    a = write_synthetic_slide(tmp_path / "a.svs", scene)
    b = write_synthetic_slide(tmp_path / "b.svs", scene, workers=2)
    assert a["metastases"] == b["metastases"]
    assert file_sha256(tmp_path / "a.svs") == file_sha256(tmp_path / "b.svs")
    assert not list(tmp_path.glob(".*"))  # the pyramid's scratch files are gone


def test_patch_labels_follow_pcam_centre_rule():
    square = np.array([[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]], float)  # tumour: level-0 [0, 100)²
    ds = 2.0  # level-0 px per target px: a patch spans 192 level-0 px, its centre square [64, 128)
    x0 = np.array([-64.0, -64.0 - 60, -64.0 - 140, 150.0])
    y0 = np.array([-64.0, -64.0, -64.0, 150.0])
    centre, anywhere = patch_labels([square], x0, y0, ds)
    # centre squares (level-0 x): [0, 64) all tumour; [-60, 4) touches it; [-140, -76) misses, and so does
    # its whole patch [-204, -12); the last patch lies beyond the tumour
    assert centre.tolist() == [True, True, False, False]
    assert anywhere.tolist() == [True, True, False, False]
    centre, anywhere = patch_labels([square], np.array([-150.0]), np.array([0.0]), ds)
    assert (centre[0], anywhere[0]) == (False, True)  # tumour at the patch's edge only


def test_sampled_patches_are_labelled_by_the_truth(he_slide):
    path, _ = he_slide
    patches, labels, meta = sample_patches(path, 60, np.random.default_rng(0), positive_fraction=0.5)
    assert patches.shape == (60, 96, 96, 3) and patches.dtype == np.uint8
    assert labels.sum() >= 30  # the tumour-centred half, plus any tissue patch that happens to hit tumour
    ds = 0.972 / MPP
    for patch, label, row in zip(patches, labels, meta, strict=True):
        assert row["center_tumor_patch"] == bool(label) and row["wsi"] == "node.svs"
        # the exact scene on a fine grid of the centre square agrees with the polygon-based label
        offsets = (np.arange(32) + 0.5) * ds
        x = row["coord_x"] + 32 * ds + offsets
        y = row["coord_y"] + 32 * ds + offsets
        exact = SCENE.tumour(x[None, :], y[:, None]).any()
        assert exact == bool(label) or abs(SCENE.tumour(x[None, :], y[:, None]).mean()) < 0.01
        if label:
            assert patch[32:64, 32:64].mean() < 200  # tumour centres are stained, never background


def test_wsi_synth_cli_writes_slides_and_a_pcam_split(tmp_path, capsys):
    slides_args = ["--count", "2", "--width", "1600", "--height", "1200", "--seed", "3"]
    slides_args += ["--negative-fraction", "0", "--max-metastases", "1", "--diameter-um", "60", "150"]
    assert synth_main(["slides", str(tmp_path / "slides"), *slides_args, "--workers", "1"]) == 0
    slides = sorted((tmp_path / "slides").glob("*.svs"))
    assert [p.name for p in slides] == ["synthetic_3_000.svs", "synthetic_3_001.svs"]
    patch_args = ["--out", str(tmp_path / "pcam"), "--split", "valid", "--per-slide", "20", "--seed", "1"]
    assert synth_main(["patches", str(tmp_path / "slides"), *patch_args]) == 0
    with open_patch_dataset(tmp_path / "pcam", split="valid") as data:
        assert len(data) == 40
        patches, labels = data.read_batch(np.arange(40))
        assert 10 <= labels.sum() <= 40 and patches.std() > 10
    meta = (tmp_path / "pcam" / "camelyonpatch_level_2_split_valid_meta.csv").read_text().splitlines()
    assert len(meta) == 41 and meta[0].endswith("coord_y,coord_x,tumor_patch,center_tumor_patch,wsi")
    assert synth_main(["patches", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "nothing" in capsys.readouterr().err
