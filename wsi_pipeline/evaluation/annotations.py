"""Ground-truth tumour annotations from GeoJSON (QuPath), ASAP XML (Camelyon16/17) and binary masks.

Every reader returns :class:`TumourRegions` in level-0 pixels (x right, y down, the slide's top-left corner
at 0): ``tumour`` rings and ``exclusions`` rings, each an (n, 2) float array of (x, y). A point is tumour when
it lies inside a tumour ring and inside no exclusion ring. Exclusions are global, so a tumour island drawn
inside another polygon's hole is excluded too (no Camelyon annotation does this).

- GeoJSON: a FeatureCollection, a list of Features (QuPath's plain export), a Feature or a bare geometry.
  Polygon and MultiPolygon outer rings are tumour, their inner rings (holes) exclusions; GeometryCollections
  are opened; points and lines are skipped. ``classes`` keeps only features whose classification name
  (QuPath's ``properties.classification.name``, or a plain string) is listed.
- ASAP XML (``<ASAP_Annotations><Annotations><Annotation Type PartOfGroup><Coordinates><Coordinate Order X
  Y/>``): groups ``Tumor``, ``_0``, ``_1`` (Camelyon16) and ``metastases`` (Camelyon17) are tumour; ``_2``
  (Camelyon16's non-tumour areas inside tumour annotations) and ``Exclusion`` are exclusions; other groups and
  ``Dot``/``PointSet`` annotations are skipped. Vertices are taken in ``Order``; spline annotations are taken
  as the polygon of their control points.
- Masks (PNG, TIFF; a pyramidal TIFF is read at its finest level of at most ``MAX_MASK_PIXELS``, its levels
  either marked as reduced images or plain consecutive pages, as ASAP wrote the Camelyon16 masks): nonzero is
  tumour (the first channel of a colour image). Outlines follow the pixel edges (marching squares at 0.5), so
  a pixel is tumour exactly when its centre is inside; holes become exclusions."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.polygons import points_in_polygons, signed_area

TUMOUR_GROUPS = ("tumor", "tumour", "_0", "_1", "metastases")
EXCLUSION_GROUPS = ("_2", "exclusion")
ASAP_AREA_TYPES = ("polygon", "spline", "rectangle")
MAX_MASK_PIXELS = 64_000_000
FORMATS = ("asap", "geojson", "mask")
# Truth file names per format for a slide stem, matched case-insensitively, in order of preference.
TRUTH_SUFFIXES = {
    "asap": (".xml",),
    "geojson": (".geojson", ".truth.geojson"),
    "mask": tuple(
        f"{tag}.{ext}" for tag in ("_mask", ".truth_mask", ".mask") for ext in ("png", "tif", "tiff")
    ),
}


@dataclass
class TumourRegions:
    """Tumour in level-0 pixels: inside a ``tumour`` ring and outside every ``exclusions`` ring."""

    tumour: list[np.ndarray] = field(default_factory=list)
    exclusions: list[np.ndarray] = field(default_factory=list)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points (1-D x, y) are tumour."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return points_in_polygons(self.tumour, x, y) & ~points_in_polygons(self.exclusions, x, y)

    def rasterise(
        self, shape: tuple[int, int], downsample: float, mark_vertices: bool = False, at_corners: bool = False
    ) -> np.ndarray:
        """Bool mask (rows, cols), one pixel per ``downsample`` level-0 pixels, true where the pixel centre is
        tumour. ``mark_vertices`` also sets the pixels holding tumour vertices, so no ring vanishes;
        ``at_corners`` tests each pixel's top-left corner instead of its centre, as a nearest-neighbour
        pyramid of a level-0 mask samples it."""
        mask = np.zeros(shape, bool)
        offset = 0.0 if at_corners else 0.5
        for rings, value in ((self.tumour, True), (self.exclusions, False)):
            for ring in rings:
                rows, cols = fill_polygon(
                    ring[:, 1] / downsample - offset, ring[:, 0] / downsample - offset, shape
                )
                mask[rows, cols] = value
                if value and mark_vertices:
                    index = np.floor(ring[:, ::-1] / downsample).astype(int)  # (row, col)
                    keep = ((index >= 0) & (index < shape)).all(axis=1)
                    mask[index[keep, 0], index[keep, 1]] = True
        return mask


def _ring(coordinates: object, path: str | Path, what: str) -> np.ndarray:
    """A ring of at least three (x, y) vertices as a float (n, 2) array."""
    try:
        ring = np.asarray(coordinates, np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{what}: coordinates are not numbers") from None
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3 or not np.isfinite(ring).all():
        raise InputError(path, f"{what}: a ring needs at least three finite (x, y) vertices")
    return ring[:, :2]


def _class_name(feature: dict) -> str | None:
    classification = (feature.get("properties") or {}).get("classification")
    return classification.get("name") if isinstance(classification, dict) else classification


def _add_geometry(regions: TumourRegions, geometry: object, path: str | Path, what: str) -> None:
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise InputError(path, f"{what}: not a GeoJSON geometry")
    kind = geometry["type"]
    if kind == "GeometryCollection":
        for index, part in enumerate(geometry.get("geometries") or []):
            _add_geometry(regions, part, path, f"{what}, geometry {index}")
        return
    if kind not in ("Polygon", "MultiPolygon"):
        return  # points and lines enclose no area
    polygons = geometry.get("coordinates")
    polygons = [polygons] if kind == "Polygon" else polygons
    if not isinstance(polygons, list) or not all(isinstance(rings, list) and rings for rings in polygons):
        raise InputError(path, f"{what}: {kind} coordinates must be lists of rings")
    for rings in polygons:
        regions.tumour.append(_ring(rings[0], path, what))
        regions.exclusions += [_ring(hole, path, f"{what} (hole)") for hole in rings[1:]]


def parse_geojson(
    data: object, path: str | Path = "<geojson>", classes: Collection[str] | None = None
) -> TumourRegions:
    """Tumour regions of parsed GeoJSON (see the module docstring); ``classes`` filters by classification."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    features = data if isinstance(data, list) else [data]
    wanted = None if classes is None else {name.lower() for name in classes}
    regions = TumourRegions()
    for index, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise InputError(path, f"feature {index}: not a JSON object")
        if feature.get("type") != "Feature":
            _add_geometry(regions, feature, path, f"geometry {index}")
            continue
        name = _class_name(feature)
        if wanted is not None and (not isinstance(name, str) or name.lower() not in wanted):
            continue
        if feature.get("geometry") is not None:
            _add_geometry(regions, feature["geometry"], path, f"feature {index}")
    return regions


