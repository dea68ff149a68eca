"""What the commands share: the options several of them take, written once, and running a command with
one-line errors.

Only light modules are imported here (no torch, Dask or matplotlib), so that ``--help`` answers at once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from wsi_pipeline.core.errors import ClusterError, InputError
from wsi_pipeline.model.bundled import DEFAULT_MODEL

Options = argparse._ActionsContainer  # a parser, or a group of its options


def add_device(p: Options) -> None:
    """``--device``: where the model runs."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def add_batch_size(p: Options, default: int) -> None:
    """``--batch-size``: patches per model call."""
    p.add_argument("--batch-size", type=int, default=default, help="patches per batch (default: %(default)s)")


def add_model_options(
    p: Options, *, batch_size: int, bundled_default: bool = False, ensemble: bool = False
) -> None:
    """How a model scores patches: ``--model`` (by default the bundled default model with
    ``bundled_default``, else none; with ``ensemble`` it may be repeated, a list, and its default is given
    as None: the caller takes ``args.model or [DEFAULT_MODEL]``), ``--device``, ``--batch-size`` and
    ``--tta``."""
    model_help = (
        "model folder (model.json + weights), WSInfer model folder, a bundled model's name, or a published "
        "model's: tiatoolbox:NAME, hf-hub:ORG/REPO[@REVISION] (see wsi-models list)"
    )
    if ensemble:
        model_help += (
            "; repeat for an ensemble: every patch is scored by each model and the heatmap holds the mean "
            "probability (the models must share patch size, µm/px and class names)"
        )
    if bundled_default:
        model_help += (
            f" (default: {DEFAULT_MODEL}, trained on synthetic data: for demonstration and testing, "
            "not for diagnosis)"
        )
    if ensemble:
        p.add_argument("--model", action="append", help=model_help)
    else:
        p.add_argument("--model", default=DEFAULT_MODEL if bundled_default else None, help=model_help)
    add_device(p)
    add_batch_size(p, batch_size)
    p.add_argument(
        "--tta", action="store_true", help="average each patch's 8 flips/rotations (8× the model's work)"
    )


def add_threshold(p: Options) -> None:
    """``--threshold``: the tumour probability from which a heatmap cell counts as tumour."""
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="tumour probability from which a cell is tumour (default: %(default)s)",
    )


def add_seed(p: Options, default: int = 0) -> None:
    """``--seed`` of the random draws."""
    p.add_argument("--seed", type=int, default=default, help="random seed (default: %(default)s)")


def add_quiet(p: Options) -> None:
    """``-q``/``--quiet``: no progress output."""
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def add_verbose(p: Options, log: str) -> None:
    """``-v``/``--verbose``: what goes to the ``log`` file (library warnings, tracebacks) shown live too."""
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"show library warnings and tracebacks as they come (they always go to {log})",
    )


def print_error(prog: str, message: object) -> None:
    """``PROG: error: MESSAGE`` on stderr (an ``InputError`` reads ``FILE: problem``)."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_command(prog: str, command: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``command()``'s exit status; an ``InputError``, ``ClusterError`` or ``ValueError`` is instead one line
    on stderr and status 2, and Ctrl-C (``KeyboardInterrupt``) ``PROG: INTERRUPTED`` and status 130: no
    tracebacks."""
    try:
        return command()
    except (InputError, ClusterError, ValueError) as error:
        print_error(prog, error)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def exit_at_once(code: int) -> NoReturn:
    """End a command's process with status ``code`` once what it wrote is flushed and its log closed, without
    the interpreter's finalization: unloading torch, ONNX Runtime and Dask took 1.2 s after a scoring run
    that had finished everything it does (all files are closed and clusters shut down by then)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
