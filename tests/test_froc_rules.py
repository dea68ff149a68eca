"""The two FROC rule sets, challenge and corrected, on cases worked out by hand; the challenge's mask TIFF and
detection CSV formats."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import polygon as fill_polygon

from wsi_pipeline import Block, PatchGrid
from wsi_pipeline.cli.evaluate import main
from wsi_pipeline.core.errors import InputError
from wsi_pipeline.evaluation.annotations import TumourRegions, read_mask
from wsi_pipeline.evaluation.detections import read_detections_csv, write_detections_csv
from wsi_pipeline.evaluation.froc import (
    Lesions,
    find_lesions,
    froc_curve,
    froc_score,
    match_detections,
    read_mask_lesions,
)
from wsi_pipeline.store.heatmap import HeatmapWriter

from .conftest import heatmap_record


def slide(lesions: int, hits: list[float], fps: list[float], itc: int = 0) -> dict:
    return {"lesions": lesions, "itc": itc, "hits": hits, "fps": fps}


def test_the_challenge_drops_the_lowest_threshold_meant_for_missed_lesions():
    """Two slides: a tumour slide whose 2 lesions are hit at 0.9 and 0.4 with a false positive at 0.6, and a
    negative slide with a false positive at 0.7 (an FP adds 1/2 per slide).

    Corrected, thresholds 0.9, 0.7, 0.6, 0.4: (0, 1/2), (1/2, 1/2), (1, 1/2), (1, 1). Sensitivity 1/2 at 1/4
    and 1/2 FPs per slide, 1 from 1 on: score (1/2 + 1/2 + 4) / 6 = 5/6.
    Challenge: the lesion scores hold no 0 (nothing missed, no ITC), so the lowest value, 0.4, is dropped: the
    curve stops at (1, 1/2) and the score is 1/2.
    With a third lesion missed, its 0 is the value dropped and the curves agree: (0, 1/3), (1/2, 1/3),
    (1, 1/3), (1, 2/3); score (1/3 + 1/3 + 4 · 2/3) / 6 = 5/9. An ITC's 0 does the same for the first case."""
    found = [slide(2, [0.9, 0.4], [0.6]), slide(0, [], [0.7])]
    corrected, challenge = (froc_score(found, rules=rules) for rules in ("corrected", "challenge"))
    assert corrected["score"] == pytest.approx(5 / 6)
    assert corrected["curve"]["fp_per_slide"] == [0, 0, 0.5, 1, 1]
    assert corrected["curve"]["sensitivity"] == [0, 0.5, 0.5, 0.5, 1]
    assert challenge["score"] == pytest.approx(1 / 2) and challenge["rules"] == "challenge"
    assert challenge["curve"]["threshold"][1:] == pytest.approx([0.9, 0.7, 0.6])
    missed = [slide(3, [0.9, 0.4], [0.6]), slide(0, [], [0.7])]
    for rules in ("corrected", "challenge"):
        fp_rate, sensitivity, _ = froc_curve(missed, rules=rules)
        np.testing.assert_allclose(fp_rate, [0, 0, 0.5, 1, 1])
        np.testing.assert_allclose(sensitivity, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
        assert froc_score(missed, rules=rules)["score"] == pytest.approx(5 / 9)
    with_itc = [slide(2, [0.9, 0.4], [0.6], itc=1), slide(0, [], [0.7])]
    assert froc_score(with_itc, rules="challenge")["score"] == pytest.approx(5 / 6)


def test_challenge_scores_are_float32_need_a_positive_probability_and_match_by_integer_division():
    """One slide, one lesion on the second pixel (x 32-63) of a 32-px mask row. Detections: at x = 31 (pixel
    0, a false positive at 0.1), at x = 63 (a hit at 0.7) and at x = 32 (a hit at 0, which the challenge does
    not count), and a false positive at exactly 0.7.

    Challenge: the lesion scores float32(0.7) = 0.69999998..., just below the FP's 0.7, and scores compare in
    float32, so both thresholds (0.7, 0.69999998; 0.1 is dropped) give (1, 1): sensitivity 1/4, 1/2, then 1;
    score (1/4 + 1/2 + 4) / 6 = 19/24. Compared in float64 the 0.7 point would be (1, 0) and the score 4/6.
    Corrected: thresholds 0.7 → (1, 1), 0.1 → (2, 1), 0 → (2, 1): the same 19/24."""
    lesions = Lesions(np.array([[0, 1]]), (0, 0), 32.0, np.array([False]))
    x, y = np.array([31.0, 63.0, 32.0, 100.0]), np.array([5.0, 5.0, 5.0, 5.0])
    probability = np.array([0.1, 0.7, 0.0, 0.7])
    challenge = match_detections(lesions, x, y, probability, rules="challenge")
    assert challenge == slide(1, [0.7], [0.1, 0.7])
    assert match_detections(lesions, x[2:3], y[2:3], probability[2:3], rules="challenge")["hits"] == []
    assert match_detections(lesions, x, y, probability, rules="corrected") == slide(1, [0.7], [0.1, 0.7])
    fp_rate, sensitivity, thresholds = froc_curve([challenge], rules="challenge")
    np.testing.assert_allclose(thresholds, [np.inf, 0.7, np.float32(0.7)])
    np.testing.assert_allclose(np.c_[fp_rate, sensitivity], [[0, 0], [1, 1], [1, 1]])
    assert froc_score([challenge], rules="challenge")["score"] == pytest.approx(19 / 24)
    corrected = match_detections(lesions, x, y, probability, rules="corrected")
    assert froc_score([corrected], rules="corrected")["score"] == pytest.approx(19 / 24)


MPP0 = 0.5  # µm per level-0 pixel of the slides below; their geometry is in µm
SIZE0 = (16000, 16000)  # 8 × 8 mm


def box_um(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float) / MPP0


def disc_um(cx, cy, diameter, n=64):
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + diameter / 2 * np.cos(angle), cy + diameter / 2 * np.sin(angle)], 1) / MPP0


