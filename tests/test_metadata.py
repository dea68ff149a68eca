"""The heatmap's metadata record: one versioned schema, checked on write and read; heatmaps of version 1
(written by the code before the record, ``tests/fixtures/heatmap_v1``), version 2 (one model, before
ensembles and the models' sources, ``tests/fixtures/heatmap_v2``) and version 4 (before JPEG scaling,
``tests/fixtures/heatmap_v4``) read, kept, resumed and migrated; those of version 5 refused where the read
rule has since moved their patches' reads."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_pipeline import InputError, ScoreOptions, read_heatmap, score_slides
from wsi_pipeline.model.sources import ModelSourceInfo
from wsi_pipeline.store.heatmap import META_KEY, HeatmapWriter
from wsi_pipeline.store.metadata import (
    SCHEMA,
    VERSION,
    HeatmapRecord,
    ModelRecord,
    from_dict,
    migrate,
    parameter_differences,
    to_dict,
)
from wsi_pipeline.tiling.grid import PatchGrid

from .conftest import count_patches, heatmap_record, make_slide

V1 = Path(__file__).parent / "fixtures" / "heatmap_v1"
V2 = Path(__file__).parent / "fixtures" / "heatmap_v2"  # the same slide, scored the same way
V4 = Path(__file__).parent / "fixtures" / "heatmap_v4"  # the same again
SLIDE = V1 / "node.svs"
OPTIONS = ScoreOptions(block_cells=4, engine="torch", tissue_threshold=0.5)  # as the fixtures were scored
PROBE = "centre-colour-probe"
GRID = PatchGrid(width0=9000, height0=7000, mpp0=0.25, target_mpp=0.972, patch_size=96, stride=32)
ABSURD_GRID = {
    **GRID.to_dict(),
    "width0": 10**6,
    "height0": 10**6,
    "target_mpp": 0.25,
    "stride": 1,
}  # 1e12 cells


def stored(store: Path) -> dict:
    """The metadata as the store's attributes hold it."""
    return json.loads((store / "zarr.json").read_text())["attributes"][META_KEY]


def copied(run: str, out: Path, fixtures: Path = V1) -> Path:
    store = out / "node.zarr"
    shutil.copytree(fixtures / run / "node.zarr", store)
    return store


def score(out: Path, client, **options: object) -> object:
    """Score the fixtures' slide as they were (``OPTIONS``, with ``options`` changed)."""
    (result,) = score_slides(
        [SLIDE],
        PROBE,
        out,
        options=replace(OPTIONS, **options),
        client=client,
        show_progress=False,
        reports=None,
    )
    return result


@pytest.mark.parametrize("fixtures", [V1, V2, V4], ids=["v1", "v2", "v4"])
def test_earlier_versions_are_read_as_records(fixtures):
    complete, partial = (read_heatmap(fixtures / run / "node.zarr") for run in ("complete", "partial"))
    assert complete.complete and not partial.complete
    for heatmap in (complete, partial):
        record = heatmap.metadata
        assert isinstance(record, HeatmapRecord) and record.version == VERSION
        assert heatmap.grid == record.grid and heatmap.class_names == ["light", "dark"]
        assert heatmap.probabilities.shape == (2, *record.grid.shape) == (2, 10, 12)
        (model,) = record.models
        assert (model.name, model.engine, record.tta) == (PROBE, "torch", False)
        # the bundled probe is a demonstration model; before version 3, what its card said and the slide's
        # mark were not kept; before version 5, every tile was decoded in full
        known = (model.demonstration, model.intended_use is not None, model.source, record.slide.synthetic)
        assert known == ((True, True, None, False) if fixtures == V4 else (True, False, None, None))
        assert record.slide.jpeg_scaling == "off"
        assert (record.tissue.threshold, record.tissue.mpp, record.block_cells) == (0.5, 8.0, 4)
        assert record.slide.sha256 == "065c96b340c5326be01af45510184d1dc7a1adffe4c8eabe40cffd4bcc18f2a5"
    assert complete.metadata.patches_scored == complete.tissue.sum() == 63
    assert partial.metadata.finished is None and partial.metadata.resumed == ()
    scored = np.isfinite(partial.probabilities[1])
    assert 0 < scored.sum() < partial.tissue.sum()
    np.testing.assert_array_equal(partial.probabilities[:, scored], complete.probabilities[:, scored])


