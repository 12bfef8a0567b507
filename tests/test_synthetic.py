"""The synthetic VIS generator: determinism, YouTube-VIS layout, and each property the data must have."""

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from vis_core.cli import main as vis_main
from vis_core.data.shapes import CATEGORY_TEXTURES, SHAPE_NAMES, TEXTURES, random_appearance, rasterize, texture_colors
from vis_core.data.synthetic import (
    DEFAULT_SHAPES,
    OCCLUSION_NO_MAX,
    OCCLUSION_SEVERE_MIN,
    _camera_path,
    _simulate,
    make_config,
    plan_video,
    render_frames,
    render_video,
    write_coco,
    write_split,
)
from vis_core.data.ytvis import load_annotations

TINY = {"height": 64, "width": 96, "frames": (8, 12)}
# every ovis video gets a crossing twin pair and (up to) two hider pairs
SCRIPTED = make_config("ovis", height=72, width=120, frames=(16, 20), twin_prob=1.0, hider_prob=1.0)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ovis_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ovis")
    write_split(out, make_config("ovis", **TINY), "train", 4, seed=3)
    return out


@pytest.fixture(scope="module")
def scripted_videos():
    return [render_video(SCRIPTED, 0, i) for i in range(4)]


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tmp_path, ovis_dir):
    cfg = make_config("ovis", **TINY)
    write_split(tmp_path / "a", cfg, "train", 4, seed=3, workers=2)
    assert _files(tmp_path / "a" / "train") == _files(ovis_dir / "train")
    write_split(tmp_path / "b", cfg, "train", 4, seed=4)
    other = _files(tmp_path / "b" / "train")
    assert other["instances.json"] != _files(ovis_dir / "train")["instances.json"]
    # no temp directory is left behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["train"]


def test_video_depends_only_on_seed_split_and_index():
    cfg = make_config("ytvis", **TINY)
    a, b = render_video(cfg, 7, 2), render_video(cfg, 7, 2)
    assert np.array_equal(a.frames, b.frames)
    assert a.masks.keys() == b.masks.keys() and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not np.array_equal(render_video(cfg, 7, 2, split="valid").frames[:1], a.frames[:1])
    assert not np.array_equal(render_video(cfg, 7, 3).frames[:1], a.frames[:1])


# ---------------------------------------------------------------------------------------------- json layer
def test_split_layout_loads_with_json_layer_and_plain_pycocotools(ovis_dir):
    root = ovis_dir / "train"
    ann = load_annotations(root / "instances.json")
    assert len(ann.videos) == 4 and len(ann.categories) == len(DEFAULT_SHAPES) == 5
    cfg = make_config("ovis", **TINY)
    standard = {
        "id",
        "video_id",
        "category_id",
        "iscrowd",
        "length",
        "segmentations",
        "areas",
        "bboxes",
        "occlusion",
    }
    for vid, video in ann.videos.items():
        rendered = render_video(cfg, 3, vid - 1, "train")
        assert video["length"] == rendered.length == len(video["file_names"])
        for name in video["file_names"]:
            assert (root / "JPEGImages" / name).is_file()
        anns = ann.anns_by_video[vid]
        assert len(anns) == len(rendered.masks)
        for a, inst in zip(anns, sorted(rendered.masks), strict=True):
            assert set(a) == standard
            assert a["category_id"] == rendered.categories[inst]
            for t, seg in enumerate(a["segmentations"]):
                truth = rendered.masks[inst][t]
                if seg is None:
                    assert not truth.any()
                    assert a["areas"][t] is None and a["bboxes"][t] is None and a["occlusion"][t] is None
                    continue
                decoded = mask_util.decode({"size": seg["size"], "counts": seg["counts"].encode()})
                assert np.array_equal(decoded.astype(bool), truth)
                assert a["areas"][t] == int(truth.sum())
                ys, xs = np.nonzero(truth)
                assert a["bboxes"][t] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]
                assert a["occlusion"][t] == rendered.occlusion[inst][t]


def test_ytvis_preset_has_no_occlusion_field(tmp_path):
    path = write_split(tmp_path, make_config("ytvis", **TINY), "valid", 2, seed=0)
    data = json.loads(path.read_text())
    assert data["annotations"] and all("occlusion" not in a for a in data["annotations"])
    assert (tmp_path / "valid" / "JPEGImages" / data["videos"][0]["file_names"][0]).is_file()


