"""Rows of README's fault matrix (*When things go wrong*) not tested elsewhere: the output folder missing,
unwritable or full; a slide that cannot be opened, without tissue, or changed while scored; two runs into one
folder at once; hostile heatmap metadata met by napari's reader, wsi-eval and a re-run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiffslide
import zarr
import zarr.storage._local as zarr_local

from wsi_pipeline import ScoreOptions, read_heatmap, score_slides
from wsi_pipeline.cli.evaluate import main as wsi_eval
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.locks import lock_path
from wsi_pipeline.findings.reports import report_paths
from wsi_pipeline.scoring.ledger import BATCH_TABLE, read_batch_table
from wsi_pipeline.store.heatmap import META_KEY, HeatmapWriter
from wsi_pipeline.synthetic.svs import RectScene, write_slide

from .conftest import make_slide
from .test_cli import run_cli
from .test_resume import blocks_done, snapshot

SIZE = (2400, 2000)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    make_slide(path, *SIZE, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return path


def copies(slide: Path, folder: Path, *names: str) -> list[Path]:
    return [Path(shutil.copy(slide, folder / f"{name}.svs")) for name in names]


def test_a_missing_slide_into_an_output_folder_not_yet_made_is_one_line(tmp_path, capsys, probe_model):
    """The issue's ``wsi-score /data/typo.svs -o results_new/``: the folder is made before anything is
    written to it, and the slide's failure is one line and one row."""
    out = tmp_path / "results_new" / "deeper"
    code, _, err = run_cli(capsys, tmp_path / "typo.svs", "-o", out, "--model", probe_model)
    assert code == 1 and err == f"wsi-score: error: {tmp_path / 'typo.svs'}: no such file\n"
    (row,) = read_batch_table(out / BATCH_TABLE).values()
    assert row["status"] == "failed" and row["reason"].endswith("no such file")


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("under-a-file", "cannot write there (Not a directory)"),
        ("a-file", "is a file, not a folder"),
        ("read-only", "cannot write there (Permission denied)"),
    ],
)
def test_an_unwritable_output_folder_is_one_line_before_anything_runs(
    tmp_path, capsys, probe_model, slide, monkeypatch, case, problem
):
    """Root writes anywhere, so a folder it may not write to is simulated: its write check refused."""
    (tmp_path / "file").write_text("not a folder")
    places = {"under-a-file": tmp_path / "file" / "out", "a-file": tmp_path / "file", "read-only": tmp_path}
    out = places[case]
    if case == "read-only":

        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

        monkeypatch.setattr(Path, "touch", refuse)
    code, _, err = run_cli(capsys, slide, "-o", out, "--model", probe_model)
    assert code == 2 and err == f"wsi-score: error: {out}: {problem}\n"
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "s.zarr").exists()


