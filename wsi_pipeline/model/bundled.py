"""Bundled model folders, and resolving ``--model`` to a model folder."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "synthetic-pcam-cnn"  # bundled in models/; trained on synthetic data only


def bundled_models_dir() -> Path:
    """Bundled model folders: ``wsi_pipeline/models`` in a wheel, else the checkout's ``models/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """A model folder given by path, by a bundled model's name, or as a hub model (``tiatoolbox:NAME``,
    ``hf-hub:ORG/REPO``) fetched on first use: ``sources.resolve_model``."""
    from wsi_pipeline.model.sources import resolve_model  # it imports this module

    return resolve_model(name_or_path)
