"""Progress output: log lines with counts, rate and ETA when not on a terminal."""

from __future__ import annotations

import io

from wsi_pipeline.core.progress import Progress


def test_log_lines_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(total=200, label="slide.svs", stream=stream, every_s=0.0)
    progress.update(50)
    progress.update(150)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("slide.svs: 50/200 patches (25%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("slide.svs: 200/200 patches (100%)")
