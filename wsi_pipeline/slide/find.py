"""Slides named on a command line: files as given, folders expanded to the slide files in them."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES


def find_slides(inputs: list[str]) -> list[Path]:
    """Expand folders to the slide files directly inside them (sorted); files are taken as given."""
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(item, f"folder holds no slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            slides.extend(found)
        else:
            slides.append(item)
    stems: dict[str, Path] = {}
    for slide in slides:
        if slide.stem in stems and stems[slide.stem] != slide:
            raise InputError(
                slide, f"same output name as {stems[slide.stem]}; score them into separate folders"
            )
        stems[slide.stem] = slide
    return list(dict.fromkeys(slides))
