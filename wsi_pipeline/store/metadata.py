"""The heatmap's metadata record (``wsi_pipeline`` in the store's Zarr attributes): one typed, versioned
schema, checked when written and read, earlier versions migrated to it, and which of it decides whether a
heatmap may be resumed or kept.

Versions: 1 — heatmaps written before the schema was versioned (no ``schema`` or ``version`` key, tissue
parameters as top-level ``tissue_*`` keys, no ``model.engine`` or ``tta`` in the oldest); 2 — the tissue
parameters grouped; 3 — ``models`` (the model, or an ensemble's members) in place of ``model``, each with its
card's intended use, demonstration mark and source, and whether the slide is synthetic; 4 — a complete
heatmap counts its cells no pyramid level could decode and those read from another level, and each model's
precision is recorded (int8 with its calibration's sha256; "float32" where not recorded); 5 — how the slide's
JPEG tiles were decoded (``slide.jpeg_scaling``; "off" before, the only way then); 6 — this one: how reads of
the slide's levels were placed (``slide.read_rule``; 1 before, the only rule then)."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.model.card import PRECISIONS
from wsi_pipeline.model.sources import ModelSourceInfo
from wsi_pipeline.slide.find import slide_location, slide_stamp
from wsi_pipeline.slide.reader import JPEG_SCALINGS, READ_RULE
from wsi_pipeline.slide.remote import is_url
from wsi_pipeline.tiling.grid import PatchGrid

SCHEMA = "wsi_pipeline.heatmap"
VERSION = 6
MPP_RANGE = (1e-4, 1e4)  # µm/px any slide, model or tissue image may have
MAX_SIDE_PX = 1 << 24  # a slide side, level-0 pixels (the largest scans are about 2e5)
MAX_GRID_CELLS = 1 << 26  # cells of a heatmap (a 2e5-pixel square slide at 0.25 µm/px, stride 32: 2.6e6)


@dataclass(frozen=True)
class SlideRecord:
    """The slide scored: where it was, its content, how it was read."""

    path: str  # absolute, when scored
    sha256: str  # of the file's content
    backend: str  # the reader: openslide or tiffslide
    # auto: JPEG-tiled levels also read at 1/2, 1/4, 1/8 (decoded at that scale); off: the file's levels only
    jpeg_scaling: str
    # the first ``reader.READ_RULE`` that places the patches' reads as this heatmap's were: 1 where no later
    # rule reads them otherwise, 2 where tiffslide reads a level whose downsample is not an integer (1 read
    # one level pixel early at many places there)
    read_rule: int
    mpp: float  # µm per level-0 pixel used
    mpp_source: str  # "file", or "--mpp" when given by the user
    width0: int  # level-0 pixels
    height0: int
    size: int | None = None  # bytes and modification time (ns) of the file the sha256 was taken from
    mtime_ns: int | None = None
    synthetic: bool | None = None  # carries the mark of wsi-synth's slides (None: not recorded, before v3)
    # a DICOM WSI series (sha256 over its files' sha256s, sorted; size and mtime_ns over all its files)
    study_uid: str | None = None
    series_uid: str | None = None
    # what sha256 was taken of, when not the content: a remote slide's metadata field ("ETag", ...); sha256
    # is then that of "<field>:<value>"
    identity_source: str | None = None


@dataclass(frozen=True)
class ModelRecord:
    """A model that scored the heatmap (the one model, or a member of an ensemble)."""

    name: str
    folder: str  # absolute, when scored
    weights_sha256: str
    architecture: str
    engine: str  # CPU engine given to the workers: torch or onnxruntime (CUDA workers run torch)
    demonstration: bool = False  # its card marks it as for demonstration and pipeline checks only
    intended_use: str | None = None  # its card's statement of what it is for (None: none stated)
    source: ModelSourceInfo | None = None  # a downloaded model: spec, repo, commit, files, weights sha256
    precision: str = "float32"  # or "int8" (ONNX Runtime); "float32" in heatmaps made before it was recorded
    calibration_sha256: str | None = None  # int8: the calibration patches' sha256


@dataclass(frozen=True)
class TissueParameters:
    """How the tissue (the cells scored) was found."""

    threshold: float  # a cell is scored when its patch's tissue fraction is at least this
    mpp: float  # µm/px of the image tissue was found on
    min_um2: float | None = None  # objects smaller than this dropped (None: made before it was recorded)
    max_hole_um2: float | None = None  # holes smaller than this filled (None: as min_um2)
    saturation_threshold: float | None = None  # the Otsu threshold found on the saturation


@dataclass(frozen=True)
class HeatmapRecord:
    """What a heatmap holds and how it was made: slide, model, grid, tissue and scoring parameters, and its
    runs. Optional fields are None when not (yet) known and are then left out of the stored dict."""

    schema: ClassVar[str] = SCHEMA
    version: ClassVar[int] = VERSION

    slide: SlideRecord
    models: tuple[ModelRecord, ...]  # the model, or an ensemble's members: each cell holds their mean
    grid: PatchGrid
    class_names: tuple[str, ...]  # the model's classes, one channel of the heatmap each
    tissue: TissueParameters
    block_cells: int  # side of a block of cells: one task, one chunk, one byte of blocks_done
    tta: bool  # each patch scored as the mean of its 8 flips and rotations
    package_version: str  # of the wsi_pipeline that began the heatmap
    started: str  # ISO 8601 time the heatmap was begun
    resumed: tuple[str, ...] = ()  # ISO 8601 times later runs resumed it
    devices: tuple[str, ...] = ()  # the devices and engines that scored its blocks, over all its runs
    engines: tuple[str, ...] = ()
    complete: bool = False  # every block written and the pyramid built
    patches_scored: int | None = None  # set when complete: tissue cells of the heatmap
    unreadable_cells: int | None = None  # set when complete: tissue cells no pyramid level could decode (NaN)
    other_level_cells: int | None = None  # set when complete: tissue cells read from another pyramid level
    seconds: float | None = None  # set when complete: time taken by the run that completed it
    finished: str | None = None  # set when complete: ISO 8601 time

    @property
    def model_name(self) -> str:
        """The model's name; an ensemble's is its members' names joined by " + "."""
        return " + ".join(model.name for model in self.models)

    @property
    def demonstration(self) -> bool:
        """Whether a demonstration model scored the heatmap (alone or as a member of an ensemble)."""
        return any(model.demonstration for model in self.models)


