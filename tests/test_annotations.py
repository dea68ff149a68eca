"""Truth readers on files written here in the exact formats: ASAP XML, QuPath GeoJSON, mask PNG and TIFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.evaluation.annotations import find_truth, read_asap_xml, read_geojson, read_mask, read_truth

# Camelyon16 style: tumour in groups _0, _1 and Tumor; _2 marks non-tumour areas inside tumour annotations.
ASAP_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
	<Annotations>
		<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
			<Coordinates>
				<Coordinate Order="2" X="300" Y="300" />
				<Coordinate Order="0" X="100" Y="100" />
				<Coordinate Order="1" X="300" Y="100" />
				<Coordinate Order="3" X="100" Y="300" />
			</Coordinates>
		</Annotation>
		<Annotation Name="Annotation 1" Type="Spline" PartOfGroup="Tumor" Color="#F4FA58">
			<Coordinates>
				<Coordinate Order="0" X="500,5" Y="500" />
				<Coordinate Order="1" X="600" Y="500" />
				<Coordinate Order="2" X="600" Y="600.25" />
			</Coordinates>
		</Annotation>
		<Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
			<Coordinates>
				<Coordinate Order="0" X="150" Y="150" />
				<Coordinate Order="1" X="200" Y="150" />
				<Coordinate Order="2" X="200" Y="200" />
				<Coordinate Order="3" X="150" Y="200" />
			</Coordinates>
		</Annotation>
		<Annotation Name="Annotation 3" Type="Dot" PartOfGroup="_1" Color="#F4FA58">
			<Coordinates><Coordinate Order="0" X="700" Y="700" /></Coordinates>
		</Annotation>
		<Annotation Name="Annotation 4" Type="Polygon" PartOfGroup="None" Color="#F4FA58">
			<Coordinates>
				<Coordinate Order="0" X="800" Y="800" />
				<Coordinate Order="1" X="900" Y="800" />
				<Coordinate Order="2" X="900" Y="900" />
			</Coordinates>
		</Annotation>
	</Annotations>
	<AnnotationGroups>
		<Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
		<Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
	</AnnotationGroups>
</ASAP_Annotations>
"""


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def qupath_feature(geometry, class_name):
    properties = {"objectType": "annotation", "classification": {"name": class_name, "color": [200, 0, 0]}}
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": properties}


QUPATH_FEATURES = [
    qupath_feature(
        {"type": "Polygon", "coordinates": [square(0, 0, 100, 100), square(40, 40, 60, 60)]}, "Tumor"
    ),
    qupath_feature(
        {"type": "MultiPolygon", "coordinates": [[square(200, 0, 300, 100)], [square(400, 0, 500, 100)]]},
        "Tumor",
    ),
    qupath_feature({"type": "Polygon", "coordinates": [square(0, 200, 100, 300)]}, "Stroma"),
    qupath_feature({"type": "Point", "coordinates": [50, 50]}, "Tumor"),
]


def test_asap_xml_tumour_groups_exclusions_and_vertex_order(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(ASAP_XML)
    regions = read_asap_xml(path)
    assert len(regions.tumour) == 2 and len(regions.exclusions) == 1  # the Dot and the "None" group skipped
    np.testing.assert_array_equal(regions.tumour[0], [[100, 100], [300, 100], [300, 300], [100, 300]])
    np.testing.assert_array_equal(regions.tumour[1], [[500.5, 500], [600, 500], [600, 600.25]])
    inside = regions.contains(np.array([120, 175, 250, 590, 850]), np.array([120, 175, 250, 510, 850]))
    assert inside.tolist() == [True, False, True, True, False]  # 175: in the _2 hole; 850: group "None"
    assert read_truth(path).tumour[1].tolist() == regions.tumour[1].tolist()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<ASAP_Annotations><Annotations>", "not XML"),
        ("<Annotations/>", "not an ASAP annotation file"),
        (
            '<ASAP_Annotations><Annotations><Annotation PartOfGroup="_0"><Coordinates>'
            '<Coordinate Order="0" X="1" /></Coordinates></Annotation></Annotations></ASAP_Annotations>',
            "numeric Order, X and Y",
        ),
        (
            '<ASAP_Annotations><Annotations><Annotation PartOfGroup="Tumor"><Coordinates>'
            '<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="2" Y="1"/></Coordinates>'
            "</Annotation></Annotations></ASAP_Annotations>",
            "at least three",
        ),
    ],
)
def test_malformed_asap_xml_is_an_input_error(tmp_path, text, problem):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as error:
        read_asap_xml(path)
    assert error.value.path == str(path)


