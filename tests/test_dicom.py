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
from wsi_pipeline.findings.regions import tumour_scores
from wsi_pipeline.slide.dicom import find_series, safe_name, series_of
from wsi_pipeline.slide.find import find_slides
from wsi_pipeline.slide.reader import Slide
from wsi_pipeline.store.heatmap import read_heatmap

from .conftest import make_slide

TURBOJPEG = "/usr/lib/x86_64-linux-gnu/libturbojpeg.so.0"
# 5 cells wide, 2 high (an axis swap shows); every edge is over 45 level-0 px from the nearest cell centre,
# more than half the probe's 32-target-px centre window (31 px): each cell is scored wholly dark or not
DARK_LEVEL0 = [(700.0, 950.0, 1700.0, 1300.0)]


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


def score_args(model: Path) -> list[str]:
    """``wsi-score`` options for a quick run of ``model`` on threads."""
    return ["--model", str(model), "--scheduler", "threads", "--workers", "2", "-q", "--review-tiles", "0"]


@pytest.fixture(scope="module")
def dicom_out(series_folder, probe_model, tmp_path_factory) -> Path:
    """The folder ``wsi-score --dicom-out`` wrote the series' heatmap and DICOM objects to."""
    pytest.importorskip("highdicom", reason="--dicom-out writes through highdicom (the dicom extra)")
    out = tmp_path_factory.mktemp("dicom-out")
    assert main([str(series_folder), "-o", str(out), "--dicom-out", *score_args(probe_model)]) == 0
    return out


def level0_header(series_folder: Path) -> pydicom.Dataset:
    """The header of the series' level-0 image (its largest VOLUME image)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_of(series_folder).files]
    return max((h for h in headers if "VOLUME" in h.ImageType), key=lambda h: int(h.TotalPixelMatrixColumns))


def slide_geometry(image: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin, column_step, row_step)``, (x, y) mm on the slide, of an image's Total Pixel Matrix: the
    centre of its pixel (column i, row j), 0-based, is ``origin + i·column_step + j·row_step`` (PS3.3
    C.7.6.2.1.1, Equation C.7.6.2.1-1; the Total Pixel Matrix Origin is "the location of pixel 1\\1",
    C.8.12.14; Pixel Spacing is row spacing \\ column spacing, between pixel centres)."""
    origin = image.TotalPixelMatrixOriginSequence[0]
    xy = np.array(
        [float(origin.XOffsetInSlideCoordinateSystem), float(origin.YOffsetInSlideCoordinateSystem)]
    )
    row_spacing, column_spacing = map(
        float, image.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    )
    cosines = np.array(image.ImageOrientationSlide, dtype=np.float64)
    return xy, cosines[:2] * column_spacing, cosines[3:5] * row_spacing


def pixel_to_slide(image: pydicom.Dataset, indices: np.ndarray) -> np.ndarray:
    """(column, row) indices of an image's Total Pixel Matrix (pixel i centred at i) as slide (x, y) mm."""
    origin, column_step, row_step = slide_geometry(image)
    return origin + indices[:, :1] * column_step + indices[:, 1:] * row_step


def slide_to_level0(source: pydicom.Dataset, points_mm: np.ndarray) -> np.ndarray:
    """Slide (x, y) mm as level-0 image coordinates (x, y): pixel i spans ``[i, i+1)``, as the grid's."""
    origin, column_step, row_step = slide_geometry(source)
    return np.linalg.solve(np.stack([column_step, row_step], axis=1), (points_mm - origin).T).T + 0.5


