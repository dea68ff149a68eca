"""Dock widget: score the open slide in a worker thread, watch the heatmap fill in, threshold, probe cells."""

from __future__ import annotations

import threading
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Layer, Shapes
from napari.qt.threading import GeneratorWorker, thread_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from wsi_pipeline.findings.options import DEFAULT_REPORTS
from wsi_pipeline.findings.regions import find_regions
from wsi_pipeline.findings.summary import category_words, demonstration_notice, reported_category
from wsi_pipeline.model.bundled import DEFAULT_MODEL, bundled_models_dir
from wsi_pipeline.model.device import cuda_devices
from wsi_pipeline.napari.layers import (
    HEATMAP_KEY,
    SLIDE_KEY,
    THRESHOLD_KEY,
    cell_at,
    current_heatmap_layer,
    heatmap_layers,
    heatmap_name,
    update_regions,
)
from wsi_pipeline.napari.scoring import score_events
from wsi_pipeline.scoring.options import BlockWritten, ScoreOptions, SlidePlanned, SlideResult
from wsi_pipeline.store.heatmap import UNREADABLE, Heatmap, read_heatmap


def bundled_model_names() -> list[str]:
    return sorted(p.name for p in bundled_models_dir().iterdir() if p.is_dir() and p.name[0] not in "._")


def _with_browse(field: QWidget, on_browse: object) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("Browse…")
    button.clicked.connect(on_browse)
    layout.addWidget(field, stretch=1)
    layout.addWidget(button)
    return row