def test_version_1_migrates_exactly():
    old = stored(V1 / "complete" / "node.zarr")
    tissue_keys = ("tissue_threshold", "tissue_mpp", "tissue_min_um2", "tissue_max_hole_um2")
    expected = {
        key: value for key, value in old.items() if key not in (*tissue_keys, "tissue_saturation_threshold")
    }
    del expected["model"]
    expected |= {
        "schema": SCHEMA,
        "version": VERSION,
        "slide": {**old["slide"], "jpeg_scaling": "off", "read_rule": 1},
        "models": [{**old["model"], "demonstration": True}],
        "tissue": {
            "threshold": 0.5,
            "mpp": 8.0,
            "min_um2": 10_000.0,
            "max_hole_um2": 10_000.0,
            "saturation_threshold": old["tissue_saturation_threshold"],
        },
    }
    before = json.dumps(old)
    assert migrate(old) == expected and json.dumps(old) == before  # a copy: the input is left alone
    written = {**expected, "resumed": [], "models": [{**expected["models"][0], "precision": "float32"}]}
    assert to_dict(from_dict(migrate(old))) == written  # written back, nothing lost; float32, as it ran
    assert list(to_dict(from_dict(migrate(old))))[:2] == ["schema", "version"]
    # the oldest: before the engine, TTA, tissue areas, engines and file stamp were recorded
    oldest = {key: value for key, value in old.items() if key not in ("tta", "engines", *tissue_keys[2:])}
    oldest["model"] = {key: value for key, value in old["model"].items() if key != "engine"}
    oldest["slide"] = {key: value for key, value in old["slide"].items() if key not in ("size", "mtime_ns")}
    record = from_dict(migrate(oldest))
    assert (record.models[0].engine, record.tta, record.engines) == ("torch", False, ())
    assert (record.tissue.min_um2, record.tissue.max_hole_um2, record.slide.size) == (None, None, None)
    # what a heatmap's values depend on compares alike across versions
    assert parameter_differences(from_dict(migrate(old)), record) == [
        "tissue min. area 10000.0 in the heatmap, None now",
        "tissue max. hole area 10000.0 in the heatmap, None now",
    ]
    assert parameter_differences(record, from_dict(migrate(old)))[0] == (
        "tissue min. area None in the heatmap, 10000.0 now"
    )
    tissue = replace(record.tissue, threshold=0.6, min_um2=10_000.0, max_hole_um2=10_000.0)
    changed = replace(record, tissue=tissue)
    assert parameter_differences(from_dict(migrate(old)), changed) == [
        "tissue threshold 0.5 in the heatmap, 0.6 now"
    ]


def test_version_2_migrates_exactly():
    old = stored(V2 / "complete" / "node.zarr")
    model = {**old["model"], "demonstration": True}  # the bundled probe, by name
    expected = {key: value for key, value in old.items() if key != "model"}
    slide = {**old["slide"], "jpeg_scaling": "off", "read_rule": 1}
    expected |= {"version": VERSION, "models": [model], "slide": slide}
    assert migrate(old) == expected and list(migrate(old))[:3] == ["schema", "version", "slide"]
    written = {**expected, "models": [{**model, "precision": "float32"}]}
    assert to_dict(from_dict(migrate(old))) == written  # written back, nothing lost; float32, as it ran
    other = {**old, "model": {**old["model"], "name": "my-model"}}
    assert from_dict(migrate(other)).models[0].demonstration is False
    assert from_dict(migrate(old)).model_name == PROBE


def test_version_3_migrates_to_unknown_damage_counts_4_to_no_jpeg_scaling_and_5_to_the_first_read_rule():
    current = changed("slide.read_rule", 2)
    new_fields = ("jpeg_scaling", "read_rule")
    before = {**current, "slide": {k: v for k, v in current["slide"].items() if k not in new_fields}}
    unscaled = {**current, "slide": {**current["slide"], "jpeg_scaling": "off", "read_rule": 1}}
    assert current["slide"]["jpeg_scaling"] == "auto"
    assert migrate({**before, "version": 3}) == migrate({**before, "version": 4}) == unscaled
    assert from_dict(unscaled).unreadable_cells is None
    before_rule = {**current, "slide": {k: v for k, v in current["slide"].items() if k != "read_rule"}}
    first_rule = {**current, "slide": {**current["slide"], "read_rule": 1}}
    assert migrate({**before_rule, "version": 5}) == first_rule
    old = stored(V4 / "partial" / "node.zarr")
    assert old["version"] == 4 and from_dict(migrate(old)).slide.jpeg_scaling == "off"
    assert from_dict(migrate(old)).slide.read_rule == 1


