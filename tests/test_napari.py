"""The napari plugin: discovery, readers, layer geometry in µm, the scoring widget and what the canvas shows.

Runs under a real X server (``xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest``); skipped without
napari or a display.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[dev]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[dev]')")
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: run under xvfb-run (see .ci/run)", allow_module_level=True)
from wsi_pipeline import read_heatmap, score_slides
from wsi_pipeline.findings.summary import DEMONSTRATION_TITLE, NOT_ASSESSED, REAL_MODEL
from wsi_pipeline.napari.layers import TILE
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES, Slide
from wsi_pipeline.store.heatmap import read_record

from .conftest import CMU_SLIDE, make_slide

# napari fixes its settings file when napari.settings is first imported (by napari's own autouse fixtures, in
# the first test of the session), so it is set here, at collection; the folder goes when the session ends.
_SETTINGS = tempfile.TemporaryDirectory(prefix="napari-settings-")
os.environ["NAPARI_CONFIG"] = str(Path(_SETTINGS.name) / "settings.yaml")

PLUGIN = "wsi-pipeline"
MPP0 = 0.486  # half PCam's 0.972 µm/px: two level-0 px per target px
WIDTH0, HEIGHT0 = 2400, 2000  # a 10 × 12 grid of 96-px patches
DARK_CELLS = (3, 6, 4, 8)  # rows 3–5, cols 4–7 (end-exclusive): 12 cells the probe scores ~0.98
CELL0 = 96 * 2  # level-0 px per cell (stride 96 target px)
DARK_LEVEL0 = (DARK_CELLS[2] * CELL0, DARK_CELLS[0] * CELL0, DARK_CELLS[3] * CELL0, DARK_CELLS[1] * CELL0)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "node.svs"
    make_slide(path, WIDTH0, HEIGHT0, MPP0, [DARK_LEVEL0])
    return path


@pytest.fixture(scope="module")
def heatmap_path(slide_path, probe_model, client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    [result] = score_slides([slide_path], probe_model, out, client=client, show_progress=False)
    return result.heatmap


def dark_centre_um() -> tuple[float, float]:
    """(y, x) µm of the middle of the dark rectangle."""
    x0, y0, x1, y1 = DARK_LEVEL0
    return (y0 + y1) / 2 * MPP0, (x0 + x1) / 2 * MPP0


def test_manifest_is_discovered_and_covers_slide_suffixes():
    from npe2 import PluginManager

    plugins = PluginManager()
    plugins.discover()  # entry points of the installed packages, as napari does
    manifest = plugins.get_manifest(PLUGIN)
    [reader] = manifest.contributions.readers
    assert set(reader.filename_patterns) == {f"*{suffix}" for suffix in SLIDE_SUFFIXES} | {"*.zarr"}
    assert reader.accepts_directories
    assert [widget.display_name for widget in manifest.contributions.widgets] == [
        "Score slide",
        "Patch and saliency",
    ]


def test_reader_declines_what_is_not_ours(tmp_path):
    from wsi_pipeline.napari.reader import get_reader

    foreign = zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    foreign.create_array("0", shape=(4, 4), dtype="uint8")
    (tmp_path / "text.tif").write_text("not a slide")
    assert get_reader(str(tmp_path / "foreign.zarr")) is None
    assert get_reader(str(tmp_path / "text.tif")) is None
    assert get_reader(str(tmp_path)) is None


def test_slide_opens_lazily_as_multiscale_in_micrometres(make_napari_viewer, slide_path, monkeypatch):
    reads = []
    original = Slide.read_level

    def counting(self, level, x, y, width, height):
        reads.append((level, width, height))
        return original(self, level, x, y, width, height)

    monkeypatch.setattr(Slide, "read_level", counting)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(slide_path), plugin=PLUGIN)
    assert layer.multiscale and layer.rgb
    assert [level.shape for level in layer.data] == [(2000, 2400, 3), (500, 600, 3), (125, 150, 3)]
    assert all(type(level).__name__ == "Array" for level in layer.data)  # dask, not numpy
    np.testing.assert_allclose(layer.scale, (MPP0, MPP0))
    np.testing.assert_allclose(layer.translate, (MPP0 / 2, MPP0 / 2))
    assert reads and all(level > 0 and width * height <= TILE**2 for level, width, height in reads)


def test_heatmap_layers_lie_over_their_patches(make_napari_viewer, heatmap_path, slide_path):
    viewer = make_napari_viewer()
    slide, tissue, probability, regions = viewer.open(str(heatmap_path), plugin=PLUGIN)
    assert (slide._type_string, tissue._type_string, regions._type_string) == ("image", "labels", "shapes")
    assert probability.contrast_limits == [0.0, 1.0]
    grid = read_heatmap(heatmap_path).grid
    row, col = 4, 5  # a dark cell
    x0, y0, x1, y1 = grid.cell_boxes_level0(np.array([row]), np.array([col]))[0]
    centre_um = ((y0 + y1) / 2 * MPP0, (x0 + x1) / 2 * MPP0)
    np.testing.assert_allclose(probability.data_to_world((row, col)), centre_um)
    np.testing.assert_allclose(probability.world_to_data(centre_um), (row, col), atol=1e-9)
    np.testing.assert_allclose(tissue.world_to_data(centre_um), (row, col), atol=1e-9)
    # level-0 pixel i is centred at (i + 0.5)·mpp: the patch centre is pixel edge (x0 + x1) / 2
    np.testing.assert_allclose(slide.world_to_data(centre_um), ((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5))
    assert probability.data[row, col] > 0.9
    # one region: the dark cells' squares, sized in its features as in the summary
    assert regions.nshapes == 1 and regions.features["region"].tolist() == [1]
    (y_min, x_min), (y_max, x_max) = regions.data[0].min(0), regions.data[0].max(0)
    np.testing.assert_allclose((x_min, y_min, x_max, y_max), np.array(DARK_LEVEL0) * MPP0)
    np.testing.assert_allclose(regions.features["area_mm2"][0], 12 * (grid.cell_um / 1000) ** 2)
    # the same slide opened afterwards lands on the same place
    [again] = viewer.open(str(slide_path), plugin=PLUGIN)
    np.testing.assert_allclose(again.data_to_world((10, 20)), slide.data_to_world((10, 20)))


def run_score(widget, qtbot, model: Path | str, out: Path, block_cells: int) -> None:
    widget.model_box.setCurrentText(str(model))
    widget.out_edit.setText(str(out))
    widget.block_box.setValue(block_cells)
    widget.score_button.click()
    assert widget.worker is not None


def test_widget_scores_the_open_slide_and_canvas_shows_it(
    make_napari_viewer, qtbot, slide_path, probe_model, tmp_path
):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(slide_path), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Score slide")
    assert widget.slide_box.currentData() == str(slide_path)
    assert (widget.options().tta, widget.options().overwrite) == (False, False)
    widget.tta_box.setChecked(True)
    widget.afresh_box.setChecked(True)
    assert (widget.options().tta, widget.options().overwrite) == (True, True)
    widget.tta_box.setChecked(False)
    run_score(widget, qtbot, probe_model, tmp_path, block_cells=4)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("Done"), widget.status.text()
    store = tmp_path / "node.zarr"
    assert read_record(store).complete and (tmp_path / "node.summary.json").is_file()
    probability = widget.heatmap_layer()
    heatmap = read_heatmap(store)
    np.testing.assert_allclose(probability.data, heatmap.probabilities[1], equal_nan=True)
    assert widget.regions_label.text().startswith("1 region(s) ≥ 0.50")
    assert widget.notice_label.text() == ""  # not a demonstration model

    widget.threshold_slider.setValue(0.999)
    assert widget.regions_label.text().startswith("0 region(s)")
    assert viewer.layers["node regions"].nshapes == 0
    widget.threshold_slider.setValue(0.5)
    assert viewer.layers["node regions"].nshapes == 1

    cell_centre_um = np.asarray(probability.data_to_world((4, 5)))
    [on_click] = [f for f in viewer.mouse_drag_callbacks if getattr(f, "__self__", None) is widget]
    on_click(viewer, SimpleNamespace(type="mouse_press", position=(0, *cell_centre_um)))
    assert "Cell (4, 5)" in widget.cell_label.text() and "dark 0.9" in widget.cell_label.text()

    viewer.reset_view()
    qtbot.wait(50)
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert canvas.std() > 20  # not blank
    camera = viewer.scene.camera

    def pixel(y_um: float, x_um: float) -> np.ndarray:
        height, width = canvas.shape[:2]
        row = round(height / 2 + (y_um - camera.center[-2]) * camera.zoom)
        col = round(width / 2 + (x_um - camera.center[-1]) * camera.zoom)
        return canvas[row, col]

    red, green, blue = pixel(*dark_centre_um())  # viridis' yellow end over the dark rectangle
    assert green > 120 and blue < 80, (red, green, blue)
    red, green, blue = pixel(HEIGHT0 * 0.2 * MPP0, WIDTH0 * 0.2 * MPP0)  # pink tissue, low probability
    assert blue > green, (red, green, blue)
    assert (pixel(HEIGHT0 * 0.05 * MPP0, WIDTH0 * 0.05 * MPP0) > 240).all()  # background: no heatmap


def test_cancel_leaves_a_heatmap_that_wsi_score_resumes_to_the_uninterrupted_result(
    make_napari_viewer, qtbot, slide_path, probe_model, tmp_path, monkeypatch
):
    from wsi_pipeline.cli.score import main
    from wsi_pipeline.scoring.options import BlockWritten
    from wsi_pipeline.store.heatmap import DONE_ARRAY, HeatmapWriter

    written_blocks, write_block = [], HeatmapWriter.write_block

    def slow_write_block(self, block, probabilities):  # a slide that takes a while, so Cancel comes mid-run
        write_block(self, block, probabilities)
        written_blocks.append(block)
        time.sleep(0.1)

    monkeypatch.setattr(HeatmapWriter, "write_block", slow_write_block)
    viewer = make_napari_viewer()
    viewer.open(str(slide_path), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Score slide")
    run_score(widget, qtbot, probe_model, tmp_path / "out", block_cells=2)
    widget.worker.yielded.connect(lambda event: isinstance(event, BlockWritten) and widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("Cancelled"), widget.status.text()
    store = tmp_path / "out" / "node.zarr"
    cancelled = read_heatmap(store)
    assert not cancelled.complete and not (tmp_path / "out" / "node.zarr.lock").exists()
    # the store holds exactly the blocks written, each whole and marked done
    assert 0 < len(written_blocks) < int(zarr.open_group(store)[DONE_ARRAY].size)
    assert int(zarr.open_group(store)[DONE_ARRAY][...].sum()) == len(written_blocks)
    expected = np.zeros_like(cancelled.tissue)
    for block in written_blocks:
        expected[block.cells] = cancelled.tissue[block.cells]
    np.testing.assert_array_equal(np.isfinite(cancelled.probabilities[1]), expected)
    shown = widget.heatmap_layer().data  # the layer holds what the store holds
    np.testing.assert_array_equal(shown, cancelled.probabilities[1])

    # wsi-score with the widget's settings resumes it and ends where an uninterrupted run ends
    monkeypatch.undo()
    common = [str(slide_path), "--model", str(probe_model), "--scheduler", "threads", "--block-cells", "2"]
    assert main([*common, "-o", str(tmp_path / "out"), "-q"]) == 0
    assert main([*common, "-o", str(tmp_path / "fresh"), "-q"]) == 0
    resumed, fresh = read_heatmap(store), read_heatmap(tmp_path / "fresh" / "node.zarr")
    assert resumed.complete and len(resumed.metadata.resumed) == 1
    np.testing.assert_array_equal(resumed.probabilities, fresh.probabilities)

    # Score on a complete heatmap keeps it and shows it
    widget.score_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("Already scored"), widget.status.text()
    np.testing.assert_array_equal(widget.heatmap_layer().data, fresh.probabilities[1])
    assert len([layer for layer in viewer.layers if layer.name.startswith("node regions")]) == 1


def test_widget_says_when_a_demonstration_model_scored_real_tissue(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(CMU_SLIDE), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Score slide")
    assert widget.notice_label.text() == ""
    run_score(widget, qtbot, "centre-colour-probe", tmp_path, block_cells=16)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("Done"), widget.status.text()
    notice = widget.notice_label.text()
    assert notice.startswith(DEMONSTRATION_TITLE) and "centre-colour-probe" in notice and REAL_MODEL in notice
    assert widget.regions_label.text().endswith(f"mm, {NOT_ASSESSED}"), widget.regions_label.text()
    # the heatmap opened later says it too
    other = make_napari_viewer()
    _, again = other.window.add_plugin_dock_widget(PLUGIN, "Score slide")
    other.open(str(tmp_path / f"{CMU_SLIDE.stem}.zarr"), plugin=PLUGIN)
    assert again.notice_label.text() == notice
    other.layers.clear()
    assert again.notice_label.text() == ""


@pytest.fixture(scope="module")
def cnn_heatmap_path(slide_path, client, tmp_path_factory) -> Path:
    """The test slide scored by the bundled CNN (which Grad-CAM explains)."""
    out = tmp_path_factory.mktemp("cnn-results")
    [result] = score_slides([slide_path], "synthetic-pcam-cnn", out, client=client, show_progress=False)
    return result.heatmap


def qt_rgb(image) -> np.ndarray:
    """An RGB uint8 array of a QImage (or QPixmap)."""
    from qtpy.QtGui import QImage

    image = (image if isinstance(image, QImage) else image.toImage()).convertToFormat(
        QImage.Format.Format_RGB888
    )
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 3 * image.width()].reshape(image.height(), image.width(), 3).copy()


def test_clicking_a_cell_shows_its_patch_and_saliency_in_the_panel(
    make_napari_viewer, qtbot, cnn_heatmap_path, slide_path
):
    import torch

    from wsi_pipeline.findings.review import saliency_overlay
    from wsi_pipeline.model.predict import Model

    viewer = make_napari_viewer(show=True)
    viewer.open(str(cnn_heatmap_path), plugin=PLUGIN)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Patch and saliency")
    probability = next(layer for layer in viewer.layers if layer.name.endswith("tumour probability"))
    row, col = 4, 5  # a dark cell
    [on_click] = [f for f in viewer.mouse_drag_callbacks if getattr(f, "__self__", None) is panel]
    on_click(
        viewer, SimpleNamespace(type="mouse_press", position=(0, *probability.data_to_world((row, col))))
    )
    with Slide(slide_path) as slide:  # the patch read directly, at the model's µm/px
        patch = slide.read_at_mpp(col * 96, row * 96, 96, 96, 0.972)
    np.testing.assert_array_equal(panel.patch, patch)
    expected = Model("synthetic-pcam-cnn", torch.device("cpu")).explain(patch[None])[0]
    np.testing.assert_allclose(panel.saliency, expected, atol=1e-5)
    assert panel.caption.text().startswith(f"Cell ({row}, {col}) · p 0.")
    assert "saliency: Grad-CAM of tumour" in panel.caption.text()
    # what the panel draws: each patch pixel 2 × 2, and the saliency over it
    np.testing.assert_array_equal(qt_rgb(panel.patch_view.pixmap())[::2, ::2], patch)
    overlay = saliency_overlay(patch, panel.saliency)
    np.testing.assert_array_equal(qt_rgb(panel.saliency_view.pixmap())[::2, ::2], overlay)
    qtbot.wait(50)
    screenshot = qt_rgb(panel.grab())  # the panel on screen
    corner = panel.patch_view.mapTo(panel, panel.patch_view.contentsRect().topLeft())
    top = corner.y() + (panel.patch_view.height() - 192) // 2  # a label centres its pixmap vertically
    np.testing.assert_array_equal(screenshot[top : top + 192 : 2, corner.x() : corner.x() + 192 : 2], patch)

    panel.show_cell(0, 0)  # background: no patch
    assert panel.patch is None and "background, not scored" in panel.caption.text()


def test_the_panel_says_when_the_model_has_no_saliency(make_napari_viewer, heatmap_path, slide_path):
    viewer = make_napari_viewer()
    viewer.open(str(heatmap_path), plugin=PLUGIN)  # scored by the centre-colour probe
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Patch and saliency")
    panel.show_cell(4, 5)
    with Slide(slide_path) as slide:
        np.testing.assert_array_equal(panel.patch, slide.read_at_mpp(5 * 96, 4 * 96, 96, 96, 0.972))
    assert panel.saliency is None and panel.saliency_view.pixmap().isNull()
    assert panel.caption.text().endswith(
        "saliency not available: the model has no convolutional stage for Grad-CAM"
    )
