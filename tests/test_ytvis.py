"""YouTube-VIS / OVIS json layer: segmentation round trips and one test per validation error."""

import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util

from vis_core.data import ytvis
from vis_core.data.ytvis import VISFormatError


def _mask(h=6, w=8, box=(1, 2, 3, 4)):
    m = np.zeros((h, w), dtype=np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 1
    return m


def _gt(**overrides):
    m = _mask()
    rle = ytvis.mask_to_rle(m)
    ann = {
        "id": 7, "video_id": 3, "category_id": 1, "iscrowd": 0,
        "segmentations": [rle, None], "areas": [int(m.sum()), None], "bboxes": [[2, 1, 2, 2], None],
        "occlusion": ["slight_occlusion", None],
    }
    ann.update(overrides)
    return {
        "videos": [{"id": 3, "width": 8, "height": 6, "length": 2, "file_names": ["v/0.jpg", "v/1.jpg"]}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "circle", "supercategory": "shape"}],
    }


def test_round_trip_every_segmentation_format():
    m = _mask()
    h, w = m.shape
    str_rle = ytvis.mask_to_rle(m)
    assert isinstance(str_rle["counts"], str) and str_rle["size"] == [h, w]
    # uncompressed RLE with list counts, in column-major order as COCO stores it
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    list_rle = {"size": [h, w], "counts": runs}
    # polygon tracing the box (x from 2 to 4, y from 1 to 3 in pixel-corner coordinates)
    poly = [[2, 1, 4, 1, 4, 3, 2, 3]]
    for seg in (str_rle, list_rle):
        np.testing.assert_array_equal(ytvis.decode_segmentation(seg, h, w), m)
        assert ytvis.rle_area(seg) == 4
        assert ytvis.rle_bbox(seg) == [2.0, 1.0, 2.0, 2.0]
    poly_mask = ytvis.decode_segmentation(poly, h, w)
    assert poly_mask[1:3, 2:4].all() and poly_mask.sum() <= 9
    assert ytvis.decode_segmentation(None, h, w).sum() == 0
    # plain pycocotools decodes what we write
    np.testing.assert_array_equal(mask_util.decode({"size": [h, w], "counts": str_rle["counts"].encode()}), m)
    # batch encoder agrees with the single one
    assert ytvis.masks_to_rles(np.stack([m, 1 - m])) == [str_rle, ytvis.mask_to_rle(1 - m)]


def test_empty_mask_round_trip():
    rle = ytvis.mask_to_rle(np.zeros((4, 5), bool))
    assert ytvis.rle_area(rle) == 0
    assert ytvis.decode_segmentation(rle, 4, 5).sum() == 0


def test_annotations_load_and_index(tmp_path):
    path = ytvis.save_json(_gt(), tmp_path / "gt.json")
    gt = ytvis.load_annotations(path)
    assert gt.video_ids == [3] and gt.category_ids == [1] and gt.video_length(3) == 2
    assert gt.anns_by_video[3][0]["id"] == 7 and gt.has_occlusion()