def test_a_record_round_trips_and_leaves_unknown_fields_out():
    record = heatmap_record(GRID)
    written = to_dict(record)
    assert written["schema"] == SCHEMA and written["version"] == VERSION == 6
    assert "finished" not in written and not {"size", "synthetic"} & set(written["slide"])
    assert "source" not in written["models"][0] and written["models"][0]["demonstration"] is False
    assert from_dict(json.loads(json.dumps(written))) == record
    # a downloaded model's source and intended use, an ensemble, a synthetic slide
    spec, weights = "tiatoolbox:resnet18-pcam", "b" * 64
    source = ModelSourceInfo(spec, "TIACentre/w", "a" * 40, ("resnet18-pcam.pth",), weights)
    member = ModelRecord(spec, "/m", weights, "tiatoolbox_cnn", "torch", False, "PCam", source)
    full = replace(record, models=(*record.models, member), slide=replace(record.slide, synthetic=True))
    assert from_dict(json.loads(json.dumps(to_dict(full)))) == full
    assert to_dict(full)["models"][1]["source"]["files"] == ["resnet18-pcam.pth"]
    assert full.model_name == "hand-made + tiatoolbox:resnet18-pcam" and not full.demonstration


def test_a_newer_version_is_refused_and_its_heatmap_left_alone(tmp_path, client):
    store = copied("complete", tmp_path)
    root = zarr.open_group(store, mode="r+")
    root.attrs[META_KEY] = {**to_dict(read_heatmap(store).metadata), "version": VERSION + 1}
    before = (store / "zarr.json").read_bytes()
    with pytest.raises(InputError, match="written by a newer wsi_pipeline") as error:
        read_heatmap(store)
    assert error.value.path == str(store)
    result = score(tmp_path, client)
    assert result.status == "failed" and "written by a newer wsi_pipeline" in result.message
    assert (store / "zarr.json").read_bytes() == before


def valid() -> dict:
    return to_dict(replace(heatmap_record(GRID), complete=True, patches_scored=5, seconds=1.5))


def changed(path: str, value: object) -> dict:
    """``valid()`` with the field at a dotted path set to ``value`` (removed when ``value`` is ``...``)."""
    metadata, *parents, key = [valid(), *path.split(".")]
    inner = metadata
    for parent in parents:
        inner = inner[int(parent)] if isinstance(inner, list) else inner[parent]
    if value is ...:
        del inner[key]
    else:
        inner[key] = value
    return metadata


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("grid.width0", "9000", "grid.width0 must be an integer, not '9000'"),
        ("grid.width0", 10**9, "grid.width0 must be between 1 and 16777216"),
        ("grid.stride", 0, "grid.stride must be at least 1"),
        ("grid.target_mpp", 1e-6, "grid.target_mpp must be between 0.0001 and 10000"),
        ("grid", ABSURD_GRID, "grid must be at most 67108864 cells"),
        ("slide.mpp", float("nan"), "slide.mpp must be a finite number, not nan"),
        ("seconds", float("inf"), "seconds must be a finite number, not inf"),
        ("seconds", 10**400, "seconds must be a finite number"),
        ("seconds", -1.0, "seconds must be not negative"),
        ("slide.sha256", "abc", "slide.sha256 must be 64 hexadecimal digits"),
        ("models.0.weights_sha256", ..., "lacks models[0].weights_sha256"),
        ("models.0.weights_sha256", "abc", "models[0].weights_sha256 must be 64 hexadecimal digits"),
        ("models", [], "models must be at least one model"),
        ("models", {"name": "m"}, "models must be a list"),
        ("models.0.demonstration", "no", "models[0].demonstration must be true or false"),
        ("models.0.source", {"spec": "x"}, "lacks models[0].source.repo"),
        ("slide.synthetic", 1, "slide.synthetic must be true or false, not 1"),
        ("slide.read_rule", 3, "slide.read_rule must be between 1 and 2, not 3"),
        ("slide.read_rule", ..., "lacks slide.read_rule"),
        ("tissue", ..., "lacks tissue"),
        ("tissue.threshold", 2, "tissue.threshold must be between 0 and 1"),
        ("class_names", [], "class_names must be at least one name"),
        ("class_names", "abc", "class_names must be a list"),
        ("class_names", ["a", 1], "class_names[1] must be text"),
        ("complete", "yes", "complete must be true or false"),
        ("block_cells", True, "block_cells must be an integer, not True"),
        ("started", "yesterday", "started must be an ISO 8601 time"),
        ("resumed", ["2026-11-29T00:00:00+00:00", "later"], "resumed must be ISO 8601 times"),
        ("slide", "s.svs", "slide must be an object"),
        ("slide.owner", "me", "unknown field slide.owner"),
        ("notes", "x" * 1000, "unknown field notes"),
        ("version", "2", "version must be a positive integer, not '2'"),
        ("version", 0, "version must be a positive integer"),
        ("schema", "other.heatmap", "schema must be 'wsi_pipeline.heatmap'"),
    ],
)
def test_malformed_metadata_is_an_input_error_naming_the_store_and_field(path, value, message):
    with pytest.raises(InputError, match=r"^h\.zarr: heatmap metadata") as error:
        from_dict(migrate(changed(path, value), "h.zarr"), "h.zarr")
    assert message in str(error.value) and len(str(error.value)) < 200


