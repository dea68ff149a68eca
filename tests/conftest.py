"""Shared fixtures: a deterministic probe model, synthetic slides with known regions, a cluster."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from wsi_pipeline import (
    ModelCard,
    PatchGrid,
    ScoreOptions,
    __version__,
    build_module,
    dask_client,
    read_heatmap,
    save_model,
    score_slides,
)
from wsi_pipeline.model.onnx import CACHE_ENV
from wsi_pipeline.model.predict import Model
from wsi_pipeline.scoring import worker as scoring
from wsi_pipeline.store.metadata import HeatmapRecord, ModelRecord, SlideRecord, TissueParameters
from wsi_pipeline.synthetic.svs import Rect, RectScene, write_slide

REPO = Path(__file__).resolve().parent.parent
CMU_SLIDE = REPO / "sample_slides" / "CMU-1-Small-Region.svs"
PINK = (200, 60, 160)  # saturated: tissue; the probe scores it about 0.2
DARK = (40, 20, 60)  # the probe scores it about 0.98


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports and engine choices of the tests' models go to a temporary folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def probe_model(tmp_path_factory) -> Path:
    """A model whose 'dark' probability is a fixed function of the mean colour of the patch's centre 32×32."""
    card = ModelCard(name="test-probe", architecture="centre_colour", class_names=["light", "dark"])
    module = build_module(card)
    with torch.no_grad():
        module.linear.weight.fill_(-1.0)
        module.linear.bias.zero_()
    return save_model(tmp_path_factory.mktemp("models") / "probe", module, card)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine, tiny parallel ops wait for a second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def client():
    with dask_client(scheduler="threads", n_workers=2) as running:
        yield running


CLUSTER_BLOCK_CELLS = 2  # many small blocks: a run lasts long enough to lose a worker or stop in the middle


@pytest.fixture(scope="module")
def cluster_slides(tmp_path_factory) -> list[Path]:
    """Two small slides for runs on clusters of worker processes."""
    folder = tmp_path_factory.mktemp("slides")
    make_slide(folder / "a.svs", 2400, 2000, 0.5, [(900.0, 900.0, 1500.0, 1400.0)])
    make_slide(folder / "b.svs", 3000, 2400, 0.5, [(1200.0, 800.0, 1900.0, 1300.0)])
    return [folder / "a.svs", folder / "b.svs"]


@pytest.fixture(scope="module")
def cluster_references(
    tmp_path_factory, cluster_slides, probe_model, one_torch_thread
) -> dict[str, np.ndarray]:
    """Each of ``cluster_slides``' probabilities (``CLUSTER_BLOCK_CELLS``) from an in-process (threads)
    cluster whose threads, like the workers, run torch on one thread, its model loaded afresh (the thread
    count changes the order of float sums, and the engine a model picks; a thread keeps the count it started
    with)."""
    out = tmp_path_factory.mktemp("threads")
    options = ScoreOptions(block_cells=CLUSTER_BLOCK_CELLS)
    with pytest.MonkeyPatch.context() as patch, dask_client(scheduler="threads", n_workers=2) as client:
        patch.setattr(scoring, "_models", {})
        results = score_slides(
            cluster_slides, probe_model, out, options=options, client=client, show_progress=False
        )
    assert [r.status for r in results] == ["ok", "ok"]
    return {r.slide.stem: read_heatmap(r.heatmap).probabilities for r in results}


def marker_scene(width0: int, height0: int, dark_rects: list[tuple[float, float, float, float]]) -> RectScene:
    """A pink tissue rectangle (inset from the slide's edges) with dark rectangles on it."""
    margin_x, margin_y = width0 * 0.12, height0 * 0.15
    tissue = Rect(margin_x, margin_y, width0 - margin_x, height0 - margin_y, PINK)
    return RectScene([tissue, *(Rect(*box, DARK) for box in dark_rects)])


def make_slide(path: Path, width0: int, height0: int, mpp: float | None, dark_rects, downsamples=(1, 4, 16)):
    scene = marker_scene(width0, height0, dark_rects)
    write_slide(path, scene, width0, height0, mpp, downsamples=downsamples)
    return scene


def corrupt_tiles(path: Path, level: int, tiles: Iterable[tuple[int, int]]) -> None:
    """Overwrite the JPEG data of tiles (row, col) of a level of a ``write_slide`` slide with zeros, so that
    no decoder reads them (page 1 is the Aperio thumbnail, so level L > 0 is page L + 1)."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0 if level == 0 else level + 1]
        per_row = -(-page.imagewidth // page.tilewidth)
        spans = [(page.dataoffsets[r * per_row + c], page.databytecounts[r * per_row + c]) for r, c in tiles]
    with path.open("r+b") as file:
        for offset, count in spans:
            file.seek(offset)
            file.write(bytes(count))


def count_patches(monkeypatch) -> list[int]:
    """Patches given to the model (the in-process workers share this module)."""
    scored, original = [], Model.predict

    def counting_predict(self, patches, *args, **kwargs):
        scored.append(len(patches))
        return original(self, patches, *args, **kwargs)

    monkeypatch.setattr(Model, "predict", counting_predict)
    return scored


def heatmap_record(grid: PatchGrid, slide_path: str | Path = "slide.svs") -> HeatmapRecord:
    """The metadata of a heatmap written by hand (no slide or model scored it: made-up hashes)."""
    return HeatmapRecord(
        slide=SlideRecord(
            str(slide_path), "0" * 64, "tiffslide", "auto", 1, grid.mpp0, "file", grid.width0, grid.height0
        ),
        models=(ModelRecord("hand-made", "hand-made", "0" * 64, "none", "torch"),),
        grid=grid,
        class_names=("normal", "tumour"),
        tissue=TissueParameters(threshold=0.5, mpp=8.0),
        block_cells=16,
        tta=False,
        package_version=__version__,
        started=datetime.now(timezone.utc).isoformat(),
    )
