"""Fast start: importing the package, every command's ``--help`` and reading a heatmap load neither torch,
Dask nor matplotlib, and scoring with a checked ONNX Runtime export loads no torch. Each check runs in a fresh
interpreter, so nothing this test session imported counts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wsi_pipeline import read_heatmap, score_slide
from wsi_pipeline.core.files import CACHE_ENV

from .conftest import make_slide

HEAVY = ("torch", "dask", "distributed", "matplotlib")


def run_fresh(code: str) -> tuple[str, set[str]]:
    """Run ``code`` in a fresh interpreter: its output (before the module list) and the modules it loaded."""
    report = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, timeout=120, check=True
    )
    output, _, modules = run.stdout.rstrip("\n").rpartition("\n")
    return output, set(json.loads(modules))


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY)


def test_importing_the_package_loads_only_its_version():
    _, modules = run_fresh("import wsi_pipeline")
    assert heavy(modules) == []
    assert sorted(name for name in modules if name.startswith("wsi_pipeline")) == [
        "wsi_pipeline",
        "wsi_pipeline.core",
        "wsi_pipeline.core.version",
    ]


PROGS = {
    "score": "wsi-score",
    "evaluate": "wsi-eval",
    "train": "wsi-train",
    "synth": "wsi-synth",
    "models": "wsi-models",
}


@pytest.mark.parametrize("command", [*PROGS, "synth slides", "synth patches", "models pull"])
def test_help_loads_nothing_heavy(command):
    module, *argv = command.split()
    code = f"""
from wsi_pipeline.cli.{module} import main
try:
    main({[*argv, "--help"]!r})
except SystemExit as done:
    assert done.code == 0, done.code
"""
    output, modules = run_fresh(code)
    assert output.startswith(f"usage: {' '.join([PROGS[module], *argv])} ")
    assert heavy(modules) == []


@pytest.fixture(scope="module")
def heatmap(tmp_path_factory, probe_model, client):
    folder = tmp_path_factory.mktemp("startup")
    make_slide(folder / "s.svs", 1600, 1200, 0.5, [(500, 400, 900, 700)])
    result = score_slide(folder / "s.svs", probe_model, folder / "out", client=client, show_progress=False)
    return result.heatmap


def test_reading_a_heatmap_loads_nothing_heavy(heatmap):
    code = f"""
from wsi_pipeline import read_heatmap
heatmap = read_heatmap({str(heatmap)!r})
print(heatmap.complete, int(heatmap.tissue.sum()) > 0)
"""
    output, modules = run_fresh(code)
    assert output == "True True"
    assert heavy(modules) == []


def test_scoring_with_a_checked_onnx_export_never_loads_torch(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # no export yet
    slide = tmp_path / "s.svs"
    make_slide(slide, 1600, 1200, 0.5, [(500, 400, 900, 700)])
    code = """
from wsi_pipeline.cli.score import main
print(main([{slide!r}, "-o", {out!r}, "--engine", "onnxruntime", "--scheduler", "threads", "-q"]))
"""
    first_output, first_modules = run_fresh(code.format(slide=str(slide), out=str(tmp_path / "first")))
    assert "torch" in first_modules  # the export is made and checked against torch once
    output, modules = run_fresh(code.format(slide=str(slide), out=str(tmp_path / "again")))
    assert output.splitlines()[-1] == first_output.splitlines()[-1] == "0"
    assert sorted(name for name in modules if name.split(".")[0] == "torch") == []
    assert {"onnxruntime", "dask", "matplotlib"} <= modules  # it did score and draw its reports
    first, again = (read_heatmap(tmp_path / name / "s.zarr") for name in ("first", "again"))
    np.testing.assert_array_equal(again.probabilities, first.probabilities)
    assert again.metadata.engines == first.metadata.engines == ("onnxruntime",)
    assert again.metadata.devices == ("cpu",)


def test_a_library_architecture_found_once_is_checked_later_without_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # nothing recorded yet
    code = """
from wsi_pipeline.model.architectures import check_architecture
check_architecture("resnet18")
try:
    check_architecture("no_such_net")
except ValueError as error:
    print(error)
"""
    output, first = run_fresh(code)
    assert "timm" in first and output.startswith("unknown architecture 'no_such_net'")
    output, again = run_fresh(code.replace('"no_such_net"', '"timm:no_such_net"'))
    assert output.startswith("unknown architecture 'timm:no_such_net'") and "timm" in again  # asked again
    output, known = run_fresh(
        'from wsi_pipeline.model.architectures import check_architecture\ncheck_architecture("resnet18")'
    )
    assert heavy(known) == [] and "timm" not in known
