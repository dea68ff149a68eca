"""``wsi-train``: train a patch classifier on a patch dataset and write it as a model folder."""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from wsi_pipeline.cli.options import add_batch_size, add_device, add_quiet, add_seed, run_command
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.datasets.patches import KAGGLE_LABELS, PatchDataset, open_patch_dataset
from wsi_pipeline.model.card import PCAM_MPP
from wsi_pipeline.training.config import AugmentConfig, TrainConfig

DEFAULTS = TrainConfig()


def parse_arch_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (``4``, ``0.2``, ``True``) or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-train", description=__doc__)
    p.add_argument(
        "train_data", help="PCam folder, Kaggle folder (train_labels.csv + train/) or class folders"
    )
    p.add_argument(
        "--out", required=True, help="model folder to write (must be new or empty, unless --resume)"
    )
    p.add_argument("--val", help="validation data (default: the PCam valid split next to a PCam TRAIN_DATA)")
    p.add_argument("--architecture", default=DEFAULTS.architecture, help="a timm model name, or compact_cnn")
    p.add_argument(
        "--arch-arg",
        action="append",
        default=[],
        type=parse_arch_arg,
        metavar="KEY=VALUE",
        help="architecture argument, repeatable (compact_cnn: depth=4 width=16 dropout=0.2)",
    )
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights, not ImageNet's")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="at most (default: %(default)s)")
    add_batch_size(p, DEFAULTS.batch_size)
    p.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help="peak of the one-cycle schedule (%(default)s)"
    )
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW's (%(default)s)")
    p.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS.patience,
        help="epochs without a better val AUC (%(default)s)",
    )
    p.add_argument("--accumulate", type=int, default=DEFAULTS.accumulate, help="batches per optimiser step")
    add_seed(p, DEFAULTS.seed)
    p.add_argument("--max-train-samples", type=int, help="patches drawn per epoch (default: all)")
    p.add_argument("--max-val-samples", type=int, help="validate on a fixed random subset of this size")
    augmentation = p.add_argument_group("augmentation (0 switches one off)")
    for option in fields(AugmentConfig):
        flag, help_text = option.name.replace("_", "-"), option.metadata["help"]
        if isinstance(option.default, bool):
            augmentation.add_argument(
                f"--no-{flag}", dest=option.name, action="store_false", help=f"no {help_text}"
            )
        else:
            augmentation.add_argument(
                f"--{flag}", type=float, default=option.default, help=f"{help_text} (default: %(default)s)"
            )
    add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument(
        "--stop-after", type=int, help="stop this run after N epochs (continue later with --resume)"
    )
    p.add_argument("--name", help="model name for the card (default: the --out folder's name)")
    p.add_argument("--note", default="", help="opening words of the card's description: data, intended use")
    p.add_argument("--mpp", type=float, default=PCAM_MPP, help="µm/px of the patches (default: PCam's)")
    add_quiet(p)
    return p


def open_data(train_path: str, val_path: str | None) -> tuple[PatchDataset, PatchDataset]:
    """The training data, and the validation data: ``val_path`` (its valid split if PCam, its labelled split
    if Kaggle), else the PCam valid split of the training folder."""
    train_data = open_patch_dataset(train_path, split="train")
    if val_path is not None:
        kaggle = (Path(val_path) / KAGGLE_LABELS).is_file()  # labelled "train" split only
        return train_data, open_patch_dataset(val_path, split="train" if kaggle else "valid")
    if train_data.format != "pcam":
        raise InputError(train_path, f"a {train_data.format} dataset has no validation split; give --val")
    return train_data, open_patch_dataset(Path(train_data.paths[0]).parent, split="valid")


def run_training(args: argparse.Namespace, argv: list[str]) -> int:
    """Train as parsed (``argv``: the command line, recorded in the card)."""
    from wsi_pipeline.model.device import resolve_device  # torch: loaded once parsed
    from wsi_pipeline.training.train import train

    config = TrainConfig(
        architecture=args.architecture,
        architecture_args=dict(args.arch_arg),
        pretrained=not args.no_pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        accumulate=args.accumulate,
        seed=args.seed,
        max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples,
        augment=AugmentConfig(
            **{option.name: getattr(args, option.name) for option in fields(AugmentConfig)}
        ),
    )
    config.validate()
    device = resolve_device(args.device)
    train_data, val_data = open_data(args.train_data, args.val)
    with train_data, val_data:
        out = train(
            config,
            train_data,
            val_data,
            args.out,
            name=args.name,
            note=args.note,
            mpp=args.mpp,
            device=device,
            command=shlex.join(["wsi-train", *argv]),
            resume=args.resume,
            stop_after=args.stop_after,
            show_progress=not args.quiet,
        )
    print(f"ok {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    return run_command("wsi-train", lambda: run_training(args, argv))


if __name__ == "__main__":
    sys.exit(main())