def read_geojson(path: str | Path, classes: Collection[str] | None = None) -> TumourRegions:
    """Tumour regions of a GeoJSON file in level-0 pixels (QuPath's export)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(path, f"not JSON ({error})") from None
    return parse_geojson(data, path, classes)


def _asap_ring(annotation: ET.Element, path: str | Path, what: str) -> np.ndarray:
    vertices = []
    for coordinate in annotation.iter("Coordinate"):
        try:
            # Some exports write decimal commas.
            order, x, y = (float(coordinate.attrib[key].replace(",", ".")) for key in ("Order", "X", "Y"))
        except (KeyError, ValueError):
            raise InputError(path, f"{what}: a Coordinate needs numeric Order, X and Y") from None
        vertices.append((order, x, y))
    vertices.sort()
    return _ring([vertex[1:] for vertex in vertices], path, what)


def read_asap_xml(
    path: str | Path,
    tumour_groups: Collection[str] = TUMOUR_GROUPS,
    exclusion_groups: Collection[str] = EXCLUSION_GROUPS,
) -> TumourRegions:
    """Tumour regions of an ASAP annotation file (Camelyon16/17 truth); groups match case-insensitively."""
    try:
        root = ET.parse(path).getroot()
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror})") from None
    except ET.ParseError as error:
        raise InputError(path, f"not XML ({error})") from None
    if root.tag != "ASAP_Annotations":
        raise InputError(path, f"not an ASAP annotation file (root element <{root.tag}>)")
    tumour_groups = {name.lower() for name in tumour_groups}
    exclusion_groups = {name.lower() for name in exclusion_groups}
    regions = TumourRegions()
    for index, annotation in enumerate(root.iter("Annotation")):
        group = annotation.get("PartOfGroup", "").lower()
        if annotation.get("Type", "Polygon").lower() not in ASAP_AREA_TYPES:
            continue
        what = f"annotation {annotation.get('Name', index)!r}"
        if group in tumour_groups:
            regions.tumour.append(_asap_ring(annotation, path, what))
        elif group in exclusion_groups:
            regions.exclusions.append(_asap_ring(annotation, path, what))
    return regions


def mask_regions(mask: np.ndarray, downsample: float) -> TumourRegions:
    """Outlines of a bool mask (one pixel per ``downsample`` level-0 pixels) as tumour rings and holes."""
    regions = TumourRegions()
    padded = np.pad(mask.astype(np.float32), 1)
    # With positive_orientation="high" the tumour is always on the same side: outer outlines and hole
    # outlines then wind in opposite directions, told apart by the sign of their area.
    for contour in find_contours(padded, 0.5, positive_orientation="high"):
        ring = (contour[:, ::-1] - 0.5) * downsample  # (row, col) of the padded mask → level-0 (x, y)
        (regions.tumour if signed_area(ring) < 0 else regions.exclusions).append(ring)
    return regions


def _mask_downsample(shape: tuple[int, int], slide_size: tuple[int, int], path: str | Path) -> float:
    """Level-0 pixels per mask pixel from the slide's size: a whole number when it explains both sides."""
    height, width = shape
    width0, height0 = slide_size
    whole = round(width0 / width)
    if whole >= 1 and all(
        size in (math.floor(size0 / whole), math.ceil(size0 / whole))
        for size, size0 in ((width, width0), (height, height0))
    ):
        return float(whole)
    downsample = width0 / width
    if abs(height0 / downsample - height) > 1:
        raise InputError(
            path,
            f"mask {width} × {height} does not fit the slide's {width0} × {height0}; give a downsample",
        )
    return downsample