def test_dicom_map_pixels_lie_on_their_grid_cells(dicom_out, series_folder):
    hd = pytest.importorskip("highdicom")
    heatmap, source = read_heatmap(dicom_out / "S-7_A_1.zarr"), level0_header(series_folder)
    probability_map = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(dicom_out / "S-7_A_1.pm.dcm"))
    scores = probability_map.get_total_pixel_matrix()
    np.testing.assert_array_equal(scores, tumour_scores(heatmap))
    assert probability_map.FrameOfReferenceUID == source.FrameOfReferenceUID
    # every map pixel's centre, placed on the slide by the map's geometry and read back in the source's
    # level-0 pixels, is its grid cell's centre
    rows, cols = np.indices(scores.shape).reshape(2, -1)
    centres_level0 = slide_to_level0(source, pixel_to_slide(probability_map, np.stack([cols, rows], axis=1)))
    boxes = heatmap.grid.cell_boxes_level0(rows, cols)
    np.testing.assert_allclose(centres_level0, (boxes[:, :2] + boxes[:, 2:]) / 2, rtol=0, atol=0.01)
    # ground truth: the map pixels scored tumour are those whose centre is in the dark rectangle
    x0, y0, x1, y1 = DARK_LEVEL0[0]
    inside = (centres_level0 >= (x0, y0)).all(axis=1) & (centres_level0 < (x1, y1)).all(axis=1)
    np.testing.assert_array_equal(np.nan_to_num(scores).ravel() >= 0.5, inside)
    assert inside.sum() == 10


def test_dicom_annotation_outlines_the_dark_rectangle(dicom_out, series_folder):
    hd = pytest.importorskip("highdicom")
    from wsidicom.graphical_annotations import AnnotationInstance

    heatmap, source = read_heatmap(dicom_out / "S-7_A_1.zarr"), level0_header(series_folder)
    dataset = pydicom.dcmread(dicom_out / "S-7_A_1.ann.dcm")
    annotations = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(dataset)
    assert (dataset.AnnotationCoordinateType, dataset.PixelOriginInterpretation) == ("2D", "VOLUME")
    assert dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    (polygon,) = annotations.get_annotation_groups()[0].get_graphic_data(coordinate_type="2D")
    (group,) = AnnotationInstance.open_dataset(dataset).groups  # wsidicom decodes the same points
    np.testing.assert_array_equal(group.annotations[0].geometry.to_coords(), polygon)
    # (column, row) image coordinates of the level-0 Total Pixel Matrix, (0, 0) the top-left corner of its
    # top-left pixel (PS3.3 C.18.6 Graphic Data): the outline of the cells scored tumour, each cell the
    # stride-wide square centred on its patch ...
    grid, scores = heatmap.grid, tumour_scores(heatmap)
    rows, cols = np.nonzero(np.nan_to_num(scores) >= 0.5)
    boxes = grid.cell_boxes_level0(rows, cols)
    centres, half = (boxes[:, :2] + boxes[:, 2:]) / 2, grid.stride * grid.ds / 2
    cells_box = (*(centres.min(axis=0) - half), *(centres.max(axis=0) + half))
    bbox = (*polygon.min(axis=0), *polygon.max(axis=0))
    assert len(polygon) == 4 and bbox == pytest.approx(cells_box, abs=1e-6)
    # ... within half a cell of the dark rectangle it found ...
    np.testing.assert_allclose(bbox, DARK_LEVEL0[0], rtol=0, atol=half)
    # ... and, on the slide, exactly around the map pixels scored tumour (each pixel ±½ around its centre)
    outline_mm = pixel_to_slide(source, polygon - 0.5)
    corners = [
        (c + dc, r + dr) for c, r in zip(cols, rows, strict=True) for dc in (-0.5, 0.5) for dr in (-0.5, 0.5)
    ]
    pixels_mm = pixel_to_slide(pydicom.dcmread(dicom_out / "S-7_A_1.pm.dcm"), np.array(corners))
    np.testing.assert_allclose(outline_mm.min(axis=0), pixels_mm.min(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(outline_mm.max(axis=0), pixels_mm.max(axis=0), rtol=0, atol=1e-6)


def test_dicom_out_refuses_a_slide_not_read_from_dicom(svs, tmp_path, capsys, probe_model):
    pytest.importorskip("highdicom", reason="--dicom-out writes through highdicom (the dicom extra)")
    assert main([str(svs), "-o", str(tmp_path), "--dicom-out", *score_args(probe_model)]) == 2
    assert "--dicom-out needs DICOM slides" in capsys.readouterr().err
