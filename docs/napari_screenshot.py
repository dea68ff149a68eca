"""Make ``docs/napari_screenshot.png``: the bundled synthetic sample, scored by the default model, in napari.

Needs the ``napari`` extra and a display; headless::

    xvfb-run -a -s "-screen 0 1280x1024x24" python docs/napari_screenshot.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLIDE = REPO / "sample_slides" / "synthetic-node_19_000.svs"
OUT_PNG = REPO / "docs" / "napari_screenshot.png"
WINDOW = (1280, 820)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["NAPARI_CONFIG"] = str(Path(scratch) / "napari.yaml")  # leave the user's settings alone
        import napari

        from wsi_pipeline import score_slides
        from wsi_pipeline.findings.regions import find_regions
        from wsi_pipeline.model.bundled import DEFAULT_MODEL
        from wsi_pipeline.napari.layers import HEATMAP_KEY

        [result] = score_slides([SLIDE], DEFAULT_MODEL, scratch, scheduler="threads", show_progress=False)
        viewer = napari.Viewer(title="wsi_pipeline: synthetic-node_19_000")
        viewer.window.resize(*WINDOW)
        viewer.open(str(result.heatmap), plugin="wsi-pipeline")  # the slide, tissue, heatmap and regions
        _, widget = viewer.window.add_plugin_dock_widget("wsi-pipeline", "Score slide")
        widget.update_regions()
        heatmap = widget.heatmap_layer().metadata[HEATMAP_KEY]
        [region] = find_regions(heatmap, widget.threshold_slider.value())
        x, y = region.centroid_level0
        widget.cell_label.setText(widget.describe_point((y * heatmap.grid.mpp0, x * heatmap.grid.mpp0)))
        viewer.reset_view()
        napari.qt.get_qapp().processEvents()
        viewer.screenshot(str(OUT_PNG), canvas_only=False, flash=False)
        viewer.close()
    print(f"wrote {OUT_PNG}")


if __name__ == "__main__":
    main()
