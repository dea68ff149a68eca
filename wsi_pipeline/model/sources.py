"""Published models named by where they are published, resolved to model folders by
:func:`resolve_hub_model` (``bundled.resolve_model_folder``, which every ``--model`` goes through, hands
these names to it):

- ``tiatoolbox:NAME[@REVISION]``: a TIAToolbox PCam model (``wsi-models list``), weights from the Hugging Face
  Hub repo TIAToolbox publishes them in;
- ``hf-hub:ORG/REPO[@REVISION]``: a Hugging Face Hub repo in timm's format (``config.json`` naming the
  architecture, ``model.safetensors`` or ``pytorch_model.bin``) or WSInfer's (model-zoo ``config.json`` and
  weights).

Hub files are downloaded by ``huggingface_hub`` into its cache. The model folder of a hub model holds a card
written from the publisher's description (source repo, commit, weights sha256, licence, citation, intended
use) and a link to the cached weights; it lives in the hub's assets cache (``hub.asset_folder``), so a copied
``$HF_HOME`` serves an offline machine.

The µm/px a model's patches are cut at must be known: from WSInfer's ``spacing_um_px``, an ``mpp`` in a timm
``config.json`` (top level or ``pretrained_cfg``), or the table of published models. A repo stating none is
refused rather than guessed; ``pull_model(..., mpp=...)`` writes a folder for it with the spacing its
publisher documents elsewhere."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256, write_atomically
from wsi_pipeline.model.card import CARD_NAME, IMAGENET_MEAN, IMAGENET_STD, ModelCard, write_card
from wsi_pipeline.model.published import PUBLISHED, PublishedModel, published_model

HUB_PREFIXES = ("tiatoolbox:", "hf-hub:")
TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
README = "README.md"
FROM_TABLE = "wsi_pipeline's table of published models"  # where a card's µm/px is from
FROM_PULL = "given when pulled (--mpp)"


@dataclass(frozen=True)
class ModelSourceInfo:
    """Where a downloaded model's files came from: its spec (without a revision), the hub repo, the commit
    they were read at, the files used and the weights' sha256."""

    spec: str
    repo: str
    revision: str  # commit hash
    files: tuple[str, ...]
    sha256: str

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelSourceInfo | None:
        """The source a card records, or None for a model that was not downloaded."""
        source = card.source
        if not source.get("repo"):
            return None
        return cls(
            source["spec"], source["repo"], source["revision"], tuple(source["files"]), source["sha256"]
        )


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``tiatoolbox:`` or ``hf-hub:`` spec."""

    given: str  # as given: errors name it
    spec: str  # without the revision
    repo: str
    revision: str | None
    published: PublishedModel | None


def is_hub_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a hub model (``tiatoolbox:NAME`` or ``hf-hub:ORG/REPO``)."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIXES)


def parse_hub_spec(text: str) -> HubSpec:
    """The repo, revision and table record of a hub spec; one-line ``InputError`` for an unknown or
    malformed one."""
    if not is_hub_spec(text):
        raise InputError(text, "not a published model's name (tiatoolbox:NAME or hf-hub:ORG/REPO[@REVISION])")
    spec, _, revision = text.partition("@")
    prefix, _, name = spec.partition(":")
    published = published_model(spec)
    if prefix == "tiatoolbox":
        if published is None:
            known = ", ".join(m.name for m in PUBLISHED if m.spec.startswith("tiatoolbox:"))
            raise InputError(text, f"not a TIAToolbox PCam model (one of {known}; see `wsi-models list`)")
        repo = published.repo
    else:
        repo = name
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise InputError(text, "a hub model is named hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
    if "@" in text and not revision:
        raise InputError(text, "empty revision after '@'")
    return HubSpec(text, spec, repo, revision or None, published)


def resolve_hub_model(spec: str) -> Path:
    """The model folder of ``tiatoolbox:NAME[@REVISION]`` or ``hf-hub:ORG/REPO[@REVISION]``: downloaded on
    first use, then read from the hub's cache."""
    return _hub_folder(parse_hub_spec(spec))


def pull_model(spec: str, out: str | Path | None = None, mpp: float | None = None) -> Path:
    """Fetch the published model ``spec`` names (as :func:`resolve_hub_model`); with ``out``, write it there
    as an ordinary model folder (card and a copy of the weights). ``mpp`` gives the µm/px of a hub repo that
    does not state it (only with ``out``)."""
    hub = parse_hub_spec(spec)
    if out is None:
        if mpp is not None:
            raise ValueError("--mpp is for hub repos that do not state their µm/px, and needs --out")
        return _hub_folder(hub)
    fetched = _fetch(hub)
    card = _hub_card(hub, fetched, mpp)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / card.weights, lambda partial: shutil.copyfile(fetched.weights, partial))
    write_card(out, card)
    return out


