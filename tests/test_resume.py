"""Long runs: an interrupted heatmap is resumed block by block, parameters never mix, outputs are locked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_pipeline import ScoreOptions, read_heatmap, score_slides
from wsi_pipeline.cli.score import main
from wsi_pipeline.core.locks import FileLock, LockedError, lock_path
from wsi_pipeline.store.heatmap import DONE_ARRAY, HeatmapWriter

from .conftest import count_patches, make_slide

OPTIONS = ScoreOptions(block_cells=2)
INTERRUPT_AFTER = 5  # blocks


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "s.svs"
    make_slide(path, 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slide, probe_model, client):
    """The heatmap of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    (result,) = score_slides([slide], probe_model, out, options=OPTIONS, client=client, show_progress=False)
    assert result.status == "ok"
    return read_heatmap(result.heatmap)


def interrupt(monkeypatch, after: int) -> list:
    """Make the run stop with a KeyboardInterrupt once ``after`` blocks are written; the blocks written."""
    original, written = HeatmapWriter.write_block, []

    def write_then_interrupt(self, block, probabilities):
        original(self, block, probabilities)
        written.append(block)
        if len(written) == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(HeatmapWriter, "write_block", write_then_interrupt)
    return written


def blocks_done(store: Path) -> int:
    """Blocks recorded as written in a heatmap store (0 while it is being created)."""
    try:
        return int(zarr.open_group(store, mode="r")[DONE_ARRAY][...].sum())
    except (FileNotFoundError, KeyError):
        return 0


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def partial(tmp_path, slide, probe_model, client, monkeypatch) -> tuple[Path, list]:
    """A heatmap interrupted (KeyboardInterrupt) after a few blocks, and the blocks it holds."""
    out = tmp_path / "out"
    written = interrupt(monkeypatch, INTERRUPT_AFTER)
    with pytest.raises(KeyboardInterrupt):
        score_slides([slide], probe_model, out, options=OPTIONS, client=client, show_progress=False)
    monkeypatch.undo()
    return out / "s.zarr", written


def test_interrupted_run_leaves_a_resumable_heatmap_and_resumes_only_missing_blocks(
    partial, slide, probe_model, client, reference, monkeypatch
):
    store, written = partial
    heatmap = read_heatmap(store)
    assert not heatmap.complete and not lock_path(store).exists()
    assert blocks_done(store) == INTERRUPT_AFTER
    kept = sum(int(heatmap.tissue[block.cells].sum()) for block in written)
    assert 0 < kept < heatmap.tissue.sum()
    scored = count_patches(monkeypatch)
    (result,) = score_slides(
        [slide], probe_model, store.parent, options=OPTIONS, client=client, show_progress=False
    )
    assert result.status == "ok" and f"resumed: {INTERRUPT_AFTER} of " in result.message
    assert sum(scored) == result.patches == reference.tissue.sum() - kept  # only the missing blocks
    resumed = read_heatmap(store)
    assert resumed.complete and len(resumed.metadata.resumed) == 1
    assert resumed.metadata.patches_scored == reference.tissue.sum()
    np.testing.assert_array_equal(resumed.probabilities, reference.probabilities)
    np.testing.assert_array_equal(resumed.tissue, reference.tissue)
    # complete, same slide, model and parameters: skipped, nothing scored
    scored.clear()
    (again,) = score_slides(
        [slide], probe_model, store.parent, options=OPTIONS, client=client, show_progress=False
    )
    assert again.status == "skipped" and "complete heatmap exists" in again.message and scored == []