def test_qupath_geojson_holes_multipolygons_and_classes(tmp_path):
    collection = tmp_path / "s.geojson"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": QUPATH_FEATURES}))
    plain_list = tmp_path / "list.geojson"  # QuPath's export without "FeatureCollection"
    plain_list.write_text(json.dumps(QUPATH_FEATURES))
    for path in (collection, plain_list):
        regions = read_geojson(path)
        assert len(regions.tumour) == 4 and len(regions.exclusions) == 1  # the point encloses nothing
        points = np.array([10, 50, 250, 450, 50]), np.array([10, 50, 50, 50, 250])
        assert regions.contains(*points).tolist() == [True, False, True, True, True]
        tumour_only = read_geojson(path, classes=["tumor"])  # class names match case-insensitively
        assert tumour_only.contains(*points).tolist() == [True, False, True, True, False]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}), "at least three"),
        (json.dumps({"type": "Feature", "geometry": {"coordinates": []}}), "not a GeoJSON geometry"),
        (json.dumps({"type": "Polygon", "coordinates": [[["a", 0], [1, 1], [2, 0]]]}), "not numbers"),
        (json.dumps([1]), "not a JSON object"),
    ],
)
def test_malformed_geojson_is_an_input_error(tmp_path, content, problem):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(InputError, match=problem):
        read_geojson(path)


def ring_and_blob_mask() -> np.ndarray:
    mask = np.zeros((30, 40), bool)
    mask[2:20, 3:25] = True
    mask[6:12, 8:15] = False  # a hole
    mask[24:27, 30:38] = True
    mask[28, 39] = True  # one pixel at the corner
    return mask


def test_mask_png_outlines_reproduce_the_mask(tmp_path):
    mask = ring_and_blob_mask()
    path = tmp_path / "s_mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    regions = read_mask(path, downsample=4)
    assert len(regions.tumour) == 3 and len(regions.exclusions) == 1
    np.testing.assert_array_equal(regions.rasterise(mask.shape, 4.0), mask)
    # level-0 pixel (x, y) lies in mask pixel (y // 4, x // 4); the hole spans columns 8-14 of rows 6-11
    x, y = np.array([12, 34, 99, 101]), np.full(4, 34)
    assert regions.contains(x, y).tolist() == [True, False, True, False]
    # no downsample given: from the slide's size (4 whole pixels explain 161 × 121, floored, like 160 × 120)
    inferred = read_truth(path, slide_size=(161, 121))
    np.testing.assert_array_equal(inferred.rasterise(mask.shape, 4.0), mask)
    with pytest.raises(InputError, match="does not fit"):
        read_mask(path, slide_size=(160, 200))
    with pytest.raises(InputError, match="needs its downsample"):
        read_mask(path)


def test_pyramidal_tiff_mask_is_read_at_a_level_that_fits(tmp_path):
    full = np.zeros((64, 64), np.uint8)
    full[16:48, 8:40] = 1  # Camelyon16's masks hold 1 for tumour
    path = tmp_path / "tumor_001_mask.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(full, tile=(16, 16), subifds=1)
        tif.write(full[::2, ::2], tile=(16, 16), subfiletype=1)
    whole = read_mask(path, downsample=1)
    np.testing.assert_array_equal(whole.rasterise((64, 64), 1.0), full.astype(bool))
    half = read_mask(path, downsample=1, max_pixels=32 * 32)  # level 0 is too large: level 1, 2 px per pixel
    np.testing.assert_array_equal(half.rasterise((32, 32), 2.0), full[::2, ::2].astype(bool))
    np.testing.assert_allclose(half.tumour[0].min(axis=0), [8, 16])
    with pytest.raises(InputError, match="cannot be read as an image"):
        read_mask(tmp_path / "missing.tif", downsample=1)


def test_truth_files_are_found_by_slide_stem():
    names = (
        "tumor_001.xml tumor_001_Mask.tif s.svs s.truth.json s.truth_mask.png s.truth.geojson normal_001.tif"
    )
    files = [Path(name) for name in names.split()]
    assert find_truth("tumor_001", files) == Path("tumor_001.xml")
    assert find_truth("tumor_001", files, "mask") == Path("tumor_001_Mask.tif")
    assert find_truth("s", files) == Path("s.truth.geojson")
    assert find_truth("s", files, "mask") == Path("s.truth_mask.png")
    assert find_truth("normal_001", files) is None  # the slide itself is not a mask
    assert find_truth("s", files, "asap") is None