@dataclass(frozen=True)
class Fetched:
    """A hub model's files in the hub cache: its ``config.json`` (when it has one) and weights."""

    config: dict
    files: dict[str, Path]
    weights: Path
    commit: str


def _fetch(hub: HubSpec) -> Fetched:
    """Download (or find in the hub cache) a hub model's config and weights, all from one commit."""
    from wsi_pipeline.model import hub as hub_files

    files: dict[str, Path] = {}
    config: dict = {}
    revision = hub.revision
    if hub.published is None or not hub.published.weights:
        _, files[TIMM_CONFIG] = hub_files.download(hub.given, hub.repo, [TIMM_CONFIG], hub.revision)
        config = _read_json(hub, files[TIMM_CONFIG])
        revision = hub_files.commit_of(files[TIMM_CONFIG], TIMM_CONFIG)
    name, weights = hub_files.download(hub.given, hub.repo, _weights_candidates(hub, config), revision)
    files[name] = weights
    return Fetched(config, files, weights, hub_files.commit_of(weights, name))


def _hub_folder(hub: HubSpec) -> Path:
    """Our model folder for a hub model: reused while its card and weights link are in place (it is per
    commit, so what it should hold never changes), else written afresh."""
    from wsi_pipeline.model import hub as hub_files

    fetched = _fetch(hub)
    folder = hub_files.asset_folder(hub.spec, fetched.commit)
    if not _complete(folder):
        card = _hub_card(hub, fetched, None)
        write_atomically(folder / card.weights, lambda partial: _link_or_copy(fetched.weights, partial))
        write_card(folder, card)
    return folder


def _hub_card(hub: HubSpec, fetched: Fetched, mpp: float | None) -> ModelCard:
    """The card of a hub model: from the table of published models, WSInfer's config or timm's, with where
    its files came from; the licence of a repo the table does not know from its README's metadata."""
    from wsi_pipeline.model import hub as hub_files

    files = dict(fetched.files)
    weights = fetched.weights.name
    if hub.published is not None and hub.published.weights:
        card = _published_card(hub.published, weights)
    elif _is_wsinfer(fetched.config):
        card = _wsinfer_card(hub, fetched.config, fetched.weights.parent)
    else:
        card = _timm_card(hub, fetched.config, weights, mpp)
    if mpp is not None and card.source["mpp_from"] != FROM_PULL and not math.isclose(mpp, card.mpp):
        raise InputError(
            hub.given, f"--mpp {mpp} contradicts the {card.mpp} µm/px of {card.source['mpp_from']}"
        )
    if hub.published is not None:
        card.license, card.intended_use = hub.published.license, hub.published.intended_use
        card.training.setdefault("data", hub.published.training_data)
        card.source |= {"citation": hub.published.citation, "homepage": hub.published.homepage}
    else:
        readme = hub_files.download_optional(hub.given, hub.repo, README, fetched.commit)
        if readme is not None:
            files[README] = readme
        card.license = str(hub_files.readme_metadata(readme).get("license", ""))
        card.intended_use = f"Not stated here: see the publisher's page of {hub.repo}; not validated here."
    card.name = hub.spec
    card.source |= {
        "spec": hub.spec,
        "repo": hub.repo,
        "revision": fetched.commit,
        "files": sorted(files),
        "sha256": file_sha256(fetched.weights),
    }
    card.validate()
    return card