class ScoreWidget(QWidget):
    """Model, device, stride and tissue threshold; Score/Cancel with progress; the tumour threshold of the
    regions; the probabilities of the cell last clicked; the demonstration-model notice of the heatmap shown,
    when it has one (``findings.summary.demonstration_notice``)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: GeneratorWorker | None = None
        self.stop = threading.Event()  # set by Cancel
        self.out_path: Path | None = None
        self.live_layer: Image | None = None  # the probability layer of the run in progress

        self.slide_box = QComboBox()
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.addItems(bundled_model_names())
        self.model_box.setCurrentText(DEFAULT_MODEL)
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", *cuda_devices()])
        self.stride_box = QSpinBox()
        self.stride_box.setRange(0, 4096)
        self.stride_box.setSpecialValueText("patch size")
        self.tissue_box = QDoubleSpinBox()
        self.tissue_box.setRange(0.0, 1.0)
        self.tissue_box.setSingleStep(0.05)
        self.tissue_box.setValue(ScoreOptions.tissue_threshold)
        self.block_box = QSpinBox()
        self.block_box.setRange(1, 256)
        self.block_box.setValue(ScoreOptions.block_cells)
        self.tta_box = QCheckBox("8-fold test-time augmentation (8× slower)")
        self.afresh_box = QCheckBox("Score afresh (replace an existing heatmap)")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("results/ beside the slide")
        self.score_button = QPushButton("Score")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel()
        self.notice_label = QLabel()
        self.notice_label.setStyleSheet("color: orange; font-weight: bold")
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0.0, 1.0)
        self.threshold_slider.setValue(DEFAULT_REPORTS.threshold)
        self.regions_label = QLabel()
        self.cell_label = QLabel("Click the heatmap to see a patch's probabilities.")
        for label in (self.status, self.notice_label, self.regions_label, self.cell_label):
            label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Slide", self.slide_box)
        form.addRow("Model", _with_browse(self.model_box, self._browse_model))
        form.addRow("Device", self.device_box)
        form.addRow("Stride (px)", self.stride_box)
        form.addRow("Tissue fraction ≥", self.tissue_box)
        form.addRow("Block (cells)", self.block_box)
        form.addRow("Output folder", _with_browse(self.out_edit, self._browse_out))
        form.addRow(self.tta_box)
        form.addRow(self.afresh_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.score_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.notice_label)
        layout.addWidget(QLabel("Tumour threshold"))
        layout.addWidget(self.threshold_slider)
        layout.addWidget(self.regions_label)
        layout.addWidget(self.cell_label)
        layout.addStretch()

        self.score_button.clicked.connect(self.score)
        self.cancel_button.clicked.connect(self.cancel)
        self.threshold_slider.valueChanged.connect(self.update_regions)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(_disconnect(self.viewer, self._on_click, self._on_layers_changed))
        self._on_layers_changed()

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            self.model_box.setCurrentText(folder)

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder")
        if folder:
            self.out_edit.setText(folder)

    def _on_layers_changed(self, *_: object) -> None:
        self._refresh_slides()
        self.update_notice()

    def _refresh_slides(self) -> None:
        current = self.slide_box.currentData()
        self.slide_box.clear()
        for layer in self.viewer.layers:
            if SLIDE_KEY in layer.metadata:
                self.slide_box.addItem(layer.name, layer.metadata[SLIDE_KEY])
        index = self.slide_box.findData(current)
        if index >= 0:
            self.slide_box.setCurrentIndex(index)

    def options(self) -> ScoreOptions:
        return ScoreOptions(
            stride=self.stride_box.value() or None,
            tissue_threshold=self.tissue_box.value(),
            block_cells=self.block_box.value(),
            device=self.device_box.currentText(),
            tta=self.tta_box.isChecked(),
            overwrite=self.afresh_box.isChecked(),
        )

    def score(self) -> None:
        """Score the chosen slide in a worker thread; layers appear at once and fill in block by block."""
        slide_path = self.slide_box.currentData()
        if slide_path is None:
            self.status.setText("Open a slide first (File ▸ Open, or drop it on the canvas).")
            return
        out_dir = self.out_edit.text() or str(Path(slide_path).parent / "results")
        self.score_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Finding tissue and loading the model…")
        self.stop = threading.Event()
        self.worker = thread_worker(
            score_events,
            connect={
                "yielded": self._on_progress,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )(slide_path, self.model_box.currentText(), out_dir, self.options(), self.stop)

    def cancel(self) -> None:
        """Stop after the block being written; the heatmap keeps the blocks written so far, and scoring the
        slide again with the same settings (here or with ``wsi-score``) resumes it."""
        if self.worker is not None:
            self.stop.set()
            self.status.setText("Stopping after the current block…")

    def _show_heatmap(self, path: Path) -> Image:
        """The heatmap store's layers (replacing those of an earlier run on it); its probability layer."""
        data = heatmap_layers(read_heatmap(path), self.threshold_slider.value(), heatmap_name(path))
        names = {meta["name"] for _, meta, _ in data}
        for layer in [layer for layer in self.viewer.layers if layer.name in names]:
            self.viewer.layers.remove(layer)
        layers = [self.viewer.add_layer(Layer.create(*layer_data)) for layer_data in data]
        return next(layer for layer in layers if isinstance(layer, Image))

    def _on_progress(self, event: SlidePlanned | BlockWritten) -> None:
        if isinstance(event, SlidePlanned):
            self.out_path = event.heatmap
            self.progress.setRange(0, max(event.patches, 1))
            self.progress.setValue(0)
            self.live_layer = self._show_heatmap(event.heatmap)
            resumed = f", resuming after {event.blocks_kept} blocks" if event.blocks_kept else ""
            self.status.setText(f"Scoring {event.patches} patches into {event.heatmap}{resumed}")
            return
        heatmap = self.live_layer.metadata[HEATMAP_KEY]
        heatmap.probabilities[(slice(None), *event.block.cells)] = event.probabilities
        self.live_layer.refresh()
        self.progress.setValue(self.progress.value() + event.patches)
        self.update_regions()

    def _on_returned(self, result: SlideResult) -> None:
        if result.status == "ok":
            self.status.setText(f"Done: {result.heatmap} (summary, GeoJSON and overlay beside it)")
        elif result.status == "partial":  # cells whose pixels no pyramid level could decode
            self._show_heatmap(result.heatmap)
            self.update_regions()
            self.status.setText(f"Done but for damaged tiles: {result.heatmap}; {result.message}")
        elif result.status == "skipped":
            self._show_heatmap(result.heatmap)
            self.update_regions()
            self.status.setText(
                f"Already scored with these settings: {result.heatmap} (shown; tick "
                "'Score afresh' to score it again)"
            )
        else:
            done, total = self.progress.value(), self.progress.maximum()
            self.status.setText(
                f"Cancelled: {done} of {total} patches written to {result.heatmap}; Score resumes it."
            )

    def _on_errored(self, error: Exception) -> None:
        self.status.setText(f"Failed: {error}")

    def _on_finished(self) -> None:
        self.worker = None
        self.score_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def heatmap_layer(self) -> Image | None:
        """The heatmap acted on: the selected one, else the top one."""
        return current_heatmap_layer(self.viewer)

    def update_notice(self) -> None:
        """Show the current heatmap's demonstration-model notice, if it has one."""
        image = self.heatmap_layer()
        notice = None if image is None else demonstration_notice(image.metadata[HEATMAP_KEY].metadata)
        self.notice_label.setText(notice or "")
        self.notice_label.setVisible(notice is not None)

    def update_regions(self, *_: object) -> None:
        """Regions of the current heatmap at the slider's threshold: outlines and the reported sizes."""
        image = self.heatmap_layer()
        if image is None:
            self.regions_label.setText("")
            return
        heatmap, threshold = image.metadata[HEATMAP_KEY], self.threshold_slider.value()
        regions = find_regions(heatmap, threshold)
        image.metadata[THRESHOLD_KEY] = threshold
        for layer in self.viewer.layers:
            if isinstance(layer, Shapes) and layer.metadata.get(HEATMAP_KEY) is heatmap:
                update_regions(layer, heatmap, regions)
        area = sum(region.area_mm2 for region in regions)
        largest = "none"
        if regions:
            category = reported_category(heatmap.metadata, regions[0].diameter_mm)
            largest = f"{regions[0].diameter_mm:.2f} mm, {category_words(category)}"
        self.regions_label.setText(
            f"{len(regions)} region(s) ≥ {threshold:.2f}: {area:.3f} mm²; largest {largest}"
        )

    def describe_point(self, position_world: tuple[float, ...]) -> str | None:
        """The probabilities of the heatmap cell under a world position (µm), or None outside the grid."""
        image = self.heatmap_layer()
        if image is None:
            return None
        heatmap: Heatmap = image.metadata[HEATMAP_KEY]
        cell = cell_at(image, position_world)
        if cell is None:
            return None
        row, col = cell
        x0, y0, x1, y1 = heatmap.grid.cell_boxes_level0(np.array([row]), np.array([col]))[0]
        where = f"Cell ({row}, {col}); patch x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f} level-0 px"
        if not heatmap.tissue[row, col]:
            return f"{where}: background, not scored."
        if heatmap.labels[row, col] == UNREADABLE:
            return f"{where}: tissue whose pixels no pyramid level could decode, not scored."
        values = heatmap.probabilities[:, row, col]
        if np.isnan(values).all():
            return f"{where}: not scored yet."
        parts = [f"{name} {value:.3f}" for name, value in zip(heatmap.class_names, values, strict=True)]
        return f"{where}: {', '.join(parts)}."

    def _on_click(self, _viewer: napari.viewer.Viewer, event: object) -> None:
        text = self.describe_point(tuple(event.position))
        if text is not None:
            self.cell_label.setText(text)


def _disconnect(viewer: napari.viewer.Viewer, on_click: object, on_layers: object) -> object:
    """A slot that detaches a closed widget's callbacks from the viewer (it must not hold the widget)."""

    def detach(*_: object) -> None:
        if on_click in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(on_click)
        viewer.layers.events.inserted.disconnect(on_layers)
        viewer.layers.events.removed.disconnect(on_layers)

    return detach