def evaluate(rings, detections_um, rules):
    found = find_lesions(TumourRegions(rings), SIZE0, MPP0, rules=rules)
    x, y, p = np.array(detections_um, float).reshape(-1, 3).T
    return match_detections(found, x / MPP0, y / MPP0, p, rules=rules)


def test_two_slides_worked_out_under_both_rule_sets():
    """A tumour slide at 0.5 µm/px: A, a 1 mm square; D, a 300 µm disc; P1 and P2, 400 µm squares 100 µm
    apart. The challenge counts µm at 0.243 µm/px on a mask of 32 level-0 px (16 µm here): lesions grow by
    4.8 px = 77 µm and ITC are below 35.4 px = 566 µm. The corrected rules grow them by 37.5 µm, ITC below
    275 µm.
    - challenge: D grows to about 28 px, ITC; P1 and P2 grow across their 6-px gap into one lesion P. Two
      lesions to find (A, P) and one ITC.
    - corrected: D grows to 375 µm, not ITC; P1 and P2 stay apart (100 µm > 2 × 37.5 µm). Four lesions.
    Detections: A at 0.9, D at 0.8, P1 at 0.6, nothing on P2, an FP at 0.7; a negative slide, an FP at 0.3.
    - challenge: scores A 0.9, P 0.6 (D's 0.8 falls in an ITC: ignored) and 0 for the ITC, which is the
      value dropped. Thresholds 0.9 → (0, 1/2), 0.7 → (1/2, 1/2), 0.6 → (1/2, 1), 0.3 → (1, 1).
      Sensitivity 1/2 at 1/4 FP per slide, 1 from 1/2 on: score (1/2 + 5) / 6 = 11/12.
    - corrected: 0.9 → (0, 1/4), 0.8 → (0, 1/2), 0.7 → (1/2, 1/2), 0.6 → (1/2, 3/4), 0.3 → (1, 3/4).
      Sensitivity 1/2 at 1/4, 3/4 from 1/2 on: score (1/2 + 5 · 3/4) / 6 = 17/24."""
    rings = [
        box_um(1000, 1000, 2000, 2000),
        disc_um(4000, 1500, 300),
        box_um(1000, 3000, 1400, 3400),
        box_um(1500, 3000, 1900, 3400),
    ]
    detections = [(1500, 1500, 0.9), (4000, 1500, 0.8), (1200, 3200, 0.6), (6000, 6000, 0.7)]
    challenge = evaluate(rings, detections, "challenge")
    assert challenge == slide(2, [0.9, 0.6], [0.7], itc=1)
    corrected = evaluate(rings, detections, "corrected")
    assert corrected == slide(4, [0.9, 0.8, 0.6], [0.7])
    results = {}
    for rules, tumour in (("challenge", challenge), ("corrected", corrected)):
        results[rules] = froc_score([tumour, evaluate([], [(500, 500, 0.3)], rules)], rules=rules)
    assert results["challenge"]["score"] == pytest.approx(11 / 12)
    assert list(results["challenge"]["sensitivity_at"].values()) == pytest.approx([0.5, 1, 1, 1, 1, 1])
    assert results["corrected"]["score"] == pytest.approx(17 / 24)
    assert list(results["corrected"]["sensitivity_at"].values()) == pytest.approx([0.5, *[0.75] * 5])


