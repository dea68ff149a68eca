"""H&E-like synthetic lymph-node slides with known metastases: scenes, rendering, and ground truth.

A scene lives in level-0 pixels of a slide of known µm/px. Tissue islands hold pink stroma with spindle
nuclei, lymphoid areas of dense small round nuclei, and metastases: clusters of larger, pleomorphic,
hyperchromatic nuclei, from a few cells to several mm. Every shape is a star-shaped blob whose boundary is
known exactly, so the tumour mask and polygons are ground truth, not estimates.

Rendering is a pure function of the scene and the pixel positions: nuclei sit on a jittered lattice whose
per-site random numbers come from a hash of (seed, layer, lattice site), so any tile renders the same
wherever it is cut, and a slide of any size is written tile by tile (``synthetic.write_slide``).
Colours follow Beer-Lambert absorption of two stains (haematoxylin, eosin) with per-slide variation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsi_pipeline.core.polygons import max_diameter, polygon_area

BACKGROUND, STROMA, LYMPHOID, TUMOUR = 0, 1, 2, 3
LABEL_NAMES = ("background", "stroma", "lymphoid", "tumour")
# Stain optical-density vectors (Ruifrok & Johnston), before per-slide variation
HAEMATOXYLIN_OD = (0.65, 0.70, 0.29)
EOSIN_OD = (0.07, 0.99, 0.11)
_MAX_HARMONIC_SUM = 0.45  # keeps a blob's radius positive and the blob star-shaped


@dataclass(frozen=True)
class Blob:
    """A star-shaped region: radius ``r(θ) = radius · (1 + Σ_k a_k cos(kθ + φ_k))``, k = 2, 3, …"""

    x_level0: float
    y_level0: float
    radius_level0: float
    amplitudes: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, (a, phi) in enumerate(zip(self.amplitudes, self.phases, strict=True), start=2):
            r += a * np.cos(k * theta + phi)
        return self.radius_level0 * r

    def contains(self, x_level0: np.ndarray, y_level0: np.ndarray) -> np.ndarray:
        """Whether points (broadcast together) lie inside the blob."""
        dx, dy = np.broadcast_arrays(x_level0 - self.x_level0, y_level0 - self.y_level0)
        distance = np.hypot(dx, dy)
        wobble = sum(map(abs, self.amplitudes))
        inside = distance <= self.radius_level0 * (1 - wobble)
        ring = ~inside & (distance < self.radius_level0 * (1 + wobble))  # only here does the angle matter
        inside[ring] = distance[ring] <= self.radius_at(np.arctan2(dy[ring], dx[ring]))
        return inside

    @property
    def bbox_level0(self) -> tuple[float, float, float, float]:
        reach = self.radius_level0 * (1 + sum(map(abs, self.amplitudes)))
        return (self.x_level0 - reach, self.y_level0 - reach, self.x_level0 + reach, self.y_level0 + reach)

    def polygon(self, n_vertices: int = 256) -> np.ndarray:
        """(n, 2) boundary vertices (x, y) in level-0 pixels, counter-clockwise in image coordinates."""
        theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        r = self.radius_at(theta)
        return np.stack([self.x_level0 + r * np.cos(theta), self.y_level0 + r * np.sin(theta)], axis=1)

    def overlaps(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        bx0, by0, bx1, by1 = self.bbox_level0
        return bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0


@dataclass(frozen=True)
class NucleusKind:
    """Nuclei of one region kind on a jittered lattice (sizes in µm)."""

    region: int
    spacing_um: float
    keep: float  # fraction of lattice sites holding a nucleus
    major_um: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # minor / major range
    density: tuple[float, float]  # haematoxylin density range at the centre


NUCLEI = (
    NucleusKind(STROMA, 16.0, 0.55, (4.0, 6.5), (0.22, 0.38), (0.9, 1.2)),
    NucleusKind(LYMPHOID, 6.5, 0.92, (2.5, 3.2), (0.85, 1.0), (1.4, 1.7)),
    NucleusKind(TUMOUR, 10.0, 0.97, (4.5, 7.5), (0.55, 0.95), (1.6, 2.2)),
)
# Stain densities of the space between nuclei: (eosin, haematoxylin) per region label
GROUND = {BACKGROUND: (0.015, 0.0), STROMA: (0.55, 0.04), LYMPHOID: (0.32, 0.10), TUMOUR: (0.42, 0.16)}


def _hash_uniform(seed: int, layer: int, i: np.ndarray, j: np.ndarray, k: int) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, layer, i, j, k): a splitmix64-style integer hash."""
    key = np.uint64((seed * 1_000_003 + layer * 7_919 + k * 104_729) % 2**64)
    with np.errstate(over="ignore"):
        h = i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= key * np.uint64(0x165667B19E3779F9)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def _lerp(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return bounds[0] + u * (bounds[1] - bounds[0])


@dataclass
class HEScene:
    """A synthetic lymph-node section in the level-0 pixels of a ``width0 × height0`` slide at ``mpp``."""

    width0: int
    height0: int
    mpp: float
    seed: int
    islands: list[Blob] = field(default_factory=list)
    lymphoid: list[Blob] = field(default_factory=list)
    stroma: list[Blob] = field(default_factory=list)  # fibrous areas inside lymphoid ones
    metastases: list[Blob] = field(default_factory=list)
    haematoxylin_od: tuple[float, float, float] = HAEMATOXYLIN_OD
    eosin_od: tuple[float, float, float] = EOSIN_OD
    stain_strength: float = 1.0

    def labels(self, x_level0: np.ndarray, y_level0: np.ndarray) -> np.ndarray:
        """Region label (BACKGROUND, STROMA, LYMPHOID, TUMOUR) at points broadcast together."""
        shape = np.broadcast_shapes(np.shape(x_level0), np.shape(y_level0))
        out = np.full(shape, BACKGROUND, np.uint8)
        box = (np.min(x_level0), np.min(y_level0), np.max(x_level0) + 1, np.max(y_level0) + 1)

        def paint(blobs: list[Blob], label: int, over: int | None = None) -> None:
            for blob in blobs:
                if blob.overlaps(*box):
                    inside = blob.contains(x_level0, y_level0)
                    out[inside if over is None else inside & (out == over)] = label

        paint(self.islands, STROMA)
        paint(self.lymphoid, LYMPHOID, over=STROMA)
        paint(self.stroma, STROMA, over=LYMPHOID)  # fibrous areas inside lymphoid tissue
        paint(self.metastases, TUMOUR)
        return out

    def tumour(self, x_level0: np.ndarray, y_level0: np.ndarray) -> np.ndarray:
        """Whether points lie in a metastasis (the ground truth)."""
        return self.labels(x_level0, y_level0) == TUMOUR

    def tumour_mask(self, downsample: float) -> np.ndarray:
        """Ground-truth tumour mask, one value per ``downsample`` level-0 pixels, sampled at pixel centres."""
        height, width = int(self.height0 // downsample), int(self.width0 // downsample)
        x = (np.arange(width) + 0.5) * downsample
        y = (np.arange(height) + 0.5) * downsample
        out = np.zeros((height, width), bool)
        for blob in self.metastases:
            bx0, by0, bx1, by1 = blob.bbox_level0
            cols = slice(max(0, int(bx0 / downsample)), min(width, int(bx1 / downsample) + 1))
            rows = slice(max(0, int(by0 / downsample)), min(height, int(by1 / downsample) + 1))
            out[rows, cols] |= blob.contains(x[None, cols], y[rows, None])
        return out

    def render(
        self, x0_level0: float, y0_level0: float, width: int, height: int, downsample: float
    ) -> np.ndarray:
        """RGB uint8 (height, width, 3); pixel (i, j) shows level-0 ``(x0 + (j + ½)·ds, y0 + (i + ½)·ds)``."""
        x = x0_level0 + (np.arange(width) + 0.5) * downsample
        y = y0_level0 + (np.arange(height) + 0.5) * downsample
        labels = self.labels(x[None, :], y[:, None])
        ground = np.array([GROUND[k] for k in range(4)], np.float32)
        eosin = ground[labels, 0]
        haem = ground[labels, 1]
        if labels.any():  # tissue in view
            eosin *= 1 + 0.2 * self._texture(x, y)
            for layer, kind in enumerate(NUCLEI):
                if (labels == kind.region).any():
                    self._add_nuclei(haem, eosin, labels, layer, kind, x, y, downsample)
        rng = np.random.default_rng([self.seed, int(x0_level0), int(y0_level0), width, height])
        haem *= 1 + 0.12 * rng.standard_normal(haem.shape, np.float32)  # chromatin grain
        od = self.stain_strength * (
            haem[..., None] * np.asarray(self.haematoxylin_od, np.float32)
            + eosin[..., None] * np.asarray(self.eosin_od, np.float32)
        )
        rgb = 250.0 * np.exp(-od) + 2.0 * rng.standard_normal(od.shape, np.float32) + 0.5
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def _texture(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Smooth fibre-like variation in [-1, 1] (a few plane waves, 12-60 µm wavelengths)."""
        rng = np.random.default_rng([self.seed, 17])
        out = np.zeros((len(y), len(x)), np.float32)
        for _ in range(4):
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            k = 2 * np.pi * self.mpp / rng.uniform(12, 60)  # radians per level-0 pixel
            ax, ay = k * np.cos(angle) * x + phase, k * np.sin(angle) * y
            out += np.outer(np.cos(ay), np.sin(ax)) + np.outer(np.sin(ay), np.cos(ax))
        return out / 4

    def _add_nuclei(
        self,
        haem: np.ndarray,
        eosin: np.ndarray,
        labels: np.ndarray,
        layer: int,
        kind: NucleusKind,
        x: np.ndarray,
        y: np.ndarray,
        downsample: float,
    ) -> None:
        """Paint one kind's nuclei into the haematoxylin density (eosin is displaced under them)."""
        spacing = kind.spacing_um / self.mpp  # level-0 pixels
        major_px = kind.major_um[1] / self.mpp / downsample
        if major_px < 1.5:  # nuclei below pixel size: their average density over their region
            mean_area = np.pi * np.mean(kind.major_um) ** 2 * np.mean(kind.aspect)
            coverage = kind.keep * mean_area / kind.spacing_um**2
            region = labels == kind.region
            haem[region] += coverage * np.mean(kind.density)
            eosin[region] *= 1 - coverage
            return
        reach = kind.major_um[1] / self.mpp
        i_range = np.arange(int((x[0] - reach) // spacing), int((x[-1] + reach) // spacing) + 1)
        j_range = np.arange(int((y[0] - reach) // spacing), int((y[-1] + reach) // spacing) + 1)
        i, j = (a.ravel() for a in np.meshgrid(i_range, j_range))
        u = [_hash_uniform(self.seed, layer, i, j, k) for k in range(7)]
        cx, cy = (i + u[0]) * spacing, (j + u[1]) * spacing
        keep = (u[2] < kind.keep) & (self.labels(cx, cy) == kind.region)
        major = _lerp(u[3], kind.major_um) / self.mpp / downsample
        minor = major * _lerp(u[4], kind.aspect)
        angle = u[5] * np.pi
        density = _lerp(u[6], kind.density)
        col, row = (cx[keep] - x[0]) / downsample, (cy[keep] - y[0]) / downsample  # centres in render px
        major, minor = major[keep, None, None], minor[keep, None, None]
        cos, sin = np.cos(angle[keep])[:, None, None], np.sin(angle[keep])[:, None, None]
        # every nucleus painted at once through a square stamp around its centre
        offsets = np.arange(2 * int(np.ceil(major_px)) + 3) - (int(np.ceil(major_px)) + 1)
        cols = np.floor(col).astype(np.int64)[:, None] + offsets
        rows = np.floor(row).astype(np.int64)[:, None] + offsets
        dx, dy = (cols - col[:, None])[:, None, :], (rows - row[:, None])[:, :, None]
        d2 = ((dx * cos + dy * sin) / major) ** 2 + ((dy * cos - dx * sin) / minor) ** 2
        profile = np.clip((1.0 - d2) * 4.0, 0.0, 1.0).astype(np.float32)
        height, width = haem.shape
        valid = (
            (profile > 0)
            & ((rows >= 0) & (rows < height))[:, :, None]
            & ((cols >= 0) & (cols < width))[:, None, :]
        )
        flat = (rows[:, :, None] * width + cols[:, None, :])[valid]
        nuclear = np.zeros(haem.size, np.float32)
        np.maximum.at(haem.reshape(-1), flat, (density[keep, None, None] * profile)[valid].astype(np.float32))
        np.maximum.at(nuclear, flat, profile[valid])
        eosin *= 1 - 0.7 * nuclear.reshape(haem.shape)


def _random_blob(rng: np.random.Generator, x: float, y: float, radius: float, roughness: float) -> Blob:
    """A blob with random low-order wobble; ``roughness`` scales the harmonics (sum kept < 0.45)."""
    n = 6
    amplitudes = rng.uniform(0, 1, n) / np.arange(2, n + 2) ** 1.2
    amplitudes *= roughness * _MAX_HARMONIC_SUM / max(amplitudes.sum(), 1e-9)
    phases = rng.uniform(0, 2 * np.pi, n)
    return Blob(x, y, radius, tuple(amplitudes.tolist()), tuple(phases.tolist()))


def _inside(outer: Blob, inner: Blob) -> bool:
    points = inner.polygon(64)
    return bool(outer.contains(points[:, 0], points[:, 1]).all())


def make_scene(
    width0: int,
    height0: int,
    mpp: float,
    seed: int,
    n_metastases: int | None = None,
    metastasis_diameter_um: tuple[float, float] = (30.0, 3000.0),
    at_capsule: bool = False,
) -> HEScene:
    """A random lymph-node-like scene: 1-3 tissue islands covering about a third of the slide, lymphoid areas,
    fibrous areas, and ``n_metastases`` metastases (default: 0-4 at random) with diameters drawn
    log-uniformly from ``metastasis_diameter_um`` (capped at what fits), each wholly inside one island; with
    ``at_capsule``, each touches its island's rim from inside, as metastases in the subcapsular sinus do."""
    rng = np.random.default_rng(seed)
    um = 1 / mpp  # level-0 pixels per µm
    n_islands = int(rng.integers(1, 4))
    wide = width0 >= height0  # islands side by side along the longer side
    span_w, span_h = (width0 / n_islands, height0) if wide else (width0, height0 / n_islands)
    islands = []
    for index in range(n_islands):
        cx = span_w * ((index if wide else 0) + rng.uniform(0.45, 0.55))
        cy = span_h * ((0 if wide else index) + rng.uniform(0.45, 0.55))
        radius = 0.5 * min(span_w, span_h) * rng.uniform(0.55, 0.68)
        islands.append(_random_blob(rng, cx, cy, radius, roughness=rng.uniform(0.3, 0.8)))

    def point_in(island: Blob, fraction: float) -> tuple[float, float]:
        theta = rng.uniform(0, 2 * np.pi)
        r = island.radius_at(np.array([theta]))[0] * np.sqrt(rng.uniform(0, 1)) * fraction
        return island.x_level0 + r * np.cos(theta), island.y_level0 + r * np.sin(theta)

    def rim_point(island: Blob, radius: float) -> tuple[float, float]:
        """A centre from which a blob of ``radius`` reaches to within 10% of its radius from the rim."""
        theta = rng.uniform(0, 2 * np.pi)
        r = island.radius_at(np.array([theta]))[0] - radius * 1.1
        return island.x_level0 + r * np.cos(theta), island.y_level0 + r * np.sin(theta)

    lymphoid, stroma = [], []
    for island in islands:
        # lymphoid tissue fills most of the island inside a fibrous rim (capsule), with follicle-like bulges
        lymphoid.append(_random_blob(rng, island.x_level0, island.y_level0, island.radius_level0 * 0.8, 0.5))
        for _ in range(int(rng.integers(2, 6))):
            x, y = point_in(island, 0.9)
            lymphoid.append(_random_blob(rng, x, y, island.radius_level0 * rng.uniform(0.1, 0.25), 0.6))
        for _ in range(int(rng.integers(2, 6))):
            x, y = point_in(island, 0.8)
            stroma.append(_random_blob(rng, x, y, island.radius_level0 * rng.uniform(0.05, 0.15), 0.8))

    n_metastases = int(rng.integers(0, 5)) if n_metastases is None else n_metastases
    metastases: list[Blob] = []
    low, high = np.log(metastasis_diameter_um[0]), np.log(metastasis_diameter_um[1])
    while len(metastases) < n_metastases:
        diameter_um = np.exp(rng.uniform(low, high))
        for _ in range(100):  # places for a metastasis of this size
            island = islands[int(rng.integers(len(islands)))]
            radius = diameter_um / 2 * um
            centre = rim_point(island, radius) if at_capsule else point_in(island, 0.85)
            blob = _random_blob(rng, *centre, radius, rng.uniform(0.2, 0.9))
            if _inside(island, blob) and not any(_touching(blob, other) for other in metastases):
                metastases.append(blob)
                break
        else:  # nothing this large fits: draw smaller ones from now on
            if diameter_um <= metastasis_diameter_um[0] * 1.01:
                raise ValueError(f"no room for {n_metastases} metastases in this tissue")
            high = np.log(diameter_um)

    h_od = np.asarray(HAEMATOXYLIN_OD) * rng.uniform(0.85, 1.15, 3)
    e_od = np.asarray(EOSIN_OD) * rng.uniform(0.85, 1.15, 3)
    return HEScene(
        width0,
        height0,
        mpp,
        seed,
        islands,
        lymphoid,
        stroma,
        metastases,
        tuple((h_od / np.linalg.norm(h_od)).tolist()),
        tuple((e_od / np.linalg.norm(e_od)).tolist()),
        float(rng.uniform(0.85, 1.15)),
    )


def _touching(a: Blob, b: Blob) -> bool:
    distance = np.hypot(a.x_level0 - b.x_level0, a.y_level0 - b.y_level0)
    reach = (a.bbox_level0[2] - a.x_level0) + (b.bbox_level0[2] - b.x_level0)
    return bool(distance < reach * 1.1)


def truth_geojson(scene: HEScene, n_vertices: int = 256) -> dict:
    """The metastases as a GeoJSON FeatureCollection of QuPath annotations in level-0 pixel coordinates."""
    features = []
    for index, blob in enumerate(scene.metastases):
        ring = blob.polygon(n_vertices)  # counter-clockwise (positive signed area), as RFC 7946 asks
        closed = np.vstack([ring, ring[:1]])
        features.append(
            {
                "type": "Feature",
                "id": f"metastasis-{index}",
                "geometry": {"type": "Polygon", "coordinates": [closed.round(2).tolist()]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "name": f"metastasis {index}",
                    "area_um2": polygon_area(ring) * scene.mpp**2,
                    "diameter_um": max_diameter(ring) * scene.mpp,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
