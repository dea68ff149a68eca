"""Make ``docs/review_sheet.png``: the review sheet of the bundled synthetic sample scored by the default
model, with Grad-CAM saliency (``wsi-score sample_slides/synthetic-node_19_000.svs -o OUT --explain`` writes
the same ``OUT/synthetic-node_19_000.review.png``)::

    python docs/review_sheet.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from wsi_pipeline import ReportOptions, score_slides
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.model.bundled import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
SLIDE = REPO / "sample_slides" / "synthetic-node_19_000.svs"
OUT_PNG = REPO / "docs" / "review_sheet.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        [result] = score_slides(
            [SLIDE],
            DEFAULT_MODEL,
            scratch,
            scheduler="threads",
            show_progress=False,
            reports=ReportOptions(explain=True),
        )
        with Image.open(report_paths(result.heatmap)["review"]) as sheet:
            # 256 colours: 0.5 MB for the repository instead of 1.4, nothing visible lost
            sheet.convert("RGB").quantize(256, Image.Quantize.MEDIANCUT).save(OUT_PNG, optimize=True)
    print(f"wrote {OUT_PNG}")


if __name__ == "__main__":
    main()
