"""What a slide's reports contain (``reports``): options that load none of the drawing stack."""

from __future__ import annotations

from dataclasses import dataclass

REVIEW_TILES = 16  # top tiles on a review sheet by default


@dataclass(frozen=True)
class ReportOptions:
    """What the reports contain."""

    threshold: float = 0.5  # a cell is tumour when its tumour probability is at least this
    top_k: int = 10  # the slide's top-k mean is over its k highest cells
    tile_table: bool = False  # also write <stem>.tiles.csv
    geojson_tiles: bool = False  # also put every scored tile in the GeoJSON, as a detection
    review_tiles: int = REVIEW_TILES  # top tiles on the review sheet; 0: no review sheet
    explain: bool = False  # draw each review tile's Grad-CAM saliency beside it
    dicom: bool = False  # also write the map and regions as DICOM (DICOM slides only)

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if self.top_k < 1:
            raise ValueError("top-k must be at least 1")
        if self.review_tiles < 0:
            raise ValueError("review tiles must be at least 0")


DEFAULT_REPORTS = ReportOptions()
