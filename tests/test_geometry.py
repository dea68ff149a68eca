"""Round trips: dark regions at known level-0 places score exactly the heatmap cells over them."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pipeline import ScoreOptions, read_heatmap, score_slide
from wsi_pipeline.model.card import IMAGENET_MEAN, IMAGENET_STD

from .conftest import DARK, PINK, count_patches, make_slide

# Dark rectangles in target pixels (x0, y0, x1, y1) at 0.972 µm/px; deliberately not aligned to cells.
DARK_TARGET = [(250.0, 300.0, 530.0, 585.0), (805.0, 655.0, 1010.0, 905.0)]
WIDTH_TARGET, HEIGHT_TARGET = 1290, 1075  # 13 × 11 cells at stride 96 (a 5-cell block does not divide it)
TISSUE_TARGET = (WIDTH_TARGET * 0.12, HEIGHT_TARGET * 0.15, WIDTH_TARGET * 0.88, HEIGHT_TARGET * 0.85)
# Tolerance in units of 'fraction of the centre square that is dark': 0.06 ≈ 2 target pixels of misplacement.
TOLERANCE = 0.06


def expected_logit(grid, scene, supersample=4):
    """The probe's exact logit per cell, from the scene itself rendered at ``supersample``× the target
    resolution: the mean colour of each cell's centre 32×32 target pixels."""
    n_rows, n_cols = grid.shape
    step = grid.ds / supersample  # level-0 pixels per rendered pixel
    height, width = (n_rows - 1) * grid.stride + 96, (n_cols - 1) * grid.stride + 96
    image = scene.render(0, 0, width * supersample, height * supersample, step).astype(np.float64) / 255
    side = 32 * supersample
    colour = np.empty((n_rows, n_cols, 3))
    for row in range(n_rows):
        for col in range(n_cols):
            y0, x0 = (row * grid.stride + 32) * supersample, (col * grid.stride + 32) * supersample
            colour[row, col] = image[y0 : y0 + side, x0 : x0 + side].mean(axis=(0, 1))
    return -((colour - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).sum(-1)


def probe_logit(rgb):
    return -((np.array(rgb) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).sum()


def logit(p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@pytest.mark.parametrize(
    ("mpp", "downsamples", "stride", "backend"),
    [
        (0.25, (1, 4, 16), 96, "tiffslide"),
        (0.5, (1, 4, 16), 96, "openslide"),
        (1.0, (1, 4), 96, "tiffslide"),
        (0.25, (1,), 96, "openslide"),
        (0.5, (1, 4, 16), 32, "tiffslide"),
        (0.25, (1, 4, 16), 48, "openslide"),
    ],
)
def test_dark_regions_light_up_their_cells(tmp_path, probe_model, client, mpp, downsamples, stride, backend):
    ds = 0.972 / mpp
    dark_level0 = [tuple(v * ds for v in box) for box in DARK_TARGET]
    width0, height0 = round(WIDTH_TARGET * ds), round(HEIGHT_TARGET * ds)
    scene = make_slide(tmp_path / "s.svs", width0, height0, mpp, dark_level0, downsamples)
    options = ScoreOptions(stride=stride, block_cells=5, backend=backend)
    result = score_slide(
        tmp_path / "s.svs", probe_model, tmp_path / "out", client=client, options=options, show_progress=False
    )
    heatmap = read_heatmap(result.heatmap)
    grid = heatmap.grid
    assert heatmap.complete and grid.stride == stride and grid.mpp0 == mpp
    assert grid.shape == ((HEIGHT_TARGET - 96) // stride + 1, (WIDTH_TARGET - 96) // stride + 1)

    expected = expected_logit(grid, scene)
    unit = probe_logit(DARK) - probe_logit(PINK)
    error = (logit(heatmap.probabilities[1]) - expected) / unit
    scored = heatmap.tissue
    assert np.abs(error[scored]).max() < TOLERANCE, "a cell's score does not match its place in the slide"
    assert (heatmap.probabilities[1][scored] > 0.9).sum() >= 4  # the dark regions were hit

    # Tissue: cells well inside the pink rectangle are scored; cells on the white margin never are.
    tissue_target = TISSUE_TARGET
    rows, cols = np.indices(grid.shape)
    x0, y0 = cols * stride, rows * stride
    in_tissue = (x0 >= tissue_target[0] + 24) & (x0 + 96 <= tissue_target[2] - 24)
    in_tissue &= (y0 >= tissue_target[1] + 24) & (y0 + 96 <= tissue_target[3] - 24)
    off_tissue = (x0 + 96 <= tissue_target[0] - 24) | (x0 >= tissue_target[2] + 24)
    off_tissue |= (y0 + 96 <= tissue_target[1] - 24) | (y0 >= tissue_target[3] + 24)
    assert heatmap.tissue[in_tissue].all() and not heatmap.tissue[off_tissue].any()
    assert np.isnan(heatmap.probabilities[:, ~heatmap.tissue]).all()
    assert np.isfinite(heatmap.probabilities[:, heatmap.tissue]).all()
    assert heatmap.metadata.patches_scored == int(heatmap.tissue.sum())


def test_openslide_and_tiffslide_give_the_same_heatmap(tmp_path, probe_model, client):
    ds = 0.972 / 0.5
    dark_level0 = [tuple(v * ds for v in box) for box in DARK_TARGET]
    make_slide(tmp_path / "s.svs", round(WIDTH_TARGET * ds), round(HEIGHT_TARGET * ds), 0.5, dark_level0)
    heatmaps = []
    for backend in ("openslide", "tiffslide"):  # tiffslide without JPEG scaling, which openslide lacks
        options = ScoreOptions(backend=backend, block_cells=4, jpeg_scaling="off")
        result = score_slide(
            tmp_path / "s.svs",
            probe_model,
            tmp_path / backend,
            client=client,
            options=options,
            show_progress=False,
        )
        heatmaps.append(read_heatmap(result.heatmap))
    np.testing.assert_array_equal(heatmaps[0].tissue, heatmaps[1].tissue)
    np.testing.assert_allclose(heatmaps[0].probabilities, heatmaps[1].probabilities, atol=1e-6)


def test_background_cells_are_never_given_to_the_model(tmp_path, probe_model, client, monkeypatch):
    make_slide(tmp_path / "s.svs", 2600, 2200, 0.5, [])
    scored = count_patches(monkeypatch)
    options = ScoreOptions(block_cells=4)
    result = score_slide(
        tmp_path / "s.svs", probe_model, tmp_path / "out", client=client, options=options, show_progress=False
    )
    heatmap = read_heatmap(result.heatmap)
    assert 0 < sum(scored) == heatmap.tissue.sum() < heatmap.tissue.size
