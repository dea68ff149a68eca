"""Bundled model folders and resolving ``--model`` to a folder."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.core.errors import InputError

DEFAULT_MODEL = "synthetic-pcam-cnn"  # bundled in models/; trained on synthetic data only


def bundled_models_dir() -> Path:
    """Bundled model folders: ``wsi_pipeline/models`` in a wheel, else the checkout's ``models/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A model folder given by path, or by the name of a bundled model."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    bundled = bundled_models_dir() / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise InputError(path, "model folder not found (neither a folder nor a bundled model name)")
