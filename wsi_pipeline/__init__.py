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
"""

from .blocks import cut_patches, read_block_patches
from .device import resolve_device
from .errors import InputError
from .grid import Block, PatchGrid, split_blocks, tissue_fraction
from .heatmap import Heatmap, read_heatmap
from .model import Model, ModelCard, build_module, read_card, save_model
from .regions import Region, find_regions
from .reports import ReportOptions, write_reports
from .run import ScoreOptions, SlideResult, dask_client, plan_grid, score_slide, score_slides
from .slide import Slide
from .tissue import TissueMask, detect_tissue

__version__ = "0.1.0"

__all__ = [
    "Block",
    "Heatmap",
    "InputError",
    "Model",
    "ModelCard",
    "PatchGrid",
    "Region",
    "ReportOptions",
    "ScoreOptions",
    "Slide",
    "SlideResult",
    "TissueMask",
    "__version__",
    "build_module",
    "cut_patches",
    "dask_client",
    "detect_tissue",
    "find_regions",
    "plan_grid",
    "read_block_patches",
    "read_card",
    "read_heatmap",
    "resolve_device",
    "save_model",
    "score_slide",
    "score_slides",
    "split_blocks",
    "tissue_fraction",
    "write_reports",
]