def _is_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _between(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    low_shown, high_shown = (f"{bound:g}" if isinstance(bound, float) else bound for bound in (low, high))
    return lambda value: low <= value <= high, f"between {low_shown} and {high_shown}"


_SHA256 = (lambda value: re.fullmatch(r"[0-9a-f]{64}", value) is not None, "64 hexadecimal digits")
_UID = (lambda value: len(value) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value) is not None, "a UID")
_TIME = (_is_time, "an ISO 8601 time")
_POSITIVE = (lambda value: value >= 1, "at least 1")
_NOT_NEGATIVE = (lambda value: value >= 0, "not negative")
_MPP = _between(*MPP_RANGE)
_SIDE = _between(1, MAX_SIDE_PX)
# What a field's value must be beyond its type (dotted paths into the record, "[]" for any item of a list;
# None always passes).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "slide.sha256": _SHA256,
    "slide.jpeg_scaling": (lambda value: value in JPEG_SCALINGS, " or ".join(JPEG_SCALINGS)),
    "slide.read_rule": _between(1, READ_RULE),
    "slide.mpp": _MPP,
    "slide.width0": _SIDE,
    "slide.height0": _SIDE,
    "slide.size": _NOT_NEGATIVE,
    "slide.mtime_ns": _NOT_NEGATIVE,
    "slide.study_uid": _UID,
    "slide.series_uid": _UID,
    "models": (lambda models: len(models) > 0, "at least one model"),
    "models[].weights_sha256": _SHA256,
    "models[].source.sha256": _SHA256,
    "models[].precision": (lambda value: value in PRECISIONS, " or ".join(PRECISIONS)),
    "models[].calibration_sha256": _SHA256,
    "grid.width0": _SIDE,
    "grid.height0": _SIDE,
    "grid.mpp0": _MPP,
    "grid.target_mpp": _MPP,
    "grid.patch_size": _POSITIVE,
    "grid.stride": _POSITIVE,
    "grid": (lambda grid: grid.shape[0] * grid.shape[1] <= MAX_GRID_CELLS, f"at most {MAX_GRID_CELLS} cells"),
    "class_names": (lambda names: len(names) > 0, "at least one name"),
    "tissue.threshold": _between(0, 1),
    "tissue.mpp": _MPP,
    "tissue.min_um2": _NOT_NEGATIVE,
    "tissue.max_hole_um2": _NOT_NEGATIVE,
    "block_cells": _POSITIVE,
    "started": _TIME,
    "resumed": (lambda times: all(map(_is_time, times)), "ISO 8601 times"),
    "patches_scored": _NOT_NEGATIVE,
    "unreadable_cells": _NOT_NEGATIVE,
    "other_level_cells": _NOT_NEGATIVE,
    "seconds": _NOT_NEGATIVE,
    "finished": _TIME,
}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}


