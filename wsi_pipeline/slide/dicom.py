"""DICOM whole-slide images: a series of ``.dcm`` files (one per pyramid level, plus label and overview
images) is one slide. Files are grouped by their SeriesInstanceUID (headers only, read with pydicom);
OpenSlide 4 opens any one file of a series as the whole slide, so a series is scored through that file."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256

DICOM_SUFFIX = ".dcm"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
# Values converters write when they know no identifier (wsidicomizer: "Unknown"); not a readable slide id.
_PLACEHOLDER_IDS = {"", "unknown", "none"}


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM WSI series: its files (sorted by name), UIDs and a readable slide id."""

    files: tuple[Path, ...]
    study_uid: str | None  # None: not in the files
    series_uid: str
    slide_id: str  # ContainerIdentifier, else SeriesDescription, else the folder's name; safe as a file name

    @property
    def path(self) -> Path:
        """The file the slide is opened through (OpenSlide reads the whole series from any of them)."""
        return self.files[0]

    def sha256(self) -> str:
        """The series' content: sha256 over its files' sha256 hex digests, sorted (so independent of file
        names and of which file was given)."""
        digests = sorted(file_sha256(file) for file in self.files)
        return hashlib.sha256("".join(digests).encode("ascii")).hexdigest()

    def stamp(self) -> dict[str, int]:
        """Total bytes and latest modification time (ns) of its files, recorded beside the sha256."""
        stats = [file.stat() for file in self.files]
        return {"size": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats)}


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` names a DICOM file (by its suffix)."""
    return Path(path).suffix.lower() == DICOM_SUFFIX


def holds_dicom(folder: Path) -> bool:
    """Whether a folder holds DICOM files directly inside it."""
    return any(is_dicom(p) and p.is_file() for p in folder.iterdir())


def find_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM WSI series of the ``.dcm`` files directly inside ``folder``, in order of their first file."""
    return list(_series_in(Path(folder).resolve()))


def series_of(path: str | Path) -> DicomSeries:
    """The series a ``.dcm`` file belongs to (its folder's files of the same SeriesInstanceUID), or a folder's
    one series (a folder of several is refused: give the folder as a batch with ``find_series``)."""
    path = Path(path).resolve()
    if path.is_dir():
        series = _series_in(path)
        if len(series) != 1:
            raise InputError(path, f"holds {len(series)} DICOM series, not one slide")
        return series[0]
    for candidate in _series_in(path.parent):
        if path in candidate.files:
            return candidate
    raise InputError(path, "not a DICOM whole-slide image file")


def _series_in(folder: Path) -> tuple[DicomSeries, ...]:
    """The WSI series of a folder's ``.dcm`` files (cached while the folder's listing is unchanged: planning
    asks several times per slide)."""
    return _series_listed(folder, folder.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _series_listed(folder: Path, _mtime_ns: int) -> tuple[DicomSeries, ...]:
    """``_series_in`` of the folder as listed at that modification time. Files of other SOP classes (such as
    annotations or parametric maps beside the slide) are left out."""
    import pydicom

    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for file in sorted(p for p in folder.iterdir() if is_dicom(p) and p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
            series_uid, sop_class = str(header.SeriesInstanceUID), str(header.SOPClassUID)
        except Exception as error:
            raise InputError(file, f"not a readable DICOM file ({type(error).__name__}: {error})") from None
        if sop_class == WSI_SOP_CLASS:
            groups.setdefault(series_uid, []).append((file, header))
    if not groups:
        raise InputError(folder, "folder holds no DICOM whole-slide image (.dcm) files")
    return tuple(_series(folder, uid, members, len(groups) > 1) for uid, members in groups.items())


def _series(folder: Path, series_uid: str, members: list, several: bool) -> DicomSeries:
    """A series from its files' headers; without an identifier it is named by its folder (and, when the folder
    holds several series, the end of its UID)."""
    keys = ("ContainerIdentifier", "SeriesDescription")
    values = (str(header.get(key, "")).strip() for key in keys for _, header in members)
    readable = [value for value in values if value.lower() not in _PLACEHOLDER_IDS]
    slide_id = readable[0] if readable else folder.name + (f"-{series_uid[-8:]}" if several else "")
    return DicomSeries(
        files=tuple(file for file, _ in members),
        study_uid=str(members[0][1].get("StudyInstanceUID", "")) or None,
        series_uid=series_uid,
        slide_id=safe_name(slide_id),
    )


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of characters other than letters, digits, ``.``, ``_`` and ``-`` become
    ``_``; no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "slide"