def tiff_levels(tif: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """A TIFF's resolution levels, largest first: its first series' levels, or its series when the levels are
    plain consecutive pages (as ASAP wrote pyramids until 2017)."""
    levels = tif.series[0].levels
    if len(levels) > 1:
        return levels
    return sorted(tif.series, key=lambda series: series.shape[series.axes.index("X")], reverse=True)


def _read_mask_pixels(path: Path, max_pixels: int) -> tuple[np.ndarray, float]:
    """The mask image and its downsample relative to the file's full resolution."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            levels = tiff_levels(tif)
            full_width = levels[0].shape[levels[0].axes.index("X")]
            level = next((lv for lv in levels if math.prod(lv.shape[:2]) <= max_pixels), levels[-1])
            if math.prod(level.shape[:2]) > max_pixels:
                raise InputError(path, f"mask has {math.prod(level.shape[:2])} pixels; at most {max_pixels}")
            image = level.asarray()
            return image, full_width / level.shape[level.axes.index("X")]
    with Image.open(path) as opened:
        if opened.width * opened.height > max_pixels:
            raise InputError(path, f"mask has {opened.width * opened.height} pixels; at most {max_pixels}")
        return np.asarray(opened), 1.0


def read_mask_image(
    path: str | Path,
    downsample: float | None = None,
    slide_size: tuple[int, int] | None = None,
    max_pixels: int = MAX_MASK_PIXELS,
) -> tuple[np.ndarray, float]:
    """A mask image's values (its first channel) and level-0 pixels per pixel. ``downsample``: level-0
    pixels per pixel of the file's full resolution; without it, inferred from ``slide_size`` (level-0 width,
    height)."""
    path = Path(path)
    try:
        image, level_downsample = _read_mask_pixels(path, max_pixels)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise InputError(path, f"cannot be read as an image ({error})") from None
    if image.ndim not in (2, 3):
        raise InputError(path, f"a mask must be a 2-D image, not shape {image.shape}")
    image = image[..., 0] if image.ndim == 3 else image
    if downsample is None:
        if slide_size is None:
            raise InputError(path, "a mask needs its downsample (level-0 pixels per mask pixel)")
        return image, _mask_downsample(image.shape, slide_size, path)
    return image, downsample * level_downsample


def read_mask(
    path: str | Path,
    downsample: float | None = None,
    slide_size: tuple[int, int] | None = None,
    max_pixels: int = MAX_MASK_PIXELS,
) -> TumourRegions:
    """Tumour regions of a binary mask image (arguments as :func:`read_mask_image`)."""
    image, mask_downsample = read_mask_image(path, downsample, slide_size, max_pixels)
    return mask_regions(image != 0, mask_downsample)


def truth_format(path: str | Path) -> str | None:
    """The format a truth file's name says (``asap``, ``geojson``, ``mask``), or None."""
    name = Path(path).name.lower()
    return next((kind for kind in FORMATS if any(name.endswith(s) for s in TRUTH_SUFFIXES[kind])), None)


def find_truth(stem: str, files: Sequence[Path], kind: str = "auto") -> Path | None:
    """The truth file for a slide stem among ``files``: ``<stem>.xml``, ``<stem>.geojson``,
    ``<stem>.truth.geojson``, ``<stem>_mask.png|tif``, ``<stem>.truth_mask.png``…; by format preference
    (ASAP, GeoJSON, mask) unless ``kind`` names one."""
    by_name = {file.name.lower(): file for file in files}
    for fmt in FORMATS if kind == "auto" else (kind,):
        for suffix in TRUTH_SUFFIXES[fmt]:
            if (stem + suffix).lower() in by_name:
                return by_name[(stem + suffix).lower()]
    return None


def read_truth(
    path: str | Path,
    kind: str = "auto",
    classes: Collection[str] | None = None,
    mask_downsample: float | None = None,
    slide_size: tuple[int, int] | None = None,
) -> TumourRegions:
    """Read a truth file in ``kind`` (``auto``: by its name; see :func:`truth_format`)."""
    kind = truth_format(path) if kind == "auto" else kind
    if kind == "asap":
        return read_asap_xml(path)
    if kind == "geojson":
        return read_geojson(path, classes)
    if kind == "mask":
        return read_mask(path, mask_downsample, slide_size)
    raise InputError(path, "unknown truth format (expected .xml, .geojson or a _mask.png/.tif)")
