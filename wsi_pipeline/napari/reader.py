"""npe2 reader: slide files as lazy multiscale RGB images; ``wsi-score`` heatmaps with regions and slide.

Anything else (a foreign ``.zarr``, a TIFF without µm/px) is declined with ``None`` so other readers get
it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from npe2.types import LayerData, PathOrPaths, ReaderFunction

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.findings.options import DEFAULT_REPORTS
from wsi_pipeline.findings.reports import current_summary
from wsi_pipeline.napari.layers import heatmap_layers, heatmap_name, slide_layer
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES, Slide
from wsi_pipeline.store.heatmap import is_heatmap, read_heatmap


def read_heatmap_layers(path: str | Path) -> list[LayerData]:
    """The heatmap's layers (regions at its summary's threshold, else the default), over its slide when the
    slide file is still where the metadata says (opened with the µm/px the heatmap was scored with)."""
    heatmap = read_heatmap(path)
    summary = current_summary(path)
    threshold = summary["threshold"] if summary else DEFAULT_REPORTS.threshold
    layers = heatmap_layers(heatmap, threshold, heatmap_name(path))
    scored = heatmap.metadata.slide
    if Path(scored.path).is_file():
        try:
            with Slide(scored.path, scored.backend, scored.mpp) as slide:
                layers.insert(0, slide_layer(slide))
        except InputError:
            pass  # moved, replaced or unreadable: the heatmap alone
    return layers


def _layer_source(path: Path) -> Callable[[], list[LayerData]] | None:
    """How to read one path, or None when it is not ours."""
    if is_heatmap(path):
        return lambda: read_heatmap_layers(path)
    if not (path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES):
        return None
    try:
        with Slide(path) as slide:
            layer = slide_layer(slide)
    except InputError:
        return None
    return lambda: [layer]


def get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader when every path is a slide or a heatmap of ours, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    sources = [_layer_source(Path(p)) for p in paths]
    if not sources or None in sources:
        return None

    def read(_: PathOrPaths) -> list[LayerData]:
        return [layer for source in sources for layer in source()]

    return read
