"""Start-up time: each command line run ``--repeats`` times, each in a fresh interpreter, and the median wall
time, with how many modules it loaded and which of the packages in ``WATCHED`` (``python -X importtime``).

Timed: ``wsi-score --help`` (and the other commands' ``--help``), ``python -c "import wsi_pipeline"``, and
reading a small heatmap with ``read_heatmap`` (scored here from a synthetic slide by the bundled probe model).
Targets: ``--help`` under 1.0 s, the import under 0.5 s.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET_S, IMPORT_TARGET_S = 1.0, 0.5
HEAVY = ("torch", "dask", "distributed", "matplotlib")  # none of them on the fast paths
WATCHED = (*HEAVY, "timm", "onnxruntime", "zarr", "skimage", "scipy", "h5py", "tifffile", "numpy", "PIL")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command line")
    p.add_argument("--workdir", type=Path, help="parent of the temporary working folder")
    return p.parse_args(argv)


def make_heatmap(folder: Path) -> Path:
    """A small heatmap: a 2,000 × 1,500 px synthetic slide scored by the bundled probe model, in process."""
    from wsi_pipeline import ScoreOptions, score_slides
    from wsi_pipeline.synthetic.svs import Rect, RectScene, write_slide

    scene = RectScene([Rect(250, 200, 1750, 1300, (200, 60, 160)), Rect(800, 600, 1200, 900, (40, 20, 60))])
    write_slide(folder / "small.svs", scene, 2000, 1500, 0.5, downsamples=(1, 4))
    [result] = score_slides(
        [folder / "small.svs"],
        "centre-colour-probe",
        folder / "out",
        options=ScoreOptions(device="cpu", engine="torch"),
        scheduler="threads",
        show_progress=False,
        reports=None,
    )
    if result.status != "ok":
        raise SystemExit(f"the heatmap could not be made: {result.message}")
    return result.heatmap


def script(name: str) -> str:
    """A console script of this environment (beside its python), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (pip install -e .)")
    return found


def wall_times(python_args: list[str], repeats: int) -> list[float]:
    """Wall time of ``python PYTHON_ARGS`` in ``repeats`` fresh interpreters."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *python_args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def modules_loaded(python_args: list[str]) -> tuple[int, list[str]]:
    """How many modules ``python PYTHON_ARGS`` imports, and which of ``WATCHED`` among them."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", *python_args], check=True, capture_output=True, text=True
    )
    lines = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    modules = [line.rpartition("|")[2].strip() for line in lines[1:]]  # the first line is the header
    top = {name.split(".")[0] for name in modules}
    return len(modules), [name for name in WATCHED if name in top]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=args.workdir))
    try:
        heatmap = make_heatmap(workdir)
        read = f"from wsi_pipeline import read_heatmap; read_heatmap({str(heatmap)!r})"
        cases = [  # (label, arguments of python, target in s)
            *(
                (f"{name} --help", [script(name), "--help"], HELP_TARGET_S)
                for name in ("wsi-score", "wsi-eval", "wsi-train", "wsi-synth")
            ),
            ('python -c "import wsi_pipeline"', ["-c", "import wsi_pipeline"], IMPORT_TARGET_S),
            ("read_heatmap (small heatmap)", ["-c", read], None),
        ]
        print(f"median wall time of {args.repeats} fresh interpreters ({sys.executable})")
        width = max(len(label) for label, _, _ in cases)
        for label, python_args, target in cases:
            times = wall_times(python_args, args.repeats)
            median = statistics.median(times)
            verdict = (
                "" if target is None else f"; target < {target} s: {'met' if median < target else 'MISSED'}"
            )
            print(f"{label:<{width}}  {median:.3f} s (runs {min(times):.3f}-{max(times):.3f}){verdict}")
            count, watched = modules_loaded(python_args)
            heavy = [name for name in watched if name in HEAVY]
            print(
                f"{'':<{width}}  {count} modules, among them {', '.join(watched) or 'no watched package'}"
                f"{'  <- HEAVY' if heavy else ''}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