L0_MPP = 0.243  # the challenge's slides: the rule sets' masks have the same pixels here
MASK_SIZE = (4096, 4096)  # level 0 (width, height): a 1 mm square
MASK_RINGS = [
    np.array([[500.5, 600.5], [2300.5, 600.5], [2300.5, 2000.5], [500.5, 2000.5]]),  # 437 × 340 µm
    np.array([[3200.5 + 150 * np.cos(a), 3000.5 + 150 * np.sin(a)] for a in np.linspace(0, 6.28, 40)]),  # ITC
]
MASK_DETECTIONS = (
    np.array([1400.0, 3200.0, 3900.0, 800.0]),  # in the square, the ITC, far away, in the square
    np.array([1300.0, 3000.0, 300.0, 700.0]),
    np.array([0.8, 0.9, 0.4, 0.6]),
)


@functools.cache
def mask_level(level: int) -> np.ndarray:
    """A level of the mask ASAP would make of ``MASK_RINGS``: at level 0, 255 where a pixel's integer
    coordinates are inside a polygon (AnnotationToMask); above, the top-left pixel of each 2 × 2 below."""
    mask = np.zeros(MASK_SIZE[::-1], np.uint8)
    for ring in MASK_RINGS:
        mask[fill_polygon(ring[:, 1], ring[:, 0], mask.shape)] = 255
    return mask[:: 2**level, :: 2**level]


def write_challenge_mask(path, reduced: bool) -> None:
    """The mask's levels 0-6, tiled, a page a level: marked as reduced images (ASAP since 2017) or plain pages
    (the Camelyon16 masks, 2016)."""
    with tifffile.TiffWriter(path) as tif:
        for level in range(7):
            tif.write(
                mask_level(level), tile=(256, 256), compression="zlib", subfiletype=int(reduced and level > 0)
            )


