"""``wsi-score``: score slides (files or folders of slides) into OME-Zarr heatmaps, with per-slide reports
(summary, QuPath GeoJSON, overlay picture) and a batch table ``OUT/slides.csv``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from wsi_pipeline.cli.options import (
    add_model_options,
    add_quiet,
    add_threshold,
    add_verbose,
    exit_at_once,
    print_error,
    run_command,
)
from wsi_pipeline.core.errors import ClusterError, InputError
from wsi_pipeline.core.logs import LogRoute, run_header
from wsi_pipeline.model.bundled import DEFAULT_MODEL
from wsi_pipeline.model.card import ENGINES, PRECISIONS
from wsi_pipeline.scoring.options import SCHEDULERS_HELP, ScoreOptions, SlideResult
from wsi_pipeline.scoring.slurm import SlurmOptions, slurm_options
from wsi_pipeline.slide.reader import BACKENDS, JPEG_SCALINGS

DEFAULTS = ScoreOptions()
SLURM_DEFAULTS = SlurmOptions()
INTERRUPTED = "interrupted; the blocks written are kept: run again to resume"
LOG = "wsi-score.log"  # in the output folder: library warnings and tracebacks, each run's appended


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-score", description=__doc__)
    p.add_argument("slides", nargs="+", help="slide files or folders of slides")
    p.add_argument("-o", "--out", default="results", help="output folder (default: results)")
    add_model_options(p, batch_size=DEFAULTS.batch_size, bundled_default=True, ensemble=True)
    p.add_argument(
        "--engine",
        default=DEFAULTS.engine,
        choices=ENGINES,
        help="CPU engine: auto (the faster of torch and ONNX Runtime for this model, measured once and "
        "cached), torch or onnxruntime; CUDA always runs torch",
    )
    p.add_argument(
        "--precision",
        default=DEFAULTS.precision,
        choices=PRECISIONS,
        help="int8 (CPU): ONNX Runtime on the model quantized and calibrated on tissue patches, used when it "
        "agrees with float32 on patches held out (else a warning and float32); cached",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR_OR_SLIDE",
        help="what int8 is calibrated on: a slide, a folder of slides or a patch data set (default: tissue "
        "of the first slide)",
    )
    p.add_argument("--backend", default=DEFAULTS.backend, choices=BACKENDS, help="slide reader")
    p.add_argument(
        "--jpeg-scaling",
        default=DEFAULTS.jpeg_scaling,
        choices=JPEG_SCALINGS,
        help="auto: read a JPEG-tiled level 2, 4 or 8 times coarser by decoding it at that scale (libjpeg's "
        "scaled IDCT; tiffslide, local files) when the model's µm/px is that much coarser; off: decode in "
        "full and resample. Recorded in the heatmap (default: as the heatmap resumed or kept was read, "
        "else auto)",
    )
    p.add_argument("--mpp", type=float, help="µm per level-0 pixel; overrides the file's value")
    p.add_argument("--stride", type=int, help="target pixels between patches (default: the patch size)")
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=DEFAULTS.tissue_threshold,
        help="min tissue fraction to score a patch",
    )
    p.add_argument(
        "--tissue-min-um2", type=float, default=DEFAULTS.tissue_min_um2, help="drop smaller tissue specks"
    )
    p.add_argument(
        "--tissue-max-hole-um2", type=float, default=DEFAULTS.tissue_max_hole_um2, help="fill smaller holes"
    )
    p.add_argument(
        "--block-cells",
        type=int,
        default=DEFAULTS.block_cells,
        help="grid cells per block side: one read and one task each (default %(default)s)",
    )
    p.add_argument("--scheduler", default="auto", help=SCHEDULERS_HELP)
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes of local, threads of threads (default: cores); SLURM: --jobs, --cores-per-job",
    )
    add_slurm_options(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="score afresh slides whose heatmap exists (complete, partial, or made with other parameters); "
        "without it, complete heatmaps are kept and partial ones resumed",
    )
    p.add_argument(
        "--retry-unreadable",
        action="store_true",
        help="score again the blocks of heatmaps holding cells whose pixels could not be decoded",
    )
    add_threshold(p)
    p.add_argument("--top-k", type=int, default=10, help="cells in the slide's top-k mean score (default 10)")
    p.add_argument("--tile-table", action="store_true", help="also write <stem>.tiles.csv (one row per cell)")
    p.add_argument(
        "--geojson-tiles", action="store_true", help="also put every scored tile in the GeoJSON (detections)"
    )
    p.add_argument(
        "--review-tiles",
        type=int,
        default=16,
        metavar="K",
        help="top tiles on <stem>.review.png, with a row of borderline ones (default %(default)s; 0: none)",
    )
    p.add_argument(
        "--explain", action="store_true", help="draw each review tile's Grad-CAM saliency beside it (CNNs)"
    )
    p.add_argument(
        "--dicom-out",
        action="store_true",
        help="also write <stem>.pm.dcm (probability map) and <stem>.ann.dcm (regions) for DICOM slides",
    )
    p.add_argument(
        "--no-reports",
        action="store_true",
        help="no summary, GeoJSON, overlay or review sheet (the batch table is kept)",
    )
    add_quiet(p)
    add_verbose(p, f"OUT/{LOG}")
    return p


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    """The worker jobs of ``--scheduler slurm``, each option named by its ``SlurmOptions`` field (dest)."""
    d = SLURM_DEFAULTS
    g = p.add_argument_group("SLURM (--scheduler slurm; each option overrides --slurm-config)")
    g.add_argument(
        "--slurm-config",
        metavar="FILE",
        help='TOML file of these options by field name: partition = "cpu", jobs = 4, cores = 16, '
        'memory = "64GB", sbatch = ["--qos=long"], ... (see the README)',
    )
    g.add_argument(
        "--partition", metavar="NAME", help="partition of the worker jobs (default: the cluster's default)"
    )
    g.add_argument("--account", metavar="NAME", help="account the jobs are charged to")
    g.add_argument(
        "--jobs", type=int, metavar="N", help=f"worker jobs (default {d.jobs}); a lost job is submitted again"
    )
    g.add_argument(
        "--max-jobs", type=int, metavar="N", help="adaptive: up to this many jobs while blocks wait"
    )
    g.add_argument(
        "--cores-per-job",
        dest="cores",
        type=int,
        metavar="N",
        help=f"cores per job, one single-threaded worker process each (default {d.cores})",
    )
    g.add_argument(
        "--memory-per-job", dest="memory", metavar="SIZE", help=f"memory per job (default {d.memory})"
    )
    g.add_argument(
        "--walltime", metavar="TIME", help=f"time limit per job, [D-]HH:MM:SS (default {d.walltime})"
    )
    g.add_argument("--gres", help="generic resources per job, e.g. gpu:2 (then one worker process per GPU)")
    g.add_argument(
        "--sbatch",
        action="append",
        metavar="OPTION",
        help="a further #SBATCH option, e.g. --sbatch=--qos=long (repeatable)",
    )
    g.add_argument(
        "--worker-python", dest="python", metavar="PATH", help="the workers' Python (default: this one)"
    )
    g.add_argument(
        "--job-log-dir", dest="log_dir", metavar="DIR", help="folder of the jobs' output (default: SLURM's)"
    )
    g.add_argument("--interface", metavar="NAME", help="network interface of scheduler and workers, e.g. ib0")


def _slurm(args: argparse.Namespace) -> SlurmOptions | None:
    """The SLURM options parsed (and validated) for ``--scheduler slurm``, else None."""
    given = {f.name: vars(args)[f.name] for f in fields(SlurmOptions) if vars(args)[f.name] is not None}
    if args.scheduler == "slurm":
        return slurm_options(args.slurm_config, **given)
    if given or args.slurm_config is not None:
        raise ValueError(
            "--slurm-config and the SLURM options (--partition, --jobs, ...) need --scheduler slurm"
        )
    return None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a batch system's time limit, scancel) stops a run as Ctrl-C does: resumable, unlocked."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def demonstration_warning(results: list[SlideResult]) -> str | None:
    """One line for the slides a demonstration model answered without the synthetic mark (their sizes got no
    category), naming a real model to use; None when there are none."""
    from wsi_pipeline.findings.summary import REAL_MODEL, category_assessed
    from wsi_pipeline.store.heatmap import read_record

    kept = ("ok", "partial", "skipped")
    records = [read_record(result.heatmap) for result in results if result.status in kept]
    flagged = [record for record in records if not category_assessed(record)]
    if not flagged:
        return None
    names = sorted({model.name for record in flagged for model in record.models if model.demonstration})
    return (
        f"wsi-score: warning: demonstration model {' and '.join(names)} on {len(flagged)} slide(s) not made "
        f"by wsi-synth: not for diagnosis, no size category given; for real tissue use --model {REAL_MODEL} "
        "(see wsi-models list)"
    )


def score(args: argparse.Namespace, command: list[str]) -> int:
    """Score the slides as parsed, ``command`` heading their part of ``OUT/wsi-score.log``; 1 when a slide
    failed, or the run met an unexpected error (one line here, its traceback in the log)."""
    log = LogRoute(Path(args.out) / LOG, verbose=args.verbose, prog="wsi-score", header=run_header(command))
    log.install()
    try:
        return _score(args)
    except (InputError, ClusterError, ValueError):
        raise
    except Exception as error:
        if not log.log_failure("wsi-score stopped by an unexpected error", error):
            raise
        message = f"unexpected {type(error).__name__}: {error} (its traceback is in {log.route.path})"
        print_error("wsi-score", message)
        return 1
    finally:
        log.remove()


def _score(args: argparse.Namespace) -> int:
    from wsi_pipeline.findings.options import ReportOptions  # the scoring stack: loaded once parsed
    from wsi_pipeline.scoring.api import score_slides
    from wsi_pipeline.scoring.ledger import BATCH_TABLE
    from wsi_pipeline.slide.dicom import is_dicom
    from wsi_pipeline.slide.find import find_slides

    parsed = vars(args)  # each option named as a field of ScoreOptions sets that field
    options = ScoreOptions(**{f.name: parsed[f.name] for f in fields(ScoreOptions) if f.name in parsed})
    reports = ReportOptions(
        args.threshold,
        args.top_k,
        args.tile_table,
        args.geojson_tiles,
        args.review_tiles,
        args.explain,
        args.dicom_out,
    )
    options.validate()
    reports.validate()
    slurm = _slurm(args)
    slides = find_slides(args.slides)
    not_dicom = [slide for slide in slides if args.dicom_out and not is_dicom(slide)]
    if not_dicom:
        raise InputError(not_dicom[0], "--dicom-out needs DICOM slides (convert it first: wsidicomizer)")
    if args.dicom_out and importlib.util.find_spec("highdicom") is None:
        raise ValueError("--dicom-out needs highdicom: pip install 'wsi-pipeline[dicom]'")
    with _sigterm_interrupts():
        results = score_slides(
            slides,
            args.model or [DEFAULT_MODEL],
            args.out,
            options=options,
            scheduler=args.scheduler,
            n_workers=args.workers,
            slurm=slurm,
            show_progress=not args.quiet,
            reports=None if args.no_reports else reports,
        )
    from wsi_pipeline.findings.summary import answer_parts  # with SciPy: loaded by the reports by now

    for result in results:
        if result.status == "failed":
            print_error("wsi-score", result.message)
        elif result.status == "skipped":
            print(f"skipped {result.slide}: {result.message}")
        else:
            note = f"; {result.message}" if result.message else ""
            done = f"{result.patches} patches, {result.seconds:.1f} s{note}"
            print(f"{result.status} {result.slide} -> {result.heatmap} ({done})")
        if result.summary is not None:
            print("  " + "; ".join(answer_parts(result.summary)))
    warning = demonstration_warning(results)
    if warning is not None:
        print(warning, file=sys.stderr)
    print(f"batch table: {Path(args.out) / BATCH_TABLE}")
    return 1 if any(r.status == "failed" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    return run_command("wsi-score", lambda: score(args, ["wsi-score", *argv]), INTERRUPTED)


def run() -> NoReturn:
    """The ``wsi-score`` command: ``main``, then the process ends at once (``exit_at_once``)."""
    exit_at_once(main())


if __name__ == "__main__":
    run()
