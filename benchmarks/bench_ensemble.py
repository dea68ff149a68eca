"""What an ensemble costs: the bundled default model alone, the same model twice (``--model M --model M``: one
copy loaded per worker, every patch scored twice), and the default model with a copy of it whose weights
differ (two models loaded per worker), on one warm local cluster.

Slides are made as in ``bench_pipeline.py`` (cached with ``--slide-cache``). Each configuration first scores a
small warm-up slide (its workers load its models and the engine is chosen), then is timed as the median of
``--repeats`` runs, each into a fresh folder (tissue detection, hashing and writing the heatmap included).

    python benchmarks/bench_ensemble.py --slide-cache /tmp/bench-slides
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_options import add_warm_run_options, warm_run_slide
from bench_pipeline import OtherLoad, model_folder, show, warmup_slide
from safetensors.torch import load_file, save_file

from wsi_pipeline.model.card import write_card
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.scoring.api import score_slides
from wsi_pipeline.scoring.cluster import dask_client
from wsi_pipeline.scoring.options import ScoreOptions, SlideResult

PERTURBATION = 1.01  # the copy's weights: the default model's, scaled (another sha256, the same cost)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_warm_run_options(p)
    return p.parse_args(argv)


def perturbed_copy(folder: Path, out: Path) -> Path:
    """A copy of a model folder with its floating-point weights scaled by ``PERTURBATION``: another model to
    its workers (another sha256) at the same cost."""
    card = read_card(folder)
    state = load_file(folder / card.weights)
    out.mkdir(parents=True)
    save_file(
        {k: v * PERTURBATION if v.is_floating_point() else v for k, v in state.items()}, out / card.weights
    )
    write_card(out, replace(card, name=f"{card.name}-perturbed"))
    return out


def scored(slide: Path, models: list[Path], out: Path, options: ScoreOptions, client: object) -> SlideResult:
    (result,) = score_slides(
        [slide], models, out, options=options, client=client, show_progress=False, reports=None
    )
    if result.status != "ok":
        raise SystemExit(f"scoring {result.slide} {result.status}: {result.message}")
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ensemble-", dir=args.workdir))
    try:
        slide, described = warm_run_slide(args, workdir)
        warmup = warmup_slide(workdir, args.mpp)
        default = model_folder("default", workdir)
        configurations = {
            "default model alone": [default],
            "default model twice": [default, default],
            "default + perturbed copy": [default, perturbed_copy(default, workdir / "models" / "perturbed")],
        }
        options = ScoreOptions(device="cpu", engine=args.engine)
        load, runs = OtherLoad(), {}
        with dask_client(scheduler="local", n_workers=args.workers) as client:
            for index, (name, models) in enumerate(configurations.items()):
                scored(warmup, models, workdir / f"{index}-warm-up", options, client)
                timed = []
                for repeat in range(args.repeats):
                    start = time.perf_counter()
                    result = scored(slide, models, workdir / f"{index}-{repeat}", options, client)
                    timed.append((time.perf_counter() - start, result))
                runs[name] = sorted(timed, key=lambda entry: entry[0])[len(timed) // 2]
        show("slide", f"{described}, {args.workers} workers, median of {args.repeats}")
        base = runs["default model alone"][0]
        for name, (seconds, result) in runs.items():
            show(
                name,
                f"{result.patches} patches in {seconds:.2f} s ({result.patches / seconds:.0f} patches/s); "
                f"time x{seconds / base:.2f}",
            )
        show("CPU of other processes, cores", f"{load.cores():.2f} (near 0: the machine was idle)")
    finally:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