@pytest.mark.parametrize("reduced", [False, True])
def test_a_challenge_mask_tiff_is_evaluated_as_its_polygons(tmp_path, reduced):
    """The mask TIFF's level 5 holds exactly the challenge's rasterisation of its polygons (the level-0 point
    at each pixel's top-left corner), so lesions and matches agree; by the corrected rules the mask is read as
    outlines, which agree with the polygons on the lesions and on detections away from their edges. A PNG
    mask (8 level-0 px a pixel) is sampled at those corners and agrees too."""
    path = tmp_path / "Tumor_001_Mask.tif"
    write_challenge_mask(path, reduced)
    polygons = TumourRegions(MASK_RINGS)
    expected = find_lesions(polygons, MASK_SIZE, L0_MPP, rules="challenge")
    assert expected.itc.tolist() == [False, True]
    from_tiff = read_mask_lesions(path, MASK_SIZE)
    np.testing.assert_array_equal(from_tiff.labels, expected.labels)
    assert (from_tiff.origin, from_tiff.downsample) == (expected.origin, 32)
    assert from_tiff.itc.tolist() == [False, True]
    assert match_detections(from_tiff, *MASK_DETECTIONS) == slide(1, [0.8], [0.4], itc=1)

    Image.fromarray(mask_level(3)).save(tmp_path / "Tumor_001_mask.png")
    from_png = read_mask_lesions(tmp_path / "Tumor_001_mask.png", MASK_SIZE)
    np.testing.assert_array_equal(from_png.labels, expected.labels)

    for max_pixels in (64_000_000, 1_000_000):  # level 0, or level 2 (1024²) of either layout
        outlines = read_mask(path, slide_size=MASK_SIZE, max_pixels=max_pixels)
        found = find_lesions(outlines, MASK_SIZE, L0_MPP, rules="corrected")
        assert found.itc.tolist() == [False, True]
        matched = match_detections(found, *MASK_DETECTIONS, rules="corrected")
        assert matched == slide(1, [0.8], [0.4], itc=1)
        reference = find_lesions(polygons, MASK_SIZE, L0_MPP, rules="corrected")
        assert match_detections(reference, *MASK_DETECTIONS, rules="corrected") == matched


def test_a_mask_without_255_is_refused_by_the_challenge_rules(tmp_path):
    """The script measures the distance to pixels of 255: a 0/1 mask would hold no tumour for it."""
    mask = np.zeros((128, 128), np.uint8)
    mask[10:50, 10:50] = 1
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    with pytest.raises(InputError, match="no pixel is 255"):
        read_mask_lesions(tmp_path / "s_mask.png", (4096, 4096))
    assert len(read_mask(tmp_path / "s_mask.png", downsample=32).tumour) == 1  # the corrected rules take it


def test_detection_csv_round_trip(tmp_path):
    """``probability,x,y`` a line, no header, whole level-0 pixels (the one holding the point)."""
    probability = np.array([0.9, float(np.float32(0.7)), 1 / 3])
    path = write_detections_csv(tmp_path / "Tumor_001.csv", [12.7, 0.0, 99.5], [34.2, 5.0, 7.0], probability)
    assert path.read_text() == f"0.9,12,34\n{float(np.float32(0.7))!r},0,5\n{1 / 3!r},99,7\n"
    x, y, read_probability = read_detections_csv(path)
    assert x.tolist() == [12, 0, 99] and y.tolist() == [34, 5, 7]
    assert read_probability.tolist() == probability.tolist()  # exactly
    path.write_text("0.5,1,2\n\n0.25,3,4\n")
    assert read_detections_csv(path)[2].tolist() == [0.5, 0.25]
    assert [a.size for a in read_detections_csv(write_detections_csv(path, [], [], []))] == [0, 0, 0]
    for bad, line in (("probability,x,y\n0.5,1,2\n", 1), ("0.5,1,2\n0.5,1.5,2\n", 2), ("0.5,1\n", 1)):
        path.write_text(bad)
        with pytest.raises(InputError, match=f"line {line}: expected probability,x,y"):
            read_detections_csv(path)


GRID = PatchGrid(width0=4096, height0=4096, mpp0=L0_MPP, target_mpp=L0_MPP, patch_size=256, stride=256)