def _complete(folder: Path) -> bool:
    """Whether a model folder's card and the weights it names are in place."""
    try:
        weights = json.loads((folder / CARD_NAME).read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (folder / weights).is_file()


def _read_json(hub: HubSpec, path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(hub.given, f"{path.name} of {hub.repo} is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise InputError(hub.given, f"{path.name} of {hub.repo} is not a JSON object")
    return config


def _is_wsinfer(config: dict) -> bool:
    from wsi_pipeline.model.wsinfer import WSINFER_KEYS

    return bool(config) and all(key in config for key in WSINFER_KEYS)


def _weights_candidates(hub: HubSpec, config: dict) -> list[str]:
    """Weights files to look for, best first."""
    if hub.published is not None and hub.published.weights:
        return [hub.published.weights]
    if not _is_wsinfer(config):
        if "architecture" not in config:
            raise InputError(
                hub.given,
                f"{TIMM_CONFIG} of {hub.repo} is neither timm's (no 'architecture') nor WSInfer's: not a "
                "supported model repo",
            )
        return list(TIMM_WEIGHTS)
    from wsi_pipeline.model.architectures import module_factory
    from wsi_pipeline.model.wsinfer import WSINFER_STATE_DICTS, WSINFER_TORCHSCRIPT

    try:
        module_factory(config.get("architecture", ""))
    except ValueError:  # an architecture only its TorchScript archive describes
        return [WSINFER_TORCHSCRIPT]
    return [*WSINFER_STATE_DICTS, WSINFER_TORCHSCRIPT]


def _published_card(published: PublishedModel, weights: str) -> ModelCard:
    """A card from the table of published models (the rest of what it says is added for every hub model)."""
    return ModelCard(
        name=published.spec,
        architecture=published.architecture,
        architecture_args=dict(published.architecture_args),
        class_names=list(published.class_names),
        output="softmax",
        patch_size=published.patch_size,
        mpp=published.mpp,
        mean=published.mean,
        std=published.std,
        weights=weights,
        description=f"{published.name} as published by {published.homepage}, weights from {published.repo}",
        metrics={"published": dict(published.metrics)} if published.metrics else {},
        source={"mpp_from": FROM_TABLE},
    )


def _wsinfer_card(hub: HubSpec, config: dict, snapshot: Path) -> ModelCard:
    """A card from a WSInfer model-zoo repo, read by the WSInfer adapter from the downloaded snapshot."""
    from wsi_pipeline.model.wsinfer import wsinfer_card

    try:
        card = wsinfer_card(config, snapshot)
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(hub.given, f"invalid WSInfer {TIMM_CONFIG} of {hub.repo} ({error})") from None
    card.source = {"mpp_from": f"{TIMM_CONFIG} (spacing_um_px)"}
    return card


def _timm_card(hub: HubSpec, config: dict, weights: str, mpp: float | None) -> ModelCard:
    """A card from a timm-format repo's ``config.json``: architecture, classes, input size and normalisation;
    the µm/px from the config, else the table of published models, else ``mpp``."""
    pretrained = config.get("pretrained_cfg") or {}
    classes = int(config.get("num_classes", pretrained.get("num_classes", 0)))
    names = [str(name) for name in config.get("label_names") or ()]
    if not names:
        names = list(hub.published.class_names) if hub.published else [f"class {i}" for i in range(classes)]
    channels, height, width = pretrained.get("input_size", (3, 224, 224))
    if classes < 1 or len(names) != classes or channels != 3 or height != width:
        problem = (
            f"{TIMM_CONFIG} of {hub.repo}: {classes} classes named {names}, input {channels}×{height}×{width}"
        )
        raise InputError(hub.given, f"unsupported: {problem} (square RGB input and one name per class)")
    mpp, mpp_from = _spacing(hub, config, pretrained, mpp)
    return ModelCard(
        name=hub.spec,
        architecture=f"timm:{config['architecture']}",
        architecture_args=dict(config.get("model_args") or {}),
        class_names=names if classes > 1 else [f"not {names[0]}", names[0]],
        output="softmax" if classes > 1 else "sigmoid",
        patch_size=int(height),
        mpp=mpp,
        mean=tuple(pretrained.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained.get("std", IMAGENET_STD)),
        weights=weights,
        description=f"timm-format Hugging Face Hub repo {hub.repo}",
        source={"mpp_from": mpp_from},
    )


def _spacing(hub: HubSpec, config: dict, pretrained: dict, given: float | None) -> tuple[float, str]:
    """The µm/px of a timm repo's input, and where it is from: its config, the table of published models, or
    ``given``; refused when none states it."""
    stated = config.get("mpp", pretrained.get("mpp"))
    if stated is not None:
        return float(stated), f"{TIMM_CONFIG} (mpp)"
    if hub.published is not None:
        return hub.published.mpp, FROM_TABLE
    if given is not None:
        return given, FROM_PULL
    raise InputError(
        hub.given,
        f"{hub.repo} does not state the µm/px its patches were cut at (no 'mpp' in {TIMM_CONFIG}) and is "
        "not a known published model: find it in the publisher's documentation, run `wsi-models pull "
        f"{hub.given} --mpp MPP --out DIR`, then use --model DIR",
    )


def _link_or_copy(target: Path, link: Path) -> None:
    """``link`` → ``target`` as a relative symbolic link (it survives moving ``$HF_HOME``), or a copy where
    links cannot be made."""
    target = target.resolve()
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except (OSError, ValueError):  # no symbolic links here, or (Windows) on another drive
        shutil.copyfile(target, link)
