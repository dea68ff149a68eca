"""wsi-score on the command line: outputs, and one-line errors naming the file, losing no results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from ome_zarr_models.v05 import image as ome_image
from ome_zarr_models.v05 import image_label as ome_label

from wsi_pipeline.cli.score import main, parser
from wsi_pipeline.model.card import write_card
from wsi_pipeline.model.folder import read_card
from wsi_pipeline.slide import reader
from wsi_pipeline.store.heatmap import is_heatmap, read_heatmap

from .conftest import CMU_SLIDE, make_slide
from .test_model_formats import SideEffect

DARK_LEVEL0 = [(900.0, 900.0, 1500.0, 1400.0)]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*map(str, args), "--scheduler", "threads", "--workers", "2", "-q"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def good_slide(tmp_path) -> Path:
    make_slide(tmp_path / "good.svs", 2400, 2000, 0.5, DARK_LEVEL0)
    return tmp_path / "good.svs"


def test_scores_a_slide_into_an_ngff_heatmap(tmp_path, capsys, probe_model, good_slide):
    code, out, err = run_cli(capsys, good_slide, "-o", tmp_path / "out", "--model", probe_model)
    assert code == 0, err
    store = tmp_path / "out" / "good.zarr"
    assert f"-> {store}" in out
    root = zarr.open_group(store, mode="r")
    assert root.metadata.zarr_format == 3
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    assert [axis["name"] for axis in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert len(ome["multiscales"][0]["datasets"]) >= 2
    meta = root.attrs["wsi_pipeline"]
    for key in (
        "slide",
        "models",
        "grid",
        "tissue",
        "package_version",
        "devices",
        "started",
        "finished",
    ):
        assert key in meta
    assert (meta["schema"], meta["version"]) == ("wsi_pipeline.heatmap", 6)
    assert meta["complete"] is True and meta["devices"] == ["cpu"] and meta["slide"]["synthetic"] is True
    assert len(meta["slide"]["sha256"]) == 64 and len(meta["models"][0]["weights_sha256"]) == 64
    # An independent validator of the OME-Zarr 0.5 specification accepts the image and its label image.
    image = ome_image.Image.from_zarr(root)
    assert image.ome_attributes.multiscales[0].datasets[0].path == "0"
    ome_label.ImageLabel.from_zarr(root["labels/tissue"])


def test_complete_heatmap_is_kept_unless_overwrite(tmp_path, capsys, probe_model, good_slide):
    args = (good_slide, "-o", tmp_path / "out", "--model", probe_model)
    assert run_cli(capsys, *args)[0] == 0
    started = read_heatmap(tmp_path / "out" / "good.zarr").metadata.started
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "skipped" in out
    assert read_heatmap(tmp_path / "out" / "good.zarr").metadata.started == started
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert read_heatmap(tmp_path / "out" / "good.zarr").metadata.started != started


def test_never_deletes_a_folder_that_is_not_a_heatmap(tmp_path, capsys, probe_model, good_slide):
    foreign = tmp_path / "out" / "good.zarr"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, good_slide, "-o", tmp_path / "out", "--model", probe_model, "--overwrite")
    assert code == 1 and "not a wsi_pipeline heatmap" in err
    assert (foreign / "precious.txt").read_text() == "keep me"


def _not_a_slide(tmp_path: Path) -> Path:
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    make_slide(tmp_path / "cut.svs", 2400, 2000, 0.5, DARK_LEVEL0)
    data = (tmp_path / "cut.svs").read_bytes()
    (tmp_path / "cut.svs").write_bytes(data[: len(data) // 3])
    return tmp_path / "cut.svs"


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty.svs").touch()
    return tmp_path / "empty.svs"


def _no_mpp(tmp_path: Path) -> Path:
    make_slide(tmp_path / "nompp.svs", 2400, 2000, None, DARK_LEVEL0)
    return tmp_path / "nompp.svs"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: tmp / "missing.svs", "no such file"),
        (_not_a_slide, "not a readable slide"),
        (_truncated, "truncated or corrupt"),
        (_no_mpp, "no µm/px (mpp) in the file; give it with --mpp"),
        (_empty, "empty file (0 bytes), not a slide"),
    ],
    ids=["missing", "not-a-slide", "truncated", "no-mpp", "zero-size"],
)
def test_bad_slide_fails_alone_and_batch_goes_on(tmp_path, capsys, probe_model, good_slide, make, problem):
    bad = make(tmp_path)
    code, out, err = run_cli(capsys, bad, good_slide, "-o", tmp_path / "out", "--model", probe_model)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wsi-score: error: {bad}: ") and problem in lines[0]
    bad_store = tmp_path / "out" / f"{bad.stem}.zarr"
    assert not bad_store.exists() or not read_heatmap(bad_store).complete
    assert read_heatmap(tmp_path / "out" / "good.zarr").complete
    assert "ok" in out


def test_mpp_option_scores_a_slide_without_mpp(tmp_path, capsys, probe_model):
    slide = _no_mpp(tmp_path)
    code, _, err = run_cli(capsys, slide, "-o", tmp_path / "out", "--model", probe_model, "--mpp", "0.5")
    assert code == 0, err
    meta = read_heatmap(tmp_path / "out" / "nompp.zarr").metadata
    assert meta.slide.mpp == 0.5 and meta.slide.mpp_source == "--mpp"


@pytest.mark.parametrize("broken", ["missing", "no-card", "bad-json", "no-weights", "unsafe"])
def test_unreadable_model_folder(tmp_path, capsys, good_slide, probe_model, broken):
    folder = tmp_path / "model"
    if broken != "missing":
        folder.mkdir()
    if broken == "bad-json":
        (folder / "model.json").write_text("{not json")
    if broken == "no-weights":
        (folder / "model.json").write_text((probe_model / "model.json").read_text())
    if broken == "unsafe":  # a pickle that runs code when loaded, not weights only
        write_card(folder, replace(read_card(probe_model), weights="model.pt"))
        torch.save({"state_dict": SideEffect(tmp_path / "ran")}, folder / "model.pt")
    code, _, err = run_cli(capsys, good_slide, "-o", tmp_path / "out", "--model", folder)
    assert code == 2
    assert err.startswith("wsi-score: error: ") and str(folder) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "ran").exists()
    if broken == "unsafe":
        assert "refused: a weights-only load failed" in err


@pytest.mark.slow
def test_local_process_cluster_matches_in_process_run(tmp_path, capsys, probe_model):
    """The local cluster (worker processes, which load the model as they start) gives the same heatmap as the
    in-process one."""
    args = [
        str(CMU_SLIDE),
        "-o",
        str(tmp_path / "procs"),
        "--model",
        str(probe_model),
        "--scheduler",
        "local",
    ]
    assert main([*args, "-q"]) == 0
    code, _, err = run_cli(capsys, CMU_SLIDE, "-o", tmp_path / "threads", "--model", probe_model)
    assert code == 0, err
    by_processes = read_heatmap(tmp_path / "procs" / "CMU-1-Small-Region.zarr")
    by_threads = read_heatmap(tmp_path / "threads" / "CMU-1-Small-Region.zarr")
    np.testing.assert_array_equal(by_processes.probabilities, by_threads.probabilities)
    assert by_processes.tissue.sum() > 40 and is_heatmap(tmp_path / "procs" / "CMU-1-Small-Region.zarr")


def test_tissue_area_options_are_applied_and_recorded(tmp_path, capsys, probe_model, good_slide):
    """The tissue rectangle is about 0.64 mm²: a 1 mm² minimum object area removes it; nothing is scored."""
    args = (good_slide, "-o", tmp_path / "out", "--model", probe_model, "--tissue-min-um2", "1e6")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    heatmap = read_heatmap(tmp_path / "out" / "good.zarr")
    assert heatmap.complete and not heatmap.tissue.any() and "(0 patches" in out
    assert heatmap.metadata.tissue.min_um2 == 1e6 and heatmap.metadata.tissue.max_hole_um2 == 10_000


def test_jpeg_scaling_goes_from_the_flag_to_the_workers_and_the_heatmap(
    tmp_path, capsys, probe_model, good_slide, monkeypatch
):
    """0.5 µm/px read at the probe's 0.972: level 0 decoded at 1/2 unless ``--jpeg-scaling off``; a re-run
    without the flag keeps the heatmap as it was read, with the other mode it is refused."""
    assert parser().parse_args(["s.svs"]).jpeg_scaling is None  # the heatmap's mode, else auto
    with pytest.raises(SystemExit):
        parser().parse_args(["s.svs", "--jpeg-scaling", "on"])
    reduced_reads = []
    read_scaled = reader.read_scaled
    monkeypatch.setattr(
        reader, "read_scaled", lambda *args: reduced_reads.append(args[2]) or read_scaled(*args)
    )
    for mode, out in (("off", tmp_path / "off"), (None, tmp_path / "auto")):
        flag = () if mode is None else ("--jpeg-scaling", mode)  # no reports: the overlay's picture reads too
        code, _, err = run_cli(capsys, good_slide, "-o", out, "--model", probe_model, "--no-reports", *flag)
        assert code == 0, err
        assert read_heatmap(out / "good.zarr").metadata.slide.jpeg_scaling == (mode or "auto")
        assert (len(reduced_reads) > 0) == (mode is None) and set(reduced_reads) <= {2, 8}
    code, out, _ = run_cli(capsys, good_slide, "-o", tmp_path / "off", "--model", probe_model)
    assert code == 0 and "skipped" in out
    code, out, err = run_cli(
        capsys, good_slide, "-o", tmp_path / "off", "--model", probe_model, "--jpeg-scaling", "auto"
    )
    assert code != 0 and "JPEG scaling 'off' in the heatmap, 'auto' now" in out + err