def test_a_full_output_folder_stops_the_batch_keeping_what_is_finished(tmp_path, capsys, probe_model, slide):
    """No space is left after two of b's blocks: one line naming the folder; a is complete with its reports
    and row; b is partial, unlocked, and the next run resumes it to a's heatmap (the same content)."""
    a, b = copies(slide, tmp_path, "a", "b")
    out = tmp_path / "out"
    put, chunks = zarr_local._put, []

    def filling_up(path: Path, value: object, exclusive: bool = False) -> int:
        if Path(path).is_relative_to(out / "b.zarr" / "0" / "c"):  # a chunk of b's probabilities
            chunks.append(path)
            if len(chunks) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return put(path, value, exclusive=exclusive)

    args = (a, b, "-o", out, "--model", probe_model, "--block-cells", "2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zarr_local, "_put", filling_up)
        code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1
    full = "cannot write there (No space left on device); "
    assert err.startswith(f"wsi-score: error: {out.resolve()}: {full}")
    assert read_heatmap(out / "a.zarr").complete and report_paths(out / "a.zarr")["summary"].is_file()
    assert [row["status"] for row in read_batch_table(out / BATCH_TABLE).values()] == ["ok"]
    assert not read_heatmap(out / "b.zarr").complete and blocks_done(out / "b.zarr") > 0
    assert not lock_path(out / "b.zarr").exists()
    code, printed, err = run_cli(capsys, *args)
    assert code == 0 and "resumed: " in printed, err
    np.testing.assert_array_equal(
        read_heatmap(out / "b.zarr").probabilities, read_heatmap(out / "a.zarr").probabilities
    )


def test_a_slide_that_cannot_be_opened_fails_alone(tmp_path, capsys, probe_model, slide, monkeypatch):
    """Root reads any file, so a slide it may not read is simulated: its opening refused."""
    locked, good = copies(slide, tmp_path, "locked", "good")
    open_slide = tiffslide.TiffSlide

    def refusing(path: str, *args: object, **kwargs: object) -> object:
        if Path(path).name == "locked.svs":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open_slide(path, *args, **kwargs)

    monkeypatch.setattr(tiffslide, "TiffSlide", refusing)
    code, printed, err = run_cli(capsys, locked, good, "-o", tmp_path / "out", "--model", probe_model)
    assert code == 1 and err == (
        f"wsi-score: error: {locked}: not a readable slide (PermissionError: [Errno 13] Permission denied: "
        f"'{locked}')\n"
    )
    assert f"ok {good} -> " in printed and read_heatmap(tmp_path / "out" / "good.zarr").complete


def test_a_slide_without_tissue_gives_a_complete_empty_heatmap(tmp_path, capsys, probe_model):
    write_slide(tmp_path / "blank.svs", RectScene([]), *SIZE, 0.5)
    args = (tmp_path / "blank.svs", "-o", tmp_path / "out", "--model", probe_model)
    code, printed, err = run_cli(capsys, *args)
    assert code == 0 and "(0 patches" in printed and "max tumour probability n/a" in printed, err
    heatmap = read_heatmap(tmp_path / "out" / "blank.zarr")
    assert heatmap.complete and not heatmap.tissue.any() and np.isnan(heatmap.probabilities).all()


def test_a_slide_changed_while_scored_is_reported_and_never_mixed(
    tmp_path, slide, probe_model, client, monkeypatch
):
    """The file is replaced by another slide after the first block: the slide fails at its end, its heatmap
    is never completed, a re-run refuses it (other content), and --overwrite scores the new content."""
    (scored,) = copies(slide, tmp_path, "s")
    other = tmp_path / "other.svs"
    make_slide(other, *SIZE, 0.5, [(300.0, 300.0, 1200.0, 900.0)])
    options, out = ScoreOptions(block_cells=2), tmp_path / "out"
    write_block, replaced = HeatmapWriter.write_block, []

    def write_then_replace(self: HeatmapWriter, *args: object) -> None:
        write_block(self, *args)
        if not replaced:
            replaced.append(shutil.copy(other, scored))

    score = [scored], probe_model, out
    with monkeypatch.context() as patch:
        patch.setattr(HeatmapWriter, "write_block", write_then_replace)
        (changed,) = score_slides(*score, options=options, client=client, show_progress=False)
    assert changed.status == "failed" and changed.message == (
        f"{scored}: changed while it was scored (size or modification time); its heatmap is left unfinished: "
        "a re-run resumes it if the content is the same, --overwrite scores new content afresh"
    )
    assert not read_heatmap(out / "s.zarr").complete
    (again,) = score_slides(*score, options=options, client=client, show_progress=False)
    assert again.status == "failed" and "other parameters (slide content (sha256)" in again.message
    overwrite = ScoreOptions(block_cells=2, overwrite=True)
    (fresh,) = score_slides(*score, options=overwrite, client=client, show_progress=False)
    (reference,) = score_slides([other], probe_model, tmp_path / "ref", options=options, client=client)
    assert fresh.status == "ok"
    np.testing.assert_array_equal(
        read_heatmap(fresh.heatmap).probabilities, read_heatmap(reference.heatmap).probabilities
    )


@pytest.mark.slow
def test_two_runs_over_overlapping_slides_into_one_folder_score_each_slide_once(tmp_path, slide, probe_model):
    a, b, c, d = copies(slide, tmp_path, "a", "b", "c", "d")
    out = tmp_path / "out"
    options = ["--model", str(probe_model), "--scheduler", "threads", "--block-cells", "2", "-q"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "wsi_pipeline.cli.score", *map(str, slides), "-o", str(out), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for slides in ([a, b, c], [b, c, d])
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    printed = "".join(stdout for stdout, _ in outputs)
    for path in (a, b, c, d):
        assert printed.count(f"ok {path} -> ") == 1, outputs  # scored by one run; the other kept it or was
        heatmap = read_heatmap(out / f"{path.stem}.zarr")  # refused by its lock
        assert heatmap.complete and heatmap.metadata.resumed == ()
    rows = read_batch_table(out / BATCH_TABLE)
    assert sorted(rows) == sorted(str(path.resolve()) for path in (a, b, c, d))
    assert {row["status"] for row in rows.values()} <= {"ok", "skipped"}
    errors = "".join(stderr for _, stderr in outputs).splitlines()
    assert all("locked by pid" in line for line in errors), errors


HUGE_SIDE = 8192  # cells: 2^26, the most a grid may have


def huge(store: Path, meta: dict) -> dict:
    """Arrays (and metadata) of 1000 classes over 2^26 cells: 250 GiB to read."""
    for array, shape in (("0", [1000, HUGE_SIDE, HUGE_SIDE]), ("labels/tissue/0", [HUGE_SIDE, HUGE_SIDE])):
        description = json.loads((store / array / "zarr.json").read_text())
        (store / array / "zarr.json").write_text(json.dumps({**description, "shape": shape}))
    side0 = HUGE_SIDE * meta["grid"]["patch_size"]
    grid = {**meta["grid"], "width0": side0, "height0": side0, "stride": meta["grid"]["patch_size"]}
    grid["mpp0"] = grid["target_mpp"]
    return {**meta, "grid": grid, "class_names": [f"class {i}" for i in range(1000)]}


HOSTILE = {  # how to make it; what readers say; what a re-run (which reads the metadata alone) says
    "malformed": (lambda store, meta: {**meta, "block_cells": -4}, "block_cells must be at least 1", None),
    "newer": (lambda store, meta: {**meta, "version": 99}, "written by a newer wsi_pipeline", None),
    "not-an-object": (lambda store, meta: ["rm -rf /"], "heatmap metadata must be an object", None),
    "huge": (huge, "heatmap arrays of 250 GiB, more than any slide gives; not read", "other parameters"),
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, slide, probe_model, client) -> Path:
    out = tmp_path_factory.mktemp("scored")
    (result,) = score_slides([slide], probe_model, out, client=client, show_progress=False)
    return result.heatmap


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_heatmap_metadata_is_a_clear_error_to_every_reader_and_overwrites_nothing(
    tmp_path, capsys, slide, scored, probe_model, kind
):
    store = Path(shutil.copytree(scored, tmp_path / "out" / "s.zarr"))
    root = zarr.open_group(store, mode="r+")
    make_hostile, problem, rerun_problem = HOSTILE[kind]
    root.attrs[META_KEY] = make_hostile(store, root.attrs[META_KEY])
    before = snapshot(store)
    with pytest.raises(InputError, match=problem) as error:
        read_heatmap(store)
    assert error.value.path == str(store) and len(str(error.value)) < 300
    pytest.importorskip("npe2")
    from wsi_pipeline.napari.reader import get_reader

    with pytest.raises(InputError, match=problem):
        get_reader(str(store))(str(store))
    (tmp_path / "s.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    code = wsi_eval(["--heatmaps", str(store), "--truth", str(tmp_path / "s.geojson")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"wsi-eval: error: {store}: ") and problem in err
    code, _, err = run_cli(capsys, slide, "-o", store.parent, "--model", probe_model)
    assert code == 1 and err.startswith(f"wsi-score: error: {store}: ") and (rerun_problem or problem) in err
    assert snapshot(store) == before and not lock_path(store).exists()
    assert json.loads((store / "zarr.json").read_text())["attributes"][META_KEY] == root.attrs[META_KEY]