def test_metadata_of_the_wrong_shape_is_an_input_error():
    for metadata in ([], None, "wsi"):
        with pytest.raises(InputError, match=r"^h\.zarr: heatmap metadata must be an object"):
            migrate(metadata, "h.zarr")
    with pytest.raises(InputError, match="version must be 6, not 1"):
        from_dict({**valid(), "version": 1})


def test_malformed_metadata_in_a_store_and_arrays_it_does_not_describe_are_refused(tmp_path):
    store = copied("partial", tmp_path)
    root = zarr.open_group(store, mode="r+")
    good = stored(store)
    root.attrs[META_KEY] = {**good, "block_cells": -4}
    with pytest.raises(InputError, match=f"^{store}: heatmap metadata: block_cells must be at least 1"):
        read_heatmap(store)
    with pytest.raises(InputError, match="block_cells must be at least 1"):
        HeatmapWriter.reopen(store)
    root.attrs[META_KEY] = {**good, "grid": {**good["grid"], "stride": 48}}
    with pytest.raises(
        InputError, match=r"arrays of shape \(2, 10, 12\) where its metadata says \(2, 19, 24\)"
    ):
        read_heatmap(store)


def test_the_writer_checks_what_it_records(tmp_path):
    with pytest.raises(InputError, match="started must be an ISO 8601 time"):
        HeatmapWriter(
            tmp_path / "h.zarr", GRID, ["normal", "tumour"], 16, replace(heatmap_record(GRID), started="soon")
        )
    writer = HeatmapWriter(tmp_path / "h.zarr", GRID, ["normal", "tumour"], 16, heatmap_record(GRID))
    with pytest.raises(InputError, match="patches_scored must be not negative"):
        writer.record(patches_scored=-1)
    writer.record(resumed=["2026-11-29T00:00:00+00:00"])  # the list form of a field is taken too
    assert read_heatmap(writer.path).metadata.resumed == ("2026-11-29T00:00:00+00:00",)


@pytest.mark.parametrize("fixtures", [V1, V2, V4], ids=["v1", "v2", "v4"])
def test_a_complete_heatmap_of_an_earlier_version_is_kept(tmp_path, client, fixtures):
    store = copied("complete", tmp_path, fixtures)
    before = read_heatmap(store)
    result = score(tmp_path, client)
    assert result.status == "skipped" and "complete heatmap exists" in result.message
    after = read_heatmap(store)
    np.testing.assert_array_equal(after.probabilities, before.probabilities)
    # the slide was hashed (it is not where the heatmap says): its new place is recorded, and the model as
    # found now (same weights), as the current version
    assert stored(store)["version"] == VERSION and after.metadata.slide.path == str(SLIDE.resolve())
    assert after.metadata.slide.synthetic is False  # written before synthetic slides were marked
    assert after.metadata.models[0].intended_use.startswith("Geometry probe")
    now = after.metadata
    assert now == replace(before.metadata, slide=now.slide, models=now.models)
    assert parameter_differences(before.metadata, after.metadata) == []


def same_probabilities(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal but for the last bit of float32 probabilities (whose spacing below 1 is up to 6e-8): the
    fixtures' code computed softmax in torch, this code in float64 (``model.predict.probabilities``); the same
    cells are scored (NaN elsewhere)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=np.finfo(np.float32).eps)


