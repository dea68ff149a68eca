"""DICOM output for a heatmap of a DICOM WSI slide (``wsi-score --dicom-out``), written with highdicom: the
tumour probability map as a Parametric Map (float, one value per grid cell, NaN where no tissue was scored)
placed on the slide's frame of reference, and the regions as Microscopy Bulk Simple Annotations (one polygon
per region: the exterior of its largest part, in the slide's level-0 pixels; holes are not represented). Both
reference the slide's level-0 image, so only slides read from DICOM can have them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.core.version import __version__
from wsi_pipeline.findings.regions import Region, tumour_scores
from wsi_pipeline.slide.dicom import is_dicom, series_of
from wsi_pipeline.store.heatmap import Heatmap

if TYPE_CHECKING:
    from pydicom import Dataset

MANUFACTURER = "wsi_pipeline"
SUFFIXES = {"map": ".pm.dcm", "annotations": ".ann.dcm"}  # beside the heatmap <name>.zarr


def dicom_paths(heatmap_path: str | Path) -> dict[str, Path]:
    """The DICOM files that belong to a heatmap ``<name>.zarr``, by kind."""
    heatmap_path = Path(heatmap_path)
    return {kind: heatmap_path.with_name(heatmap_path.stem + suffix) for kind, suffix in SUFFIXES.items()}


def level0_image(slide_path: str | Path) -> Dataset:
    """The header of a DICOM WSI series' level-0 image (its largest VOLUME image)."""
    import pydicom

    if not is_dicom(slide_path):
        raise InputError(slide_path, "DICOM output needs a DICOM slide (convert it first: wsidicomizer)")
    headers = [pydicom.dcmread(file, stop_before_pixels=True) for file in series_of(slide_path).files]
    volumes = [h for h in headers if "VOLUME" in h.ImageType]
    return max(volumes, key=lambda h: int(h.TotalPixelMatrixColumns))


def map_origin_level0(heatmap: Heatmap) -> tuple[float, float]:
    """(x, y) level-0 pixel index (pixel i centred at i) of the centre of grid cell (0, 0), where the map's
    pixel 1\\1 goes: Plane Position (Slide), like Total Pixel Matrix Origin, locates a pixel's centre (PS3.3
    C.8.12.14, C.7.6.2.1.1), as highdicom's PixelToReferenceTransformer does index (0, 0)."""
    grid = heatmap.grid
    centre = grid.patch_size / 2 * grid.ds  # level-0 pixels from the slide's corner to cell (0, 0)'s centre
    return centre - 0.5, centre - 0.5


def write_dicom(heatmap_path: str | Path, heatmap: Heatmap, regions: Sequence[Region]) -> None:
    """Write the probability map and the regions (none: an annotations object with no group) beside the
    heatmap (``dicom_paths``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = level0_image(heatmap.metadata.slide.path)
    grid = heatmap.grid
    spacing_mm = grid.stride * grid.target_mpp / 1000.0
    to_slide = hd.spatial.PixelToReferenceTransformer.for_image(source, for_total_pixel_matrix=True).affine
    origin = tuple(float(v) for v in (to_slide @ [*map_origin_level0(heatmap), 0.0, 1.0])[:3])
    equipment = {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": heatmap.metadata.models[0].name,
        "software_versions": __version__,
        "device_serial_number": "none",
    }
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="tumour",
        lut_explanation="tumour probability",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    probability_map = hd.pm.ParametricMap(
        source_images=[source],
        pixel_array=tumour_scores(heatmap).astype(np.float32),
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=0.5,
        window_width=1.0,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=(spacing_mm, spacing_mm), slice_thickness=None),
        plane_orientation=hd.PlaneOrientationSequence("SLIDE", source.ImageOrientationSlide),
        plane_positions=[hd.PlanePositionSequence("SLIDE", origin, (1, 1))],
        content_label="TUMOUR",
        content_description="tumour probability per patch (research, not for diagnosis)",
        **equipment,
    )
    paths = dicom_paths(heatmap_path)
    write_atomically(paths["map"], probability_map.save_as)
    group = hd.ann.AnnotationGroup(
        number=1,
        uid=hd.UID(),
        label="tumour regions",
        annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        annotated_property_type=codes.SCT.Neoplasm,
        graphic_type=hd.ann.GraphicTypeValues.POLYGON,
        graphic_data=[_exterior(region) for region in regions],
        algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=heatmap.metadata.models[0].name,
            version=__version__,
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    annotations = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
        annotation_groups=[group] if regions else [],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        content_label="REGIONS",
        **equipment,
    )
    write_atomically(paths["annotations"], annotations.save_as)


def _exterior(region: Region) -> np.ndarray:
    """A region's largest polygon's exterior ring, open (first point not repeated), as 2D Point Coordinates
    Data: (column, row) = (x, y) in the level-0 Total Pixel Matrix, (0, 0) the top-left corner of its top-left
    pixel (PS3.3 C.18.6 Graphic Data), as the grid's level-0 coordinates are."""
    ring = max((rings[0] for rings in region.polygons), key=len)
    ring = np.asarray(ring, dtype=np.float64)
    return ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring
