"""Bundled model folders, and resolving ``--model`` to a model folder."""

from __future__ import annotations

from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.model.sources import is_hub_spec, resolve_hub_model

DEFAULT_MODEL = "synthetic-pcam-cnn"  # bundled in models/; trained on synthetic data only


def bundled_models_dir() -> Path:
    """Bundled model folders: ``wsi_pipeline/models`` in a wheel, else the checkout's ``models/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """The model folder ``--model`` names: a folder, a published model's name (``tiatoolbox:NAME``,
    ``hf-hub:ORG/REPO[@REVISION]``: ``sources.resolve_hub_model``, fetched on first use) or a bundled model's
    name. Every entry point resolves ``--model`` here."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if is_hub_spec(name_or_path):
        return resolve_hub_model(str(name_or_path))
    bundled = bundled_models_dir() / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise InputError(
        path,
        "model not found (neither a folder, a bundled model's name, tiatoolbox:NAME nor hf-hub:ORG/REPO; "
        "see `wsi-models list`)",
    )
