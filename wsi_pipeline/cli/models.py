"""``wsi-models``: the models ``--model`` can name. ``list`` shows the bundled and the known published
ones, ``pull`` downloads one (into the Hugging Face cache; with ``--out``, also as an ordinary model folder),
``info`` describes one."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence

from wsi_pipeline.cli.options import run_command
from wsi_pipeline.model.bundled import bundled_models_dir, resolve_model_folder
from wsi_pipeline.model.card import CARD_NAME, ModelCard
from wsi_pipeline.model.published import PUBLISHED
from wsi_pipeline.model.sources import pull_model

PROG = "wsi-models"
WIDTH = 110  # of the wrapped lines of text
SPECS = "a model folder, a bundled model's name, tiatoolbox:NAME or hf-hub:ORG/REPO[@REVISION]"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the bundled and the known published models")
    pull = commands.add_parser(
        "pull", help="download a model into the Hugging Face cache (with --out, also as a model folder)"
    )
    pull.add_argument("name", help="a published model: tiatoolbox:NAME or hf-hub:ORG/REPO[@REVISION]")
    pull.add_argument("--out", help="write an ordinary model folder (card and a copy of the weights) here")
    pull.add_argument(
        "--mpp",
        type=float,
        help="µm/px the model's patches are cut at, for a hub repo that does not say (needs --out)",
    )
    info = commands.add_parser("info", help="describe a model (downloading it first if needed)")
    info.add_argument("name", help=SPECS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"list": list_models, "pull": pull, "info": info}
    return run_command(PROG, lambda: commands[args.command](args))


def list_models(args: argparse.Namespace) -> int:
    """Print the published models (and the sources of their metrics), then the bundled ones."""
    sources: list[str] = []
    rows = []
    for model in PUBLISHED:
        metric = ", ".join(f"{key} {value:.3f}" for key, value in model.metrics.items() if key != "source")
        if metric:
            source = model.metrics["source"]
            sources += [] if source in sources else [source]
            metric += f" [{sources.index(source) + 1}]"
        arguments = ", ".join(str(value) for value in model.architecture_args.values())
        architecture = f"{model.architecture} ({arguments})" if arguments else model.architecture
        rows.append(
            (
                model.spec,
                architecture,
                model.training_data,
                _input(model.patch_size, model.mpp),
                model.license,
                metric,
            )
        )
    print("Published models (downloaded from the Hugging Face Hub on first use):")
    _table(("NAME", "ARCHITECTURE", "TRAINED ON", "INPUT", "LICENCE", "PUBLISHED METRIC"), rows)
    for number, source in enumerate(sources, 1):
        print(f"[{number}] {source}")
    print("\nBundled models (no download):")
    cards = bundled_cards()
    rows = [
        (card.name, card.architecture, _input(card.patch_size, card.mpp), card.license or "-")
        for card in cards
    ]
    _table(("NAME", "ARCHITECTURE", "INPUT", "LICENCE"), rows)
    for card in cards:
        print(
            textwrap.fill(
                f"{card.name}: {card.intended_use}",
                WIDTH,
                initial_indent="- ",
                subsequent_indent="  ",
                break_on_hyphens=False,
            )
        )
    return 0


def pull(args: argparse.Namespace) -> int:
    """Download a model; print the folder it is in."""
    folder = pull_model(args.name, args.out, args.mpp)
    print(f"{args.name} -> {folder}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print what a model's card says about it, and where it came from."""
    from wsi_pipeline.model.folder import read_card

    folder = resolve_model_folder(args.name)
    card = read_card(folder)
    source, arguments = card.source, card.architecture_args
    lines = [
        ("name", card.name),
        ("folder", str(folder)),
        ("architecture", " ".join([card.architecture, *([json.dumps(arguments)] if arguments else [])])),
        ("classes", f"{', '.join(card.class_names)} ({card.output})"),
        ("input", f"{_input(card.patch_size, card.mpp)}, mean {list(card.mean)}, std {list(card.std)}"),
        ("weights", f"{card.weights} ({card.weights_format})"),
        ("licence", card.license or "not stated"),
        ("intended use", card.intended_use or "not stated"),
        *(
            (f"metrics: {key}", _numbers(entry))
            for key, entry in card.metrics.items()
            if isinstance(entry, dict)
        ),
    ]
    if source.get("repo"):
        lines += [
            ("source", f"{source['repo']} at {source['revision']}"),
            ("files", ", ".join(source["files"])),
            ("weights sha256", source["sha256"]),
        ]
    lines += [(key, str(source[key])) for key in ("mpp_from", "homepage", "citation") if source.get(key)]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def bundled_cards() -> list[ModelCard]:
    """The cards of the bundled models, read without loading torch."""
    paths = sorted(bundled_models_dir().glob(f"*/{CARD_NAME}"))
    return [ModelCard(**json.loads(path.read_text())) for path in paths]


def _input(patch_size: int, mpp: float) -> str:
    return f"{patch_size} px at {mpp:g} µm/px"


def _numbers(entry: dict) -> str:
    """The numbers of a metrics entry, and its source."""
    numbers = [
        f"{key} {value:.4g}"
        for key, value in entry.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    source = f" (source: {entry['source']})" if "source" in entry else ""
    return ", ".join(numbers) + source


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
