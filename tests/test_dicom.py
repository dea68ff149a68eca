"""DICOM WSI input: a series converted from an SVS (wsidicomizer) scores to the same heatmap as the SVS,
named by its slide id, with its UIDs and series sha256 recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from wsi_pipeline.cli.score import main
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import file_sha256
from wsi_pipeline.findings.regions import find_regions, tumour_scores
from wsi_pipeline.slide.dicom import find_series, safe_name, series_of
from wsi_pipeline.slide.find import find_slides
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import read_heatmap

from .conftest import make_slide

TURBOJPEG = "/usr/lib/x86_64-linux-gnu/libturbojpeg.so.0"
DARK_LEVEL0 = [(900.0, 900.0, 1500.0, 1400.0)]


def convert(svs: Path, out: Path, identifier: str | None) -> Path:
    """``svs`` as a DICOM WSI series folder (wsidicomizer), or the test skipped saying why it cannot run."""
    os.environ.setdefault("TURBOJPEG", TURBOJPEG)
    if not Path(os.environ["TURBOJPEG"]).exists():
        pytest.skip(f"wsidicomizer needs {os.environ['TURBOJPEG']} (apt-get install libturbojpeg0)")
    try:
        from wsidicomizer import WsiDicomizer
    except ImportError as error:  # the dev extra not installed
        pytest.skip(f"wsidicomizer cannot be imported ({error})")

    def name(dataset: pydicom.Dataset, _metadata: object) -> pydicom.Dataset:
        if identifier:
            dataset.ContainerIdentifier = identifier
        return dataset

    WsiDicomizer.convert(svs, out, metadata_post_processor=name, workers=1)
    return out


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("svs") / "node.svs"
    make_slide(path, 2400, 2000, 0.5, DARK_LEVEL0)
    return path


@pytest.fixture(scope="module")
def series_folder(svs, tmp_path_factory) -> Path:
    return convert(svs, tmp_path_factory.mktemp("dicom") / "case 7", identifier="S-7/A 1")


def test_series_is_one_slide_named_by_its_identifier(series_folder):
    files = sorted(series_folder.glob("*.dcm"))
    assert len(files) > 1
    series = series_of(files[-1])
    assert series == series_of(series_folder) == find_series(series_folder)[0]
    assert series.files == tuple(files) and series.slide_id == "S-7_A_1"
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}
    assert uids == {series.series_uid}
    assert find_slides([str(files[-1])]) == find_slides([str(series_folder)]) == [series.path]
    digests = sorted(file_sha256(f) for f in files)
    assert series.sha256() == hashlib.sha256("".join(digests).encode()).hexdigest()
    with Slide(series_folder) as slide:
        assert (slide.backend, slide.width0, slide.height0, slide.mpp) == ("openslide", 2400, 2000, 0.5)


def test_folder_of_several_series_is_a_batch(series_folder, svs, tmp_path):
    batch = tmp_path / "batch"
    convert(svs, batch, identifier=None)
    for file in series_folder.glob("*.dcm"):
        (batch / file.name).write_bytes(file.read_bytes())
    other = pydicom.Dataset()  # not a whole-slide image (an annotation, say): left out
    other.SOPClassUID, other.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.91.1", pydicom.uid.generate_uid()
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.file_meta = pydicom.dataset.FileMetaDataset()
    other.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    other.save_as(batch / "annotations.dcm", enforce_file_format=True)
    slides = find_slides([str(batch)])
    names = sorted(series_of(path).slide_id for path in slides)
    assert len(slides) == 2 and names[0] == "S-7_A_1" and names[1].startswith("batch-")
    with pytest.raises(InputError, match="not a DICOM whole-slide image file"):
        series_of(batch / "annotations.dcm")


def test_dicom_scores_as_its_svs(series_folder, svs, tmp_path, capsys, probe_model):
    any_file = sorted(series_folder.glob("*.dcm"))[1]
    common = ["--model", probe_model, "--scheduler", "threads", "--workers", "2", "-q", "--no-reports"]
    assert main([str(any_file), "-o", str(tmp_path / "dcm"), *map(str, common)]) == 0, capsys.readouterr().err
    args = [str(svs), "-o", str(tmp_path / "svs"), "--backend", "openslide", *map(str, common)]
    assert main(args) == 0, capsys.readouterr().err
    from_dicom = read_heatmap(tmp_path / "dcm" / "S-7_A_1.zarr")
    from_svs = read_heatmap(tmp_path / "svs" / "node.zarr")
    np.testing.assert_array_equal(from_dicom.probabilities, from_svs.probabilities)
    recorded, series = from_dicom.metadata.slide, series_of(series_folder)
    assert (recorded.study_uid, recorded.series_uid) == (series.study_uid, series.series_uid)
    assert recorded.sha256 == series.sha256() and recorded.size == sum(f.stat().st_size for f in series.files)
    assert from_svs.metadata.slide.series_uid is None
    # a re-run through the folder (another file of the series) keeps the complete heatmap
    before = (tmp_path / "dcm" / "S-7_A_1.zarr" / "zarr.json").stat().st_mtime_ns
    assert main([str(series_folder), "-o", str(tmp_path / "dcm"), *map(str, common)]) == 0
    assert (tmp_path / "dcm" / "S-7_A_1.zarr" / "zarr.json").stat().st_mtime_ns == before
    assert [p.name for p in (tmp_path / "dcm").glob("*.zarr")] == ["S-7_A_1.zarr"]


def test_safe_name():
    assert safe_name("../a b/c") == "_a_b_c" and safe_name("...") == "slide"


def test_dicom_output_reads_back_in_place(series_folder, svs, tmp_path, capsys, probe_model):
    hd = pytest.importorskip("highdicom", reason="--dicom-out writes through highdicom (the dicom extra)")
    common = ["--model", probe_model, "--scheduler", "threads", "--workers", "2", "-q", "--review-tiles", "0"]
    assert main([str(series_folder), "-o", str(tmp_path), "--dicom-out", *map(str, common)]) == 0
    heatmap = read_heatmap(tmp_path / "S-7_A_1.zarr")
    regions = find_regions(heatmap, 0.5)
    assert regions
    source = pydicom.dcmread(max(series_of(series_folder).files, key=lambda f: f.stat().st_size))
    probability_map = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(tmp_path / "S-7_A_1.pm.dcm"))
    np.testing.assert_array_equal(probability_map.get_total_pixel_matrix(), tumour_scores(heatmap))
    # geometry: cell (row, col) lies on the slide where the grid puts its centre (README: translation
    # patch/2 · target µm/px, scale stride · target µm/px), through the slide's own frame of reference
    to_slide = hd.spatial.PixelToReferenceTransformer.for_image(probability_map, for_total_pixel_matrix=True)
    from_source = hd.spatial.PixelToReferenceTransformer.for_image(source, for_total_pixel_matrix=True)
    grid, (row, col) = heatmap.grid, (5, 7)
    centre_level0 = [(grid.patch_size / 2 + i * grid.stride) * grid.ds - 0.5 for i in (col, row)]
    expected = (from_source.affine @ [*centre_level0, 0.0, 1.0])[:3]
    np.testing.assert_allclose(to_slide(np.array([[col, row]]))[0], expected, atol=1e-6)
    annotations = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(
        pydicom.dcmread(tmp_path / "S-7_A_1.ann.dcm")
    )
    polygons = annotations.get_annotation_groups()[0].get_graphic_data(coordinate_type="2D")
    assert len(polygons) == len(regions)
    for polygon, region in zip(polygons, regions, strict=True):
        x0, y0, x1, y1 = region.bbox_level0
        xs, ys = np.asarray(polygon).T
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == pytest.approx((x0, y0, x1, y1))
    # a slide not read from DICOM is refused before anything runs
    assert main([str(svs), "-o", str(tmp_path / "svs"), "--dicom-out", *map(str, common)]) == 2
    assert "--dicom-out needs DICOM slides" in capsys.readouterr().err
