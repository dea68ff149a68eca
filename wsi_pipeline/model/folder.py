"""Model folders on disk: reading a card (ours, or a WSInfer model-zoo config) and recording metrics in it."""

from __future__ import annotations

import json
from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.model.architectures import check_architecture
from wsi_pipeline.model.card import CARD_NAME, ModelCard, write_card
from wsi_pipeline.model.wsinfer import WSINFER_CONFIG, wsinfer_card


def read_card(folder: str | Path) -> ModelCard:
    """The card of a model folder (``model.json``, else WSInfer's ``config.json``), with a clear error naming
    what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder not found")
    path = folder / CARD_NAME
    if not path.is_file():
        path = folder / WSINFER_CONFIG
    if not path.is_file():
        raise InputError(folder, f"not a model folder (no {CARD_NAME}, nor WSInfer's {WSINFER_CONFIG})")
    kind = "model card" if path.name == CARD_NAME else "WSInfer model config"
    try:
        config = json.loads(path.read_text())
        card = ModelCard(**config) if path.name == CARD_NAME else wsinfer_card(config, folder)
        card.validate()
        if card.weights_format == "state_dict":
            check_architecture(card.architecture)
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as error:
        raise InputError(path, f"invalid {kind} ({error})") from None
    if not (folder / card.weights).is_file():
        raise InputError(folder / card.weights, f"weights file named by the {kind} is missing")
    return card


def record_metrics(folder: str | Path, key: str, entry: dict) -> None:
    """Store ``entry`` in a model folder's card under ``metrics[key]`` (the card is rewritten atomically)."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise InputError(folder, f"metrics can only be recorded in a {CARD_NAME} card")
    card = read_card(folder)
    card.metrics[key] = entry
    write_card(folder, card)
