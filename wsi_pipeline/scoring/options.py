"""Options, events and results of a scoring run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from wsi_pipeline.model.card import ENGINES, PRECISIONS
from wsi_pipeline.slide.reader import JPEG_SCALINGS
from wsi_pipeline.tiling.tissue import MAX_HOLE_UM2, MIN_TISSUE_UM2, TISSUE_MPP

if TYPE_CHECKING:
    from wsi_pipeline.tiling.grid import Block

SCHEDULERS_HELP = (  # the schedulers cluster.dask_client starts or joins, and auto's choice between two
    "auto (default: threads, or local for large jobs on 8 or more cores), local (worker processes sized to "
    "the machine), threads (one in-process worker), slurm (worker jobs submitted to SLURM), tcp://HOST:PORT"
)


@dataclass(frozen=True)
class ScoreOptions:
    """Parameters of a scoring run (the model card fixes patch size and µm/px)."""

    stride: int | None = None  # target pixels between cells; None = the model's patch size
    # minimum tissue fraction of a patch for it to be scored; 0.25 finds metastases at the capsule that 0.5
    # misses (benchmarks/bench_capsule.py: 95/96 vs 92/96, +9% patches, no false cells on tumour-free slides)
    tissue_threshold: float = 0.25
    tissue_mpp: float = TISSUE_MPP
    tissue_min_um2: float = MIN_TISSUE_UM2  # tissue objects smaller than this are dropped
    tissue_max_hole_um2: float = MAX_HOLE_UM2  # holes in tissue smaller than this are filled
    block_cells: int = 16  # block side in grid cells (smaller blocks: shorter tail when workers finish)
    batch_size: int = 256
    tta: bool = False  # mean over the 8 flips/rotations of each patch (8× the model's work)
    device: str = "auto"
    engine: str = "auto"  # CPU engine: auto (the faster, measured once per model and machine) or a name
    # int8: ONNX Runtime on the model quantized and calibrated on tissue, used when it agrees with float32
    precision: str = "float32"
    calibration: str | None = None  # int8's calibration: a slide, slide folder or patch set; None: 1st slide
    backend: str = "auto"
    # auto: JPEG-tiled levels also read at 1/2, 1/4, 1/8 (slide.reader.JPEG_SCALINGS); None: as the heatmap
    # resumed or kept was read (auto for a new one)
    jpeg_scaling: str | None = None
    mpp: float | None = None  # overrides the slide's µm/px
    overwrite: bool = False  # score afresh over an existing heatmap (complete, partial, or other parameters)
    retry_unreadable: bool = False  # score again the blocks of a heatmap holding cells that were unreadable

    def validate(self) -> None:
        if self.stride is not None and self.stride < 1:
            raise ValueError("stride must be at least 1 pixel")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ValueError("tissue threshold must be between 0 and 1")
        if self.block_cells < 1 or self.batch_size < 1:
            raise ValueError("block size and batch size must be positive")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError("mpp must be positive")
        if self.tissue_mpp <= 0 or self.tissue_min_um2 < 0 or self.tissue_max_hole_um2 < 0:
            raise ValueError("tissue µm/px must be positive and tissue areas not negative")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.jpeg_scaling not in (None, *JPEG_SCALINGS):
            shown = ", ".join(JPEG_SCALINGS)
            raise ValueError(f"JPEG scaling must be one of {shown}, not {self.jpeg_scaling!r}")
        if self.precision == "int8" and self.device.startswith("cuda"):
            raise ValueError("int8 runs on the CPU (--device cpu or auto)")


SlideStatus = Literal["ok", "partial", "skipped", "failed", "cancelled"]
"""What became of a slide: scored ("ok"), scored but for cells whose pixels could not be decoded ("partial",
scored now or kept), kept as a complete heatmap ("skipped"), "failed", or stopped before it was settled
("cancelled", resumable)."""


@dataclass
class SlideResult:
    """What happened to one slide of a batch."""

    slide: Path | str  # a URL: str
    status: SlideStatus
    heatmap: Path | None = None
    message: str = ""
    patches: int = 0
    seconds: float = 0.0
    summary: dict | None = None  # the slide's summary record (findings.reports), when there is one


@dataclass(frozen=True)
class SlidePlanned:
    """Event: a slide's heatmap is open (new, or partial and resumed) and its blocks are to be scored."""

    slide: Path
    heatmap: Path
    patches: int  # patches this run scores
    blocks_kept: int  # blocks an earlier run wrote


@dataclass(frozen=True)
class BlockWritten:
    """Event: a block's probabilities ``(classes, n_rows, n_cols)`` are in the heatmap store (and marked)."""

    slide: Path
    heatmap: Path
    block: Block
    probabilities: np.ndarray
    patches: int


ScoringEvent = SlidePlanned | BlockWritten
