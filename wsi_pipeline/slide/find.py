"""Slides named on a command line: files as given, folders expanded to the slide files in them; a DICOM WSI
series (a folder of ``.dcm`` files, or any one of them) is one slide."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256, file_stamp
from wsi_pipeline.slide.dicom import DICOM_SUFFIX, find_series, holds_dicom, is_dicom, series_of
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES


def find_slides(inputs: list[str]) -> list[Path]:
    """Expand folders to the slide files directly inside them (sorted) and to the DICOM series among their
    ``.dcm`` files (one file standing for each series); other files are taken as given, a ``.dcm`` file as its
    series."""
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if holds_dicom(item):
                found += [series.path for series in find_series(item)]
            if not found:
                suffixes = ", ".join(sorted(SLIDE_SUFFIXES | {DICOM_SUFFIX}))
                raise InputError(item, f"folder holds no slide files ({suffixes})")
            slides.extend(found)
        else:
            slides.append(series_of(item).path if is_dicom(item) and item.exists() else item)
    names: dict[str, Path] = {}
    for slide in slides:
        name = slide_name(slide)
        if name in names and names[name] != slide:
            raise InputError(slide, f"same output name as {names[name]}; score them into separate folders")
        names[name] = slide
    return list(dict.fromkeys(slides))


def slide_name(path: str | Path) -> str:
    """The name a slide's outputs take: a DICOM series' slide id (``DicomSeries.slide_id``), else the file's
    stem."""
    return series_of(path).slide_id if is_dicom(path) and Path(path).exists() else Path(path).stem


def slide_sha256(path: str | Path) -> str:
    """A slide's content sha256: the file's, or a DICOM series' (``DicomSeries.sha256``)."""
    return series_of(path).sha256() if is_dicom(path) else file_sha256(path)


def slide_stamp(path: str | Path) -> dict[str, int]:
    """A slide's size and modification time (ns): the file's, or over a DICOM series' files."""
    return series_of(path).stamp() if is_dicom(path) else file_stamp(path)