def test_atomic_writer_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.json"
    ytvis.save_json({"a": 1}, target)
    with pytest.raises(TypeError):
        ytvis.save_json({"a": object()}, target)  # not serialisable
    assert json.loads(target.read_text()) == {"a": 1}  # old content intact
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][0].pop("areas"), "annotations[0] (id 7): missing field 'areas'"),
        (lambda d: d["annotations"][0].update(video_id=99), "annotations[0] (id 7, video_id 99): unknown video_id"),
        (lambda d: d["annotations"][0]["segmentations"].append(None),
         "annotations[0] (id 7, video_id 3): field 'segmentations' has 3 entries, video has 2 frames"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])),
         "annotations[1] (id 7): duplicate annotation id (also annotations[0])"),
        (lambda d: d["annotations"][0].update(category_id=5), "field 'category_id': unknown category 5"),
        (lambda d: d["annotations"][0]["occlusion"].__setitem__(0, "partial"), "occlusion[0] must be one of"),
        (lambda d: d["annotations"][0]["segmentations"][0].update(size=[5, 8]),
         "segmentations[0]: RLE size [5, 8], video is [6, 8]"),
        (lambda d: d["annotations"][0]["areas"].__setitem__(0, float("nan")), "areas[0] must be a non-negative"),
        (lambda d: d["videos"][0].update(height=0), "videos[0] (id 3): field 'height' must be a positive integer"),
        (lambda d: d["videos"].append(dict(d["videos"][0])), "videos[1] (id 3): duplicate video id"),
        (lambda d: d["videos"][0].update(length=3), "field 'file_names' has 2 entries, length is 3"),
        (lambda d: d.pop("categories"), "missing field 'categories'"),
        (lambda d: d["annotations"][0].update(iscrowd="0"), "field 'iscrowd' must be 0 or 1, got '0'"),
        (lambda d: d["annotations"][0]["segmentations"].__setitem__(0, {"size": [6, 8], "counts": [3]}),
         "segmentations[0]: RLE counts sum to 3, expected height*width = 48"),
    ],
)
def test_annotation_errors_name_file_object_and_field(tmp_path, mutate, message):
    data = _gt()
    mutate(data)
    path = ytvis.save_json(data, tmp_path / "gt.json")
    with pytest.raises(VISFormatError) as e:
        ytvis.load_annotations(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"videos": [')
    with pytest.raises(VISFormatError, match=r"bad.json: malformed json"):
        ytvis.load_annotations(bad)
    with pytest.raises(VISFormatError, match="no such file"):
        ytvis.load_annotations(tmp_path / "missing.json")


def _result(**overrides):
    rle = ytvis.mask_to_rle(_mask())
    r = {"video_id": 3, "category_id": 1, "score": 0.9, "segmentations": [rle, None]}
    r.update(overrides)
    return r


@pytest.mark.parametrize(
    "entry, message",
    [
        (_result(segmentations=[None]), "entry 1 (video_id 3): 1 segmentations, video has 2 frames"),
        (_result(video_id=4), "entry 1 (video_id 4): unknown video_id"),
        (_result(score=float("nan")), "field 'score' must be a finite non-negative number, got nan"),
        (_result(score=float("inf")), "got inf"),
        (_result(score=-0.1), "got -0.1"),
        (_result(segmentations=[{"size": [6, 8], "counts": [0, 48]}, None]), "RLE counts must be a compressed string"),
        (_result(segmentations=[ytvis.mask_to_rle(np.zeros((6, 9), bool)), None]),
         "segmentations[0]: mask size [6, 9], video is [6, 8]"),
        ({"video_id": 3, "category_id": 1, "segmentations": [None, None]}, "missing field 'score'"),
    ],
)
def test_results_errors(tmp_path, entry, message):
    gt = ytvis.load_annotations(_gt())
    path = ytvis.save_json([_result(), entry], tmp_path / "results.json")
    with pytest.raises(VISFormatError) as e:
        ytvis.load_results(path, gt)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_results_unknown_category_dropped_with_count():
    gt = ytvis.load_annotations(_gt())
    with pytest.warns(UserWarning, match="dropped 2 result"):
        kept, dropped = ytvis.load_results([_result(), _result(category_id=9), _result(category_id=8)], gt)
    assert dropped == 2 and len(kept) == 1


def test_track_stats():
    rle = ytvis.mask_to_rle(_mask())
    areas, boxes = ytvis.track_stats([rle, None])
    assert areas == [4, None] and boxes == [[2.0, 1.0, 2.0, 2.0], None]


def test_load_json_reads_nan_and_infinity_and_names_bytes_that_are_not_utf8(tmp_path):
    import math

    from vis_core.data.ytvis import load_json

    p = tmp_path / "odd.json"
    p.write_text('[{"score": NaN}, {"score": Infinity}, {"score": -Infinity}, {"x": 1e400}, "\\ud800"]')
    got = load_json(p)
    assert math.isnan(got[0]["score"]) and got[1]["score"] == math.inf and got[2]["score"] == -math.inf
    assert got[3]["x"] == math.inf and got[4] == "\ud800"
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(VISFormatError, match="bad.json: not utf-8"):
        load_json(bad)
