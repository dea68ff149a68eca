"""Slides named on a command line: files as given, folders expanded to the slide files in them; a DICOM WSI
series (a folder of ``.dcm`` files, or any one of them) is one slide."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256, file_stamp
from wsi_pipeline.slide.dicom import DICOM_SUFFIX, find_series, holds_dicom, is_dicom, series_of
from wsi_pipeline.slide.reader import SLIDE_SUFFIXES
from wsi_pipeline.slide.remote import is_url, remote_identity, url_stem


def find_slides(inputs: list[str]) -> list[Path | str]:
    """Expand folders to the slide files directly inside them (sorted) and to the DICOM series among their
    ``.dcm`` files (one file standing for each series); other files and URLs are taken as given, a ``.dcm``
    file as its series."""
    slides: list[Path | str] = []
    for text in inputs:
        item = Path(text)
        if is_url(text):
            slides.append(text)
        elif item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if holds_dicom(item):
                found += [series.path for series in find_series(item)]
            if not found:
                suffixes = ", ".join(sorted(SLIDE_SUFFIXES | {DICOM_SUFFIX}))
                raise InputError(item, f"folder holds no slide files ({suffixes})")
            slides.extend(found)
        else:
            slides.append(series_of(item).path if is_dicom(item) and item.exists() else item)
    names: dict[str, Path | str] = {}
    for slide in slides:
        name = slide_name(slide)
        if name in names and names[name] != slide:
            raise InputError(slide, f"same output name as {names[name]}; score them into separate folders")
        names[name] = slide
    return list(dict.fromkeys(slides))


def slide_name(path: str | Path) -> str:
    """The name a slide's outputs take: a DICOM series' slide id (``DicomSeries.slide_id``), else the file's
    (or URL's) stem."""
    if is_url(path):
        return url_stem(str(path))
    return series_of(path).slide_id if is_dicom(path) and Path(path).exists() else Path(path).stem


def slide_location(path: str | Path) -> str:
    """Where a slide is, as recorded: a URL as given, else the absolute path."""
    return str(path) if is_url(path) else str(Path(path).resolve())


def slide_identity(path: str | Path) -> tuple[str, str | None]:
    """A slide's sha256 and what it was taken of when not its content: a file's sha256 (None), a DICOM
    series' (``DicomSeries.sha256``, None), or a URL's ``remote_identity`` (its ETag or checksum hashed, and
    which)."""
    if is_url(path):
        return remote_identity(str(path))
    return (series_of(path).sha256() if is_dicom(path) else file_sha256(path)), None


def slide_stamp(path: str | Path) -> dict[str, int]:
    """A slide's size and modification time (ns): the file's, or over a DICOM series' files; none for a URL
    (whose identity is one request)."""
    if is_url(path):
        return {}
    return series_of(path).stamp() if is_dicom(path) else file_stamp(path)