def test_changed_parameters_are_refused_unless_overwrite(partial, slide, probe_model, capsys):
    store, _ = partial
    before = snapshot(store)
    args = [str(slide), "-o", str(store.parent), "--model", str(probe_model), "--scheduler", "threads", "-q"]
    code = main([*args, "--block-cells", "4", "--tissue-threshold", "0.6"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(
        f"wsi-score: error: {store}: holds a heatmap made with other parameters"
    )
    assert "tissue threshold 0.25 in the heatmap, 0.6 now" in err
    assert "block cells 2 in the heatmap, 4 now" in err
    assert snapshot(store) == before and not lock_path(store).exists()
    assert main([*args, "--block-cells", "4", "--overwrite"]) == 0
    redone = read_heatmap(store)
    assert redone.complete and redone.metadata.block_cells == 4 and redone.metadata.resumed == ()
    # a complete heatmap made with other parameters is refused too, not silently kept
    assert main([*args, "--block-cells", "2"]) == 1
    assert "block cells 4 in the heatmap, 2 now" in capsys.readouterr().err


def test_interrupted_cli_says_how_to_resume(tmp_path, slide, probe_model, capsys, monkeypatch):
    interrupt(monkeypatch, 2)
    args = [
        slide,
        "-o",
        tmp_path / "out",
        "--model",
        probe_model,
        "--scheduler",
        "threads",
        "--block-cells",
        "2",
    ]
    assert main([*map(str, args), "-q"]) == 130
    assert "interrupted; the blocks written are kept: run again to resume" in capsys.readouterr().err
    assert not read_heatmap(tmp_path / "out" / "s.zarr").complete


def test_a_live_lock_refuses_the_slide_and_a_dead_holders_lock_is_taken_over(
    partial, slide, probe_model, client, reference
):
    store, _ = partial
    lock = lock_path(store)
    code = f"""if True:
        import time
        from wsi_pipeline.core.locks import FileLock
        FileLock({str(lock)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)"""
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(store)
        (result,) = score_slides(
            [slide], probe_model, store.parent, options=OPTIONS, client=client, show_progress=False
        )
        assert result.status == "failed" and result.message.startswith(
            f"{store}: locked by pid {holder.pid} on "
        )
        assert snapshot(store) == before and json.loads(lock.read_text())["pid"] == holder.pid
        assert not (store.parent / "slides.csv").exists()  # the row belongs to the run holding the lock
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # its holder has died without releasing it: the lock is stale, taken over, and released at the end
    (result,) = score_slides(
        [slide], probe_model, store.parent, options=OPTIONS, client=client, show_progress=False
    )
    assert result.status == "ok" and f"took over the stale lock of pid {holder.pid} on " in result.message
    assert not lock.exists()
    np.testing.assert_array_equal(read_heatmap(store).probabilities, reference.probabilities)


def test_file_lock_waits_then_refuses_naming_the_holder(tmp_path):
    first = FileLock(tmp_path / "t.csv.lock").acquire()
    with pytest.raises(LockedError, match=rf"t\.csv: locked by pid {os.getpid()} on .* since "):
        FileLock(tmp_path / "t.csv.lock").acquire(wait_s=0.2)
    first.release()
    FileLock(tmp_path / "t.csv.lock").acquire().release()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_wsi_score_resumably(tmp_path, probe_model):
    """A batch system ends a job with SIGTERM: wsi-score (a process of its own) stops as on Ctrl-C."""
    make_slide(tmp_path / "big.svs", 4800, 4000, 0.5, [])
    store = tmp_path / "out" / "big.zarr"
    args = [tmp_path / "big.svs", "-o", tmp_path / "out", "--model", probe_model, "--block-cells", "1"]
    command = [
        sys.executable,
        "-m",
        "wsi_pipeline.cli.score",
        *map(str, args),
        "--scheduler",
        "threads",
        "-q",
    ]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while blocks_done(store) == 0:
            assert run.poll() is None and time.monotonic() < deadline, "no block was written"
            time.sleep(0.02)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 130
    finally:
        run.kill()
    assert "interrupted; the blocks written are kept" in run.stderr.read()
    assert blocks_done(store) > 0 and not read_heatmap(store).complete and not lock_path(store).exists()


def test_a_complete_heatmap_is_kept_without_reading_the_unchanged_slide_again(
    tmp_path, slide, probe_model, client, monkeypatch
):
    from wsi_pipeline.slide import find

    out = tmp_path / "out"
    (first,) = score_slides([slide], probe_model, out, options=OPTIONS, client=client, show_progress=False)
    assert first.status == "ok"
    hashed, file_sha256 = [], find.file_sha256  # slides are hashed through slide_identity

    def recording_sha256(path):
        hashed.append(Path(path))
        return file_sha256(path)

    monkeypatch.setattr(find, "file_sha256", recording_sha256)
    (again,) = score_slides([slide], probe_model, out, options=OPTIONS, client=client, show_progress=False)
    assert again.status == "skipped" and slide not in hashed  # same path, size and mtime: the recorded sha256
    stamp = os.stat(slide)
    try:
        os.utime(slide, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # touched: read and hashed again
        (touched,) = score_slides(
            [slide], probe_model, out, options=OPTIONS, client=client, show_progress=False
        )
        assert touched.status == "skipped" and hashed.count(slide) == 1  # same content: still kept
        (later,) = score_slides(
            [slide], probe_model, out, options=OPTIONS, client=client, show_progress=False
        )
        assert later.status == "skipped" and hashed.count(slide) == 1  # the new stamp was recorded
    finally:
        os.utime(slide, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