def write_heatmap(folder, stem, *cells) -> None:
    """A 16 × 16 heatmap of 256-px cells, 0.05 but for ``cells``: (rows, cols, probability)."""
    tumour = np.full(GRID.shape, 0.05, np.float32)
    for rows, cols, value in cells:
        tumour[rows, cols] = value
    writer = HeatmapWriter(
        folder / f"{stem}.zarr", GRID, ["normal", "tumour"], 16, heatmap_record(GRID, stem)
    )
    writer.write_tissue(np.ones(GRID.shape, bool))
    writer.write_block(Block(0, 0, *GRID.shape), np.stack([1 - tumour, tumour]))
    writer.finalise()


def test_wsi_eval_by_the_challenge_rules_exports_and_reads_its_detections(tmp_path, capsys):
    """Tumor_001 (the mask above: a square lesion and an ITC) and Normal_001 (no truth file). Detections,
    one per region at its first highest cell's centre (256·col + 128): the square's cells (rows 3-6, cols 3-7)
    at 0.5 → (896, 896), a hit; cell (11, 12) at 0.95 → (3200, 2944), in the ITC: ignored; cell (14, 1) at 0.6
    → (384, 3712), an FP; Normal_001's cell (0, 15) at 0.3 → (3968, 128), an FP.
    Lesion scores 0.5 and the ITC's 0 (dropped): thresholds 0.6 → (1/2, 0), 0.5 → (1/2, 1), 0.3 → (1, 1).
    Sensitivity 0 at 1/4 FP per slide, 1 from 1/2 on: score 5/6, by either rule set at 0.243 µm/px.
    Raising the hit to 0.8 in the exported CSV: 0.8 → (0, 1) first, and the score is 1."""
    heatmaps, truth, exported = tmp_path / "heatmaps", tmp_path / "truth", tmp_path / "detections"
    truth.mkdir()
    Image.fromarray(mask_level(3)).save(truth / "Tumor_001_mask.png")  # the TIFF's outlines are slow to read
    write_heatmap(heatmaps, "Tumor_001", (slice(3, 7), slice(3, 8), 0.5), (11, 12, 0.95), (14, 1, 0.6))
    write_heatmap(heatmaps, "Normal_001", (0, 15, 0.3))
    args = ["--heatmaps", heatmaps, "--truth", truth, "--missing-truth", "negative", "-q"]

    def evaluate(*more) -> dict:
        assert main([*map(str, args), *map(str, more), "--json", str(tmp_path / "r.json")]) == 0
        capsys.readouterr()
        return json.loads((tmp_path / "r.json").read_text())

    results = evaluate("--export-detections", exported)
    assert (
        results["settings"]["froc_rules"] == "challenge"
        and results["summary"]["froc"]["rules"] == "challenge"
    )
    tumour = next(slide for slide in results["slides"] if slide["slide"] == "Tumor_001")
    assert tumour["lesion_detection"] == {"lesions": 1, "itc": 1, "hits": [0.5], "fps": [pytest.approx(0.6)]}
    assert results["summary"]["froc"]["score"] == pytest.approx(5 / 6)
    x, y, probability = read_detections_csv(exported / "Tumor_001.csv")
    assert np.c_[x, y].tolist() == [[896, 896], [3200, 2944], [384, 3712]]
    assert probability.tolist() == [0.5, float(np.float32(0.95)), float(np.float32(0.6))]
    assert read_detections_csv(exported / "Normal_001.csv")[0].tolist() == [3968]
    assert evaluate("--froc-rules", "corrected")["summary"]["froc"]["score"] == pytest.approx(5 / 6)

    write_detections_csv(exported / "Tumor_001.csv", x, y, [0.8, *probability[1:]])
    results = evaluate("--detections", exported)
    assert results["summary"]["froc"]["score"] == pytest.approx(1.0)
    assert results["settings"]["detections"] == str(exported)
    (exported / "Normal_001.csv").unlink()
    assert main([*map(str, args), "--detections", str(exported)]) == 2
    assert "Normal_001.csv: cannot be read" in capsys.readouterr().err