def _invalid(store: str | Path, where: str, expected: str, value: object) -> InputError:
    """The error for a field (``where``, a dotted path; "" for the whole) that is not what it must be."""
    subject, shown = f"heatmap metadata: {where}" if where else "heatmap metadata", repr(value)
    return InputError(store, f"{subject} must be {expected}, not {shown[:60]}{'…' * (len(shown) > 60)}")


def _decode(kind: Any, value: object, where: str, store: str | Path) -> Any:
    """``value`` (as JSON gives it) as a ``kind``: a dataclass, ``tuple[X, ...]``, ``X | None``, bool, int,
    float or str, and passing the check of its path, if any."""
    origin = get_origin(kind)
    if origin is UnionType:
        if value is None:
            return None
        (kind,) = [arg for arg in get_args(kind) if arg is not type(None)]
        origin = get_origin(kind)
    if is_dataclass(kind):
        result = _decode_fields(kind, value, where, store)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _invalid(store, where, "a list", value)
        result = tuple(
            _decode(get_args(kind)[0], item, f"{where}[{i}]", store) for i, item in enumerate(value)
        )
    elif kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and abs(value) <= sys.float_info.max):  # NaN, infinities and huge integers fail
            raise _invalid(store, where, _TYPE_NAMES[kind], value)
        result = float(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        result = value
    else:
        raise _invalid(store, where, _TYPE_NAMES[kind], value)
    check, expected = _CHECKS.get(re.sub(r"\[\d+\]", "[]", where), (None, ""))
    if check is not None and not check(result):
        raise _invalid(store, where, expected, value)
    return result


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _decode_fields(kind: type, value: object, where: str, store: str | Path) -> Any:
    if not isinstance(value, dict):
        raise _invalid(store, where, "an object", value)
    names = {field.name for field in fields(kind)}
    unknown = sorted(str(key) for key in value if key not in names)
    if unknown:
        raise InputError(store, f"heatmap metadata: unknown field {_path(where, unknown[0])}")
    hints, found = get_type_hints(kind), {}
    for field in fields(kind):
        path = _path(where, field.name)
        if field.name in value:
            found[field.name] = _decode(hints[field.name], value[field.name], path, store)
        elif field.default is MISSING:
            raise InputError(store, f"heatmap metadata lacks {path}")
    return kind(**found)


def _plain(value: object) -> object:
    """A record (or part of one) as JSON: objects, lists and scalars, None fields left out."""
    if is_dataclass(value):
        return {f.name: _plain(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def to_dict(record: HeatmapRecord) -> dict:
    """The record as the store's attributes hold it: schema and version first, None fields left out."""
    return {"schema": record.schema, "version": record.version, **_plain(record)}


def from_dict(metadata: object, store: str | Path = "<metadata>") -> HeatmapRecord:
    """The record of a current-version dict (``migrate`` earlier ones first), every field checked; an
    ``InputError`` naming ``store`` and the field for anything malformed."""
    if not isinstance(metadata, dict):
        raise _invalid(store, "", "an object", metadata)
    for key, expected in (("schema", SCHEMA), ("version", VERSION)):
        if type(metadata.get(key)) is not type(expected) or metadata[key] != expected:
            raise _invalid(store, key, repr(expected), metadata.get(key))
    fields_only = {key: value for key, value in metadata.items() if key not in ("schema", "version")}
    return _decode(HeatmapRecord, fields_only, "", store)


def _from_version_1(metadata: dict) -> dict:
    """Version 1 → 2: the ``tissue_*`` keys grouped as ``tissue``; heatmaps made before the CPU engine and TTA
    were recorded all ran torch without TTA."""
    tissue_keys = {f"tissue_{key}": key for key in ("threshold", "mpp", "min_um2", "max_hole_um2")}
    tissue_keys["tissue_saturation_threshold"] = "saturation_threshold"
    upgraded = {key: value for key, value in metadata.items() if key not in tissue_keys}
    upgraded["tissue"] = {new: metadata[old] for old, new in tissue_keys.items() if old in metadata}
    if isinstance(upgraded.get("model"), dict):
        upgraded["model"].setdefault("engine", "torch")
    upgraded.setdefault("tta", False)
    return {"schema": SCHEMA, "version": 2, **upgraded}


DEMONSTRATION_MODELS = ("synthetic-pcam-cnn", "centre-colour-probe")  # the bundled ones, before version 3


def _from_version_2(metadata: dict) -> dict:
    """Version 2 → 3: the one ``model`` as the list ``models``, marked as a demonstration model when it is one
    of the bundled demonstration models by name; whether the slide is synthetic is left unknown."""
    upgraded = {key: value for key, value in metadata.items() if key not in ("schema", "version", "model")}
    model = metadata.get("model")
    if isinstance(model, dict):
        model = {**model, "demonstration": model.get("name") in DEMONSTRATION_MODELS}
    if "model" in metadata:
        upgraded["models"] = [model]
    return {"schema": SCHEMA, "version": 3, **upgraded}


def _from_version_3(metadata: dict) -> dict:
    """Version 3 → 4: nothing to add; ``unreadable_cells`` and ``other_level_cells`` stay unknown (a slide
    with a tile that could not be decoded failed whole then, so a complete heatmap had none)."""
    return {**metadata, "version": 4}


def _from_version_4(metadata: dict) -> dict:
    """Version 4 → 5: the slide's JPEG tiles were decoded in full (``jpeg_scaling`` "off")."""
    upgraded = {**metadata, "version": 5}
    if isinstance(metadata.get("slide"), dict):
        upgraded["slide"] = {**metadata["slide"], "jpeg_scaling": "off"}
    return upgraded


def _from_version_5(metadata: dict) -> dict:
    """Version 5 → 6: the slide's levels were read by rule 1 (``reader.READ_RULE``), so a heatmap whose reads
    the later rule moves is not resumed with them."""
    upgraded = {**metadata, "version": 6}
    if isinstance(metadata.get("slide"), dict):
        upgraded["slide"] = {**metadata["slide"], "read_rule": 1}
    return upgraded


_MIGRATIONS: dict[int, Callable[[dict], dict]] = {  # version → its next version
    1: _from_version_1,
    2: _from_version_2,
    3: _from_version_3,
    4: _from_version_4,
    5: _from_version_5,
}


def migrate(metadata: object, store: str | Path = "<metadata>") -> dict:
    """Heatmap metadata of any version as a dict of the current version (a copy). Fields are checked by
    ``from_dict``; a version newer than this code knows is an ``InputError``."""
    if not isinstance(metadata, dict):
        raise _invalid(store, "", "an object", metadata)
    if metadata.get("schema", SCHEMA) != SCHEMA:
        raise _invalid(store, "schema", repr(SCHEMA), metadata["schema"])
    version = metadata.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _invalid(store, "version", "a positive integer", version)
    if version > VERSION:
        raise InputError(
            store,
            f"heatmap metadata version {version} was written by a newer wsi_pipeline (this one reads "
            f"versions up to {VERSION}); upgrade wsi_pipeline to read it",
        )
    metadata = copy.deepcopy(metadata)
    for step in range(version, VERSION):
        metadata = _MIGRATIONS[step](metadata)
    return metadata


def updated(record: HeatmapRecord, store: str | Path, **changes: object) -> HeatmapRecord:
    """``record`` with some fields replaced (by values of their type, or their dict and list form), checked as
    it will be read back."""
    return from_dict(to_dict(replace(record, **changes)), store)


# What a heatmap's values depend on (paths into its metadata, and what to call them): a heatmap is resumed or
# kept only when all of these are the same.
IDENTITY = {
    ("slide", "sha256"): "slide content (sha256)",
    ("slide", "backend"): "slide reader",
    ("slide", "jpeg_scaling"): "JPEG scaling",
    ("slide", "read_rule"): "level read rule",
    ("models", "weights_sha256"): "model weights (sha256)",  # of each model of an ensemble, in order
    ("models", "engine"): "CPU engine",
    ("models", "precision"): "precision",
    ("models", "calibration_sha256"): "int8 calibration (sha256)",  # another calibration, another int8 model
    **{("grid", f.name): f"grid {f.name}" for f in fields(PatchGrid)},
    ("tissue", "threshold"): "tissue threshold",
    ("tissue", "mpp"): "tissue µm/px",
    ("tissue", "min_um2"): "tissue min. area",
    ("tissue", "max_hole_um2"): "tissue max. hole area",
    ("block_cells",): "block cells",
    ("tta",): "test-time augmentation",
}


def parameter_differences(old: HeatmapRecord, new: HeatmapRecord) -> list[str]:
    """What a heatmap's values depend on that differs between two runs' metadata, with both values (a record
    migrated from an earlier version holds what those heatmaps did without recording it); an ensemble's
    members' values are joined by " + "."""

    def look_up(metadata: object, keys: tuple[str, ...]) -> object:
        for index, key in enumerate(keys):
            if isinstance(metadata, list):
                return [look_up(item, keys[index:]) for item in metadata]
            if not isinstance(metadata, dict) or key not in metadata:
                return None
            metadata = metadata[key]
        return metadata

    def shown(value: object) -> str:
        if isinstance(value, list):
            return " + ".join(map(shown, value))
        return f"{value[:12]}…" if isinstance(value, str) and len(value) == 64 else repr(value)

    old, new = to_dict(old), to_dict(new)
    return [
        f"{name} {shown(look_up(old, keys))} in the heatmap, {shown(look_up(new, keys))} now"
        for keys, name in IDENTITY.items()
        if look_up(old, keys) != look_up(new, keys)
    ]


def recorded_sha256(existing: HeatmapRecord | None, path: Path | str) -> str | None:
    """The slide sha256 a heatmap recorded, when the file is still the one it was computed from (same path,
    size and modification time, as make and rsync judge), so re-runs over many slides do not read every file
    again; None otherwise (the file is hashed)."""
    if existing is None or is_url(path):  # a URL's identity is one request
        return None
    slide, stamp = existing.slide, slide_stamp(path)
    same_stamp = (slide.size, slide.mtime_ns) == (stamp["size"], stamp["mtime_ns"])
    return slide.sha256 if same_stamp and slide.path == slide_location(path) else None