def test_coco_image_set_loads_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    path = write_coco(tmp_path, make_config("ytvis", **TINY), 6, seed=1)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == len(DEFAULT_SHAPES)
    for a in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(a)
        assert m.sum() == a["area"] > 0
        img = coco.loadImgs(a["image_id"])[0]
        assert m.shape == (img["height"], img["width"])
        assert (path.parent / "images" / img["file_name"]).is_file()


def test_cli_synth_and_validate(tmp_path, capsys):
    out = tmp_path / "d"
    args = [
        "data",
        "synth",
        "--preset",
        "long",
        "--out",
        str(out),
        "--videos",
        "1",
        "--valid-videos",
        "1",
        "--height",
        "48",
        "--width",
        "64",
        "--frames",
        "20",
        "24",
    ]
    assert vis_main(args) == 0
    assert vis_main(["data", "validate", str(out / "valid" / "instances.json")]) == 0
    out_text = capsys.readouterr().out
    report = json.loads(out_text[out_text.index("{") :])
    assert report["videos"] == 1 and 20 <= report["frames"] <= 24
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"videos": [{"id": 1, "height": 4, "width": 4}], "categories": []}))
    assert vis_main(["data", "validate", str(bad)]) == 1
    assert "bad.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vis_main(["data", "synth", "--out", str(out)] + ["--preset"])


def test_unknown_preset_or_field_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        make_config("kitti")
    with pytest.raises(ValueError, match="colour"):
        make_config("ytvis", colour=3)


# --------------------------------------------------------------------------------------------- properties
def _in_frame(shape, cx, cy, s, angle, h, w):
    full = np.zeros((h, w), dtype=bool)
    (y0, y1, x0, x1), m, _, _ = rasterize(shape, cx, cy, s, angle, h, w)
    full[y0:y1, x0:x1] = m
    return full


def test_categories_are_told_apart_by_shape():
    # a template matcher that sees only the mask (best IoU over rotations and scales) recovers the category of
    # randomly posed instances: the outline alone identifies it
    r = 11.0
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    scales = (0.85, 0.92, 1.0, 1.08, 1.16)
    bank = np.stack(
        [
            np.stack([_in_frame(a, 20, 20, r * s, th, 40, 40) for s in scales for th in angles])
            for a in SHAPE_NAMES
        ]
    ).reshape(len(SHAPE_NAMES), -1, 1600)
    rng = np.random.default_rng(0)
    for k, b in enumerate(SHAPE_NAMES):
        for _ in range(4):
            q = _in_frame(
                b, 20.3, 19.6, r * rng.uniform(0.85, 1.15), rng.uniform(0, 2 * np.pi), 40, 40
            ).ravel()
            iou = (bank & q).sum(-1) / (bank | q).sum(-1)
            assert iou.max(1).argmax() == k, (b, dict(zip(SHAPE_NAMES, iou.max(1).round(2), strict=True)))


def _mean_hue_histogram(app) -> np.ndarray:
    """12-bin hue histogram of an instance's rendered texture (a unit-disk patch)."""
    import colorsys

    g = np.linspace(-0.9, 0.9, 24)
    u, v = np.meshgrid(g, g)
    rgb = texture_colors(app, u, v).reshape(-1, 3) / 255.0
    hues = np.array([colorsys.rgb_to_hsv(*c)[0] for c in rgb])
    return np.bincount((hues * 12).astype(int) % 12, minlength=12) / len(hues)


