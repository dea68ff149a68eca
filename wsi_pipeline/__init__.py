"""wsi_pipeline: tissue detection, patch grids and batched patch scoring of whole-slide images.

The steps, each usable alone::

    slide = Slide("slide.svs")                                   # open (openslide or tiffslide)
    tissue = detect_tissue(slide.thumbnail(8.0), 8.0)            # tissue mask at 8 µm/px
    grid = plan_grid(slide, patch_size=96, target_mpp=0.972, stride=96)
    cells = tissue_fraction(grid, tissue) >= 0.5                 # grid cells to score
    model = Model("models/my-model", resolve_device("auto"))
    results = score_slides(["slide.svs"], "models/my-model", "results/")
    heatmap = read_heatmap("results/slide.zarr")                 # arrays + geometry
    regions = find_regions(heatmap, threshold=0.5)               # tumour regions, measured
    summary = write_reports("results/slide.zarr")                # summary, QuPath GeoJSON, overlay

Names are loaded when first used, so ``import wsi_pipeline`` is quick and reading a heatmap never loads torch.
"""

from __future__ import annotations

import importlib

from wsi_pipeline.core.version import __version__

# public name -> the module (below this package) that defines it
_EXPORTS = {
    "Block": "tiling.grid",
    "ClusterError": "core.errors",
    "Heatmap": "store.heatmap",
    "InputError": "core.errors",
    "Model": "model.predict",
    "ModelCard": "model.card",
    "PatchGrid": "tiling.grid",
    "Region": "findings.regions",
    "ReportOptions": "findings.options",
    "ScoreOptions": "scoring.options",
    "Slide": "slide.reader",
    "SlideResult": "scoring.options",
    "SlurmOptions": "scoring.slurm",
    "TissueMask": "tiling.tissue",
    "build_module": "model.architectures",
    "cut_patches": "tiling.patches",
    "dask_client": "scoring.cluster",
    "detect_tissue": "tiling.tissue",
    "find_regions": "findings.regions",
    "find_slides": "slide.find",
    "plan_grid": "tiling.grid",
    "read_block_patches": "tiling.patches",
    "read_card": "model.folder",
    "read_heatmap": "store.heatmap",
    "resolve_device": "model.device",
    "save_model": "model.weights",
    "score_slide": "scoring.api",
    "score_slides": "scoring.api",
    "split_blocks": "tiling.grid",
    "tissue_fraction": "tiling.grid",
    "write_reports": "findings.reports",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsi_pipeline.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
