"""A quiet terminal: progress, results and our own errors on it; library warnings, library log records and
full tracebacks in ``OUT/wsi-score.log`` (each run appended under its command line, time and versions), live
on the terminal too with ``-v``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from wsi_pipeline.cli.score import LOG, main
from wsi_pipeline.core.logs import Route, current_route
from wsi_pipeline.scoring import settling
from wsi_pipeline.scoring.worker_plugins import RouteWorkerLogs

from .conftest import make_slide

# Every process of a run imports this first (PYTHONPATH): each block task then raises a library's
# FutureWarning and logs a distributed.worker WARNING, and the blocks of fail.svs fail (cancelling the rest).
NOISY_SITE = """
import logging
import warnings

from wsi_pipeline.scoring import worker

_score_block = worker.score_block


def noisy_score_block(slide, *args, **kwargs):
    warnings.warn("a library's FutureWarning", FutureWarning, stacklevel=1)
    logging.getLogger("distributed.worker").warning("a library's log record")
    if slide.path.endswith("fail.svs"):
        raise RuntimeError("a block failed")
    return _score_block(slide, *args, **kwargs)


worker.score_block = noisy_score_block
"""
NOISE = ("Warning", "Traceback", "distributed.", "warnings.warn")


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    for name in ("good", "fail"):
        make_slide(folder / f"{name}.svs", 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return [folder / "good.svs", folder / "fail.svs"]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["local", "threads"])
def test_library_noise_goes_to_the_log_and_the_terminal_stays_quiet(tmp_path, slides, probe_model, scheduler):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NOISY_SITE)
    out = tmp_path / "out"
    args = [*map(str, slides), "-o", str(out), "--model", str(probe_model), "--block-cells", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "wsi_pipeline.cli.score", *args, "--scheduler", scheduler],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert run.returncode == 1, run.stderr
    assert f"ok {slides[0]} -> " in run.stdout
    assert f"wsi-score: error: {slides[1]}: RuntimeError: a block failed\n" in run.stderr
    terminal = run.stdout + run.stderr
    assert not [noise for noise in NOISE if noise in terminal], terminal
    log = (out / LOG).read_text()
    assert log.startswith(f"=== wsi-score {' '.join(args)} --scheduler {scheduler} | 20")
    assert "torch " in log.splitlines()[0] and "distributed " in log.splitlines()[0]
    for logged in ("FutureWarning: a library's FutureWarning", "a library's log record", "Traceback"):
        assert logged in log
    assert "RuntimeError: a block failed" in log


def test_verbose_shows_the_log_live_and_each_run_is_appended(
    tmp_path, slides, probe_model, capsys, monkeypatch
):
    out = tmp_path / "out"
    args = [str(slides[0]), "-o", str(out), "--model", str(probe_model), "--scheduler", "threads", "-q"]
    assert main(args) == 0
    assert capsys.readouterr().err == ""
    failed_result = settling.failed_result

    def failing(plan, error):  # a library's warning as a slide fails
        warnings.warn("settling noise", UserWarning, stacklevel=1)
        return failed_result(plan, error)

    monkeypatch.setattr(settling, "failed_result", failing)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([str(tmp_path / "missing.svs"), *args, "-v"]) == 1
    err = capsys.readouterr().err
    assert "UserWarning: settling noise" in err and "missing.svs: no such file" in err
    log = (out / LOG).read_text()
    assert log.count("=== wsi-score ") == 2 and "UserWarning: settling noise" in log


def test_an_unexpected_error_is_one_line_and_its_traceback_is_in_the_log(
    tmp_path, slides, probe_model, capsys, monkeypatch
):
    from wsi_pipeline.scoring import api

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(api, "Scheduler", broken)
    out = tmp_path / "out"
    args = [str(slides[0]), "-o", str(out), "--model", str(probe_model), "--scheduler", "threads", "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"wsi-score: error: unexpected TypeError: a bug (its traceback is in {out / LOG})\n"
    log = (out / LOG).read_text()
    assert "Traceback (most recent call last)" in log and 'raise TypeError("a bug")' in log


def test_a_worker_that_cannot_see_the_log_keeps_its_records_in_its_own_output(tmp_path, caplog):
    unseen = tmp_path / "elsewhere" / LOG  # as on a node without the client's file system
    with caplog.at_level(logging.WARNING):
        RouteWorkerLogs(Route(unseen, verbose=False)).setup(worker=None)
    assert current_route() is None and not unseen.parent.exists()
    assert f"{unseen} is not visible here: this worker's log stays in its output" in caplog.text