def test_categories_have_a_typical_look_with_variation():
    # instances of one category share a hue family and a texture (a colour-histogram nearest-centroid classifier
    # recovers the category), yet no two instances look the same and some are atypical
    rng = np.random.default_rng(0)
    cfg = make_config("ovis", **TINY)
    assert cfg.category_looks == 0.9
    feats, labels, looks = [], [], []
    for i in range(40):
        v = render_video(cfg, 2, i)
        for k, c in v.categories.items():
            feats.append(_mean_hue_histogram(v.appearances[k]))
            labels.append(c)
            looks.append(v.appearances[k])
    X, y = np.array(feats), np.array(labels)
    half = len(y) // 2
    cents = {c: X[:half][y[:half] == c].mean(0) for c in set(y[:half])}
    pred = np.array([min(cents, key=lambda c: ((x - cents[c]) ** 2).sum()) for x in X[half:]])
    assert (pred == y[half:]).mean() > 0.75, (pred == y[half:]).mean()
    # per-instance variation (only the scripted twins share a look)
    assert len({a.color1 for a in looks}) > 0.8 * len(looks)
    typical = [a.texture == CATEGORY_TEXTURES[c - 1] for a, c in zip(looks, y, strict=True)]
    assert 0.8 < np.mean(typical) < 1.0  # atypical looks exist (random texture, sometimes the same by chance)
    # with category_looks=0 the look carries no category information: textures are spread over categories
    rand = make_config("ovis", **TINY, category_looks=0.0)
    by_cat = {}
    for i in range(20):
        v = render_video(rand, 2, i)
        for k, c in v.categories.items():
            by_cat.setdefault(c, set()).add(v.appearances[k].texture)
    assert sum(len(t) > 1 for t in by_cat.values()) >= 5
    assert {random_appearance(rng).texture for _ in range(200)} == set(TEXTURES)


def test_any_subset_of_frames_renders_as_in_the_whole_video():
    cfg = make_config("ovis", **TINY)
    video = render_video(cfg, 5, 1)
    plan = plan_video(cfg, 5, 1)
    frames, visible, full_area = render_frames(plan, [video.length - 1, 0])
    assert np.array_equal(frames[0], video.frames[-1]) and np.array_equal(frames[1], video.frames[0])
    for inst in sorted(video.masks):
        # ids are 1..N in planning order (never-visible instances dropped): compare through the areas
        assert video.full_area[inst][0] in full_area[:, 1]


def test_motion_is_smooth_and_objects_scale_and_rotate():
    cfg = make_config(
        "ytvis",
        height=96,
        width=160,
        frames=(30, 30),
        objects=(4, 4),
        camera_jitter=0,
        twin_prob=0.0,
        hider_prob=0.0,
    )
    vmax = cfg.speed[1] * 160
    cos, n_scaling, n_rotating = [], 0, 0
    for i in range(3):
        v = render_video(cfg, 0, i)
        for k in v.centers:
            d = np.diff(v.centers[k], axis=0)
            assert np.hypot(*d.T).max() <= vmax + 1e-6  # speed is bounded
            a, b = d[:-1], d[1:]
            cos += list((a * b).sum(1) / np.maximum(np.hypot(*a.T) * np.hypot(*b.T), 1e-9))
            n_scaling += np.ptp(v.radii[k]) / v.radii[k].mean() > 0.05
            n_rotating += np.ptp(v.angles[k]) > 0.1
    # velocity persists from frame to frame (cosine of successive steps), bounces included
    assert np.median(cos) > 0.95
    assert n_scaling >= 4 and n_rotating >= 6


def test_points_bounce_off_the_bounds():
    rng = np.random.default_rng(0)
    path = _simulate(rng, (90.0, 50.0), (3.0, 0.0), 40, (10, 100, 10, 90), (2.0, 4.0), 0.0, (160, 96))
    assert path[:, 0].max() <= 100 and path[:, 0].min() >= 10
    x = path[:, 0]
    assert x[3] < x[2] or x[4] < x[3]  # turned around at x = 100 within a few frames


def test_objects_enter_leave_and_reenter():
    cfg = make_config("long", **{**TINY, "frames": (120, 140)})
    events, entering, leaving = [], 0, 0
    for i in range(3):
        v = render_video(cfg, 0, i)
        events += [e for e in v.events if e["kind"] == "reentry"]
        for k, m in v.masks.items():
            shown = m.reshape(v.length, -1).any(1)
            entering += (not shown[0]) and v.full_area[k][0] == 0
            leaving += (not shown[-1]) and v.full_area[k][-1] == 0
            for e in (e for e in v.events if e["kind"] == "reentry" and e["instance"] == k):
                assert v.full_area[k][e["left"]] == 0 and v.full_area[k][e["back"]] > 0
                assert v.full_area[k][e["left"] - 1] > 0
    assert len(events) >= 3 and entering >= 1 and leaving >= 1


