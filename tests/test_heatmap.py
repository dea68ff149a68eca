"""The heatmap store: OME-NGFF 0.5 placement, pyramid, completion flag, and reading back."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsi_pipeline import Block, InputError, PatchGrid, read_heatmap
from wsi_pipeline.store.heatmap import HeatmapWriter
from wsi_pipeline.store.ngff import level_shapes

from .conftest import heatmap_record

GRID = PatchGrid(width0=9000, height0=7000, mpp0=0.25, target_mpp=0.972, patch_size=96, stride=32)


def write(tmp_path, finalise=True):
    writer = HeatmapWriter(tmp_path / "h.zarr", GRID, ["normal", "tumour"], 16, heatmap_record(GRID))
    tissue = np.zeros(GRID.shape, bool)
    tissue[:20, :30] = True
    writer.write_tissue(tissue)
    block = Block(0, 16, 16, 16)
    values = np.stack([np.full((16, 16), 0.25), np.full((16, 16), 0.75)]).astype(np.float32)
    writer.write_block(block, values)
    if finalise:
        writer.finalise(devices=["cpu"])
    return tissue


def test_ngff_transforms_place_each_value_at_its_patch_centre(tmp_path):
    write(tmp_path)
    ome = zarr.open_group(tmp_path / "h.zarr", mode="r").attrs["ome"]
    multiscale = ome["multiscales"][0]
    assert ome["version"] == "0.5"
    assert [(a["name"], a.get("unit")) for a in multiscale["axes"]] == [
        ("c", None),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    level0, level1 = multiscale["datasets"][:2]
    scale0 = level0["coordinateTransformations"][0]["scale"]
    translation0 = level0["coordinateTransformations"][1]["translation"]
    assert scale0 == pytest.approx([1, 32 * 0.972, 32 * 0.972])
    assert translation0 == pytest.approx([0, 48 * 0.972, 48 * 0.972])  # centre of patch (0, 0)
    # Level 1 merges 2×2 cells: its first value sits halfway between the centres of cells 0 and 1.
    assert level1["coordinateTransformations"][0]["scale"] == pytest.approx([1, 64 * 0.972, 64 * 0.972])
    assert level1["coordinateTransformations"][1]["translation"] == pytest.approx([0, 64 * 0.972, 64 * 0.972])
    assert [c["label"] for c in ome["omero"]["channels"]] == ["normal", "tumour"]


def test_pyramid_and_labels(tmp_path):
    tissue = write(tmp_path)
    root = zarr.open_group(tmp_path / "h.zarr", mode="r")
    shapes = level_shapes(GRID.shape)
    assert len(shapes) >= 2
    for level, shape in enumerate(shapes):
        assert root[str(level)].shape == (2, *shape)
        assert root[f"labels/tissue/{level}"].shape == shape
    assert root["labels"].attrs["ome"]["labels"] == ["tissue"]
    assert "image-label" in root["labels/tissue"].attrs["ome"]
    level1 = root["1"][...]
    np.testing.assert_allclose(level1[1, 0, 8:16], 0.75)  # mean of 2×2 cells that were all scored
    assert np.isnan(level1[:, 10:, :]).all()  # nothing scored there
    np.testing.assert_array_equal(root["labels/tissue/1"][...][:10, :15], 1)
    heatmap = read_heatmap(tmp_path / "h.zarr")
    np.testing.assert_array_equal(heatmap.tissue, tissue)
    assert heatmap.grid == GRID and heatmap.complete and heatmap.class_names == ["normal", "tumour"]


def test_unfinished_heatmap_is_not_complete(tmp_path):
    write(tmp_path, finalise=False)
    heatmap = read_heatmap(tmp_path / "h.zarr")
    assert not heatmap.complete
    np.testing.assert_allclose(heatmap.probabilities[1, :16, 16:32], 0.75)


def test_foreign_zarr_is_refused(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("0", shape=(2, 2), dtype="f4")
    with pytest.raises(InputError, match="not a wsi_pipeline heatmap"):
        read_heatmap(tmp_path / "other.zarr")
