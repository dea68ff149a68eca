"""Dock widget: the patch of the heatmap cell last clicked, at full resolution (the model's µm/px, as scoring
read it), beside its Grad-CAM saliency of the tumour class (``findings.review``)."""

from __future__ import annotations

import napari
import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from wsi_pipeline.core.classes import tumour_class_index
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.findings.review import saliency_overlay, tile_caption, tile_saliency
from wsi_pipeline.napari.layers import HEATMAP_KEY, cell_at, current_heatmap_layer, tumour_name
from wsi_pipeline.scoring.worker import SlideSource, worker_slide
from wsi_pipeline.store.heatmap import Heatmap
from wsi_pipeline.tiling.patches import read_cell_patches

VIEW_PX = 200  # the patch is drawn at the largest whole zoom that fits this (96 px: 2×), pixels kept sharp
HINT = "Click a cell of the heatmap to see its patch and where the model saw tumour."


def pixmap(image: np.ndarray, zoom: int) -> QPixmap:
    """An RGB uint8 image as a pixmap, each pixel drawn ``zoom`` × ``zoom``."""
    zoomed = np.ascontiguousarray(image.repeat(zoom, axis=0).repeat(zoom, axis=1))
    height, width = zoomed.shape[:2]
    return QPixmap.fromImage(
        QImage(zoomed.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    )


class PatchPanel(QWidget):
    """The patch of a heatmap cell and its saliency, shown when a cell of the heatmap is clicked (or by
    ``show_cell``). ``patch`` and ``saliency`` hold what is shown: the uint8 patch and its map in [0, 1]
    (None when the model has none; the caption says why)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.patch: np.ndarray | None = None
        self.saliency: np.ndarray | None = None
        self.patch_view, self.saliency_view, self.caption = QLabel(), QLabel(), QLabel(HINT)
        self.caption.setWordWrap(True)
        pictures = QHBoxLayout()
        pictures.addWidget(self.patch_view)
        pictures.addWidget(self.saliency_view)
        pictures.addStretch()
        layout = QVBoxLayout(self)
        layout.addLayout(pictures)
        layout.addWidget(self.caption)
        layout.addStretch()
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(_detach(self.viewer, self._on_click))

    def show_cell(self, row: int, col: int, heatmap: Heatmap | None = None) -> None:
        """Show cell (row, col) of ``heatmap`` (default: the heatmap acted on, selected or top): its patch
        read from the slide, its saliency, its tumour probability and box."""
        if heatmap is None:
            layer = current_heatmap_layer(self.viewer)
            if layer is None:
                return
            heatmap = layer.metadata[HEATMAP_KEY]
        self.patch = self.saliency = None
        self.patch_view.clear()
        self.saliency_view.clear()
        probability = heatmap.probabilities[tumour_class_index(heatmap.class_names), row, col]
        box = heatmap.grid.cell_boxes_level0(np.array([row]), np.array([col]))[0]
        caption = f"Cell ({row}, {col}) · {tile_caption(probability, None, box)} level-0 px"
        if not heatmap.tissue[row, col]:
            self.caption.setText(f"{caption}\nbackground, not scored")
            return
        slide = heatmap.metadata.slide
        try:
            source = SlideSource(slide.path, slide.backend, slide.mpp, jpeg_scaling=slide.jpeg_scaling)
            with worker_slide(source) as opened:
                [self.patch] = read_cell_patches(opened, heatmap.grid, np.array([row]), np.array([col]))
        except InputError as error:
            self.caption.setText(f"{caption}\npatch not read ({error})")
            return
        maps, note = tile_saliency(heatmap.metadata, self.patch[None], tumour_name(heatmap))
        zoom = max(1, VIEW_PX // heatmap.grid.patch_size)
        self.patch_view.setPixmap(pixmap(self.patch, zoom))
        if maps is not None:
            self.saliency = maps[0]
            self.saliency_view.setPixmap(pixmap(saliency_overlay(self.patch, self.saliency), zoom))
        self.caption.setText(f"{caption}\n{note}")

    def _on_click(self, _viewer: napari.viewer.Viewer, event: object) -> None:
        layer = current_heatmap_layer(self.viewer)
        cell = None if layer is None else cell_at(layer, tuple(event.position))
        if cell is not None:
            self.show_cell(*cell, layer.metadata[HEATMAP_KEY])


def _detach(viewer: napari.viewer.Viewer, on_click: object) -> object:
    """A slot that removes a closed panel's click callback from the viewer (it must not hold the panel)."""

    def detach(*_: object) -> None:
        if on_click in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(on_click)

    return detach