def test_full_occlusion_and_reappearance(scripted_videos):
    found = 0
    for v in scripted_videos:
        for e in (e for e in v.events if e["kind"] == "full_occlusion"):
            k, t0, t1 = e["instance"], e["start"], e["end"]
            m = v.masks[k]
            assert not m[t0 : t1 + 1].any()
            assert (v.full_area[k][t0 : t1 + 1] >= 4).all()  # inside the frame, but covered
            assert v.occlusion[k][t0] is None
            if e["reappears"] and m[:t0].any():
                found += 1
                assert m[t1 + 1 :].any()
    assert found >= 3
    # hider pairs: the occluder is in front of the object it hides
    for v in scripted_videos:
        for e in (e for e in v.events if e["kind"] == "hider"):
            hidden, occluder = e["instances"]
            assert v.depth[occluder] > v.depth[hidden]


def test_identical_looking_twins_cross_paths(scripted_videos):
    crossings = 0
    for v in scripted_videos:
        for e in (e for e in v.events if e["kind"] == "crossing"):
            a, b, t = *e["instances"], e["frame"]
            assert v.categories[a] == v.categories[b]
            assert v.appearances[a] == v.appearances[b]
            assert np.array_equal(v.radii[a], v.radii[b]) and np.array_equal(v.angles[a], v.angles[b])
            # same place at the crossing frame, where the front twin hides the back one completely
            assert np.allclose(v.centers[a][t], v.centers[b][t])
            assert not v.masks[a][t].any() and v.masks[b][t].any()
            # they pass through each other: the offset between them flips direction
            k = min(3, t, v.length - 1 - t)
            before, after = (
                v.centers[a][t - k] - v.centers[b][t - k],
                v.centers[a][t + k] - v.centers[b][t + k],
            )
            assert (before * after).sum() < 0
            both = [s for s in range(v.length) if v.masks[a][s].any() and v.masks[b][s].any()]
            assert any(s < t for s in both) and any(s > t for s in both)
            crossings += 1
    assert crossings == len(scripted_videos)


def test_visible_masks_follow_depth_order(scripted_videos):
    for v in scripted_videos:
        stack = np.stack([v.masks[k] for k in sorted(v.masks)])
        assert stack.sum(0).max() <= 1  # visible masks never overlap


def test_ovis_occlusion_labels_follow_the_stated_thresholds():
    cfg = make_config("ovis", **TINY)
    counts = Counter()
    for i in range(4):
        v = render_video(cfg, 0, i)
        for k, labels in v.occlusion.items():
            frac = v.occluded_fraction[k]
            for t, lab in enumerate(labels):
                counts[lab] += 1
                if lab is None:
                    assert not v.masks[k][t].any() and np.isnan(frac[t])
                    continue
                expected = (
                    "no_occlusion"
                    if frac[t] < OCCLUSION_NO_MAX
                    else "slight_occlusion"
                    if frac[t] < OCCLUSION_SEVERE_MIN
                    else "severe_occlusion"
                )
                assert lab == expected
                assert np.isclose(frac[t], 1 - v.masks[k][t].sum() / v.full_area[k][t])
    assert all(counts[x] > 0 for x in ("no_occlusion", "slight_occlusion", "severe_occlusion")), counts


def test_presets_have_the_stated_sizes():
    for name, frames, objects in (
        ("ytvis", (20, 36), (1, 4)),
        ("ovis", (20, 36), (2, 5)),
        ("long", (150, 600), (1, 5)),
        ("images", (1, 1), (2, 8)),
    ):
        cfg = make_config(name)
        assert (cfg.frames, cfg.objects, cfg.height, cfg.width) == (frames, objects, 96, 160)
    v = render_video("ovis", 0, 0)
    assert v.frames.shape[1:] == (96, 160, 3) and 20 <= v.length <= 36 and len(v.masks) >= 2


def test_background_is_textured_and_the_camera_shakes():
    v = render_video(make_config("ytvis", **TINY), 0, 0)
    fg = np.zeros(v.frames.shape[:3], dtype=bool)
    for m in v.masks.values():
        fg |= m
    bg = v.frames[~fg].astype(float)
    assert bg.std(0).mean() > 10  # not a flat colour
    cam = _camera_path(np.random.default_rng(0), 200, 2)
    assert np.abs(cam).max() == 2 and len({tuple(c) for c in cam}) > 5