@pytest.mark.parametrize("fixtures", [V1, V2, V4], ids=["v1", "v2", "v4"])
def test_a_partial_heatmap_of_an_earlier_version_is_resumed_to_the_uninterrupted_result(
    tmp_path, client, monkeypatch, fixtures
):
    store = copied("partial", tmp_path / "resumed", fixtures)
    before = read_heatmap(store)
    kept = int(np.isfinite(before.probabilities[1]).sum())
    scored = count_patches(monkeypatch)
    result = score(store.parent, client)
    assert result.status == "ok" and "resumed: 2 of 9 blocks were written" in result.message
    assert sum(scored) == result.patches == before.tissue.sum() - kept  # only the missing blocks
    resumed = read_heatmap(store)
    assert resumed.complete and stored(store)["version"] == VERSION
    assert resumed.metadata.started == before.metadata.started and len(resumed.metadata.resumed) == 1
    assert resumed.metadata.patches_scored == resumed.tissue.sum()
    assert resumed.metadata.slide.jpeg_scaling == "off"  # as the earlier version read it: in full
    fresh = read_heatmap(score(tmp_path / "fresh", client, jpeg_scaling="off").heatmap)
    assert parameter_differences(resumed.metadata, fresh.metadata) == []
    assert (resumed.metadata.slide, resumed.metadata.models) == (fresh.metadata.slide, fresh.metadata.models)
    old = read_heatmap(fixtures / "complete" / "node.zarr")
    for reference in (fresh, old):  # this code's, and the old code's
        same_probabilities(resumed.probabilities, reference.probabilities)
        np.testing.assert_array_equal(resumed.tissue, reference.tissue)


def test_an_earlier_heatmap_is_read_as_it_was_unless_the_options_say_otherwise(tmp_path, client):
    """A heatmap of version 4 or earlier was read without JPEG scaling: resumed so by default (its tissue,
    found at 8 µm/px, differs with scaling), resumed with ``jpeg_scaling="off"``, refused with ``"auto"``."""
    store = copied("partial", tmp_path / "auto", V4)
    refused = score(store.parent, client, jpeg_scaling="auto")
    assert refused.status == "failed" and "JPEG scaling 'off' in the heatmap, 'auto' now" in refused.message
    assert stored(store)["version"] == 4  # left alone
    store = copied("partial", tmp_path / "off", V4)
    assert score(store.parent, client, jpeg_scaling="off").status == "ok"
    same_probabilities(
        read_heatmap(store).probabilities, read_heatmap(V4 / "complete" / "node.zarr").probabilities
    )


def test_a_new_heatmap_records_jpeg_scaling_and_is_resumed_with_it(tmp_path, client):
    """New heatmaps read with JPEG scaling (``auto``); a re-run keeps it so, and ``off`` is refused."""
    first = score(tmp_path, client)
    assert read_heatmap(first.heatmap).metadata.slide.jpeg_scaling == "auto"
    assert score(tmp_path, client).status == "skipped"
    refused = score(tmp_path, client, jpeg_scaling="off")
    assert refused.status == "failed" and "JPEG scaling 'auto' in the heatmap, 'off' now" in refused.message


def test_a_version_5_heatmap_whose_patches_the_read_rule_moved_is_refused(tmp_path, client):
    """Rule 2 moved tiffslide's reads of a level whose downsample is not an integer (here level 1, where a
    0.25 µm/px slide's patches come from): a heatmap version 5 wrote of such a slide is neither resumed (its
    blocks would mix the rules) nor kept. The fixtures' node, whose patches come from level 0, is (its level
    2, at 16.06, is read for its tissue only)."""
    path = tmp_path / "uneven.svs"
    make_slide(path, 2401, 2001, 0.25, [(900.0, 800.0, 1500.0, 1300.0)])  # level 1: 600 × 500 px

    def run(**options: object) -> object:
        (result,) = score_slides(
            [path], PROBE, tmp_path, options=replace(OPTIONS, **options), client=client, show_progress=False
        )
        return result

    store = run().heatmap
    assert read_heatmap(store).metadata.slide.read_rule == 2 and run().status == "skipped"
    as_version_5 = {**stored(store), "version": 5}
    del as_version_5["slide"]["read_rule"]
    for complete in (True, False):
        zarr.open_group(store, mode="r+").attrs[META_KEY] = {**as_version_5, "complete": complete}
        before = (store / "zarr.json").read_bytes()
        refused = run()
        assert refused.status == "failed" and "level read rule 1 in the heatmap, 2 now" in refused.message
        assert (store / "zarr.json").read_bytes() == before
    assert run(overwrite=True).status == "ok" and read_heatmap(store).metadata.slide.read_rule == 2
    openslide = run(backend="openslide", overwrite=True)  # reads as under rule 1
    assert openslide.status == "ok" and read_heatmap(store).metadata.slide.read_rule == 1
