"""What a heatmap records about its run, and which of it decides whether a heatmap may be resumed or kept."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from wsi_pipeline.tiling.grid import PatchGrid

# What a heatmap's values depend on (paths into its metadata, and what to call them): a heatmap is resumed or
# kept only when all of these are the same.
IDENTITY = {
    ("slide", "sha256"): "slide content (sha256)",
    ("slide", "backend"): "slide reader",
    ("model", "weights_sha256"): "model weights (sha256)",
    ("model", "engine"): "CPU engine",
    **{("grid", f.name): f"grid {f.name}" for f in fields(PatchGrid)},
    ("tissue_threshold",): "tissue threshold",
    ("tissue_mpp",): "tissue µm/px",
    ("tissue_min_um2",): "tissue min. area",
    ("tissue_max_hole_um2",): "tissue max. hole area",
    ("block_cells",): "block cells",
    ("tta",): "test-time augmentation",
}
# Values of identity entries in heatmaps made before the entry was recorded (all ran torch, without TTA).
IDENTITY_BEFORE_RECORDED = {("model", "engine"): "torch", ("tta",): False}


def parameter_differences(old: dict, new: dict) -> list[str]:
    """What a heatmap's values depend on that differs between two runs' metadata, with both values."""

    def look_up(metadata: dict, keys: tuple[str, ...]) -> object:
        for key in keys:
            if not isinstance(metadata, dict) or key not in metadata:
                return IDENTITY_BEFORE_RECORDED.get(keys)
            metadata = metadata[key]
        return metadata

    def shown(value: object) -> str:
        return f"{value[:12]}…" if isinstance(value, str) and len(value) == 64 else repr(value)

    return [
        f"{name} {shown(look_up(old, keys))} in the heatmap, {shown(look_up(new, keys))} now"
        for keys, name in IDENTITY.items()
        if look_up(old, keys) != look_up(new, keys)
    ]


def file_stamp(path: Path) -> dict[str, int]:
    """A file's size and modification time (ns), recorded beside its sha256."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def recorded_sha256(existing: dict | None, path: Path) -> str | None:
    """The slide sha256 a heatmap recorded, when the file is still the one it was computed from (same path,
    size and modification time, as make and rsync judge), so re-runs over many slides do not read every file
    again; None otherwise (the file is hashed)."""
    recorded = (existing or {}).get("slide", {})
    same_file = recorded.get("path") == str(path.resolve()) and all(
        recorded.get(key) == value for key, value in file_stamp(path).items()
    )
    return recorded.get("sha256") if same_file else None
