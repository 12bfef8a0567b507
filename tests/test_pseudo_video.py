"""Pseudo videos from COCO-format images: masks stay aligned with images through crops, rotations, resizes and
flips; the rotation sequences stay within +-30 degrees; bad COCO input gets a clear error."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vis_core.data.pseudo_video import PseudoVideoDataset, load_coco_instances
from vis_core.data.synthetic import make_config, write_coco
from vis_core.data.transforms import rotate
from vis_core.data.ytvis import VISFormatError, mask_to_rle

H, W = 60, 90
# annotation id -> its paint colour (all distinct)
COLORS = {
    1: (230, 30, 30),
    2: (30, 220, 40),
    3: (40, 60, 235),
    4: (240, 230, 20),
    5: (230, 40, 230),
    6: (30, 230, 230),
    7: (250, 140, 20),
    8: (140, 60, 250),
}
IMAGE_ANNS = {1: (1, 2, 3), 2: (4, 5), 3: (6, 7, 8)}


def _disk(cy, cx, r):
    yy, xx = np.mgrid[0:H, 0:W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """3 lossless PNG images of pure-colour shapes on black; annotation id k is painted COLORS[k]."""
    root = tmp_path_factory.mktemp("coco")
    layouts = [
        [(_rect(24, 30, 20, 70), 1), (_disk(12, 20, 7), 2), (_disk(45, 60, 9), 3)],  # a long thin bar
        [(_rect(10, 40, 10, 30), 2), (_disk(30, 62, 12), 1)],
        [(_disk(30, 45, 14), 3), (_rect(45, 55, 5, 40), 2), (_rect(5, 12, 55, 85), 1)],
    ]
    images, anns = [], []
    for i, layout in enumerate(layouts):
        img = np.zeros((H, W, 3), dtype=np.uint8)
        for mask, cat in layout:
            aid = len(anns) + 1
            img[mask] = COLORS[aid]
            seg = mask_to_rle(mask)
            if aid == 2:  # one polygon annotation (a square), decoded through the json layer too
                seg = [[14.0, 6.0, 26.0, 6.0, 26.0, 18.0, 14.0, 18.0]]
                img[mask] = 0
                img[6:18, 14:26] = COLORS[aid]
            anns.append(
                {
                    "id": aid,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": 0,
                    "area": int(mask.sum()),
                    "bbox": [0, 0, 1, 1],
                }
            )
        Image.fromarray(img).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": H, "width": W})
    anns.append(
        {
            "id": 99,
            "image_id": 1,
            "category_id": 1,
            "segmentation": mask_to_rle(_rect(0, 5, 0, 5)),
            "iscrowd": 1,
            "area": 25,
            "bbox": [0, 0, 5, 5],
        }
    )
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (1, 2, 3)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, root


def _erode(m: torch.Tensor) -> torch.Tensor:
    return -torch.nn.functional.max_pool2d(-m[None, None].float(), 3, 1, 1)[0, 0] > 0.5


def _check_aligned(item):
    """Every target mask sits on pixels of its own colour, and every visible colour blob has a target."""
    for t, target in enumerate(item["targets"]):
        img = item["images"][t]  # (3, h, w)
        present = dict(zip(target["instance_ids"].tolist(), target["masks"], strict=True))
        for aid in IMAGE_ANNS[item["video_id"]]:
            color = torch.tensor(COLORS[aid], dtype=torch.float32)[:, None, None]
            # on a black background a pixel is alpha * colour, alpha = how much of it the instance covers;
            # masks are resampled as coverage >= 0.5, so the blob of alpha >= 0.5 must coincide with the mask
            alpha = (img * color).sum(0) / (color * color).sum()
            blob = (alpha >= 0.5) & ((img - alpha * color).norm(dim=0) < 30)
            if aid not in present:
                assert blob.sum() < 15, (aid, int(blob.sum()))
                continue
            m = present[aid]
            inner = _erode(m)
            if inner.sum() > 10:
                assert blob[inner].float().mean() > 0.98
            iou = (blob & m).sum() / (blob | m).sum()
            assert iou > 0.9, (aid, float(iou))


@pytest.mark.parametrize("mode", ["crop_pair", "rotate3"])
def test_masks_stay_aligned_with_images(coco, mode):
    path, root = coco
    ds = PseudoVideoDataset(
        path, root, mode=mode, min_sizes=(40, 60, 84), max_size=140, hflip_prob=0.5, crop_prob=1.0, length=9
    )
    for i in range(len(ds)):
        item = ds[i]
        assert item["images"].shape[0] == (2 if mode == "crop_pair" else 3)
        assert item["frame_indices"] == list(range(item["images"].shape[0]))
        _check_aligned(item)


def test_rotation_hand_cases():
    img = torch.zeros(1, 3, 5, 5)
    img[0, :, 2, 4] = 100.0  # right of the centre
    masks = (img[:, :1] > 0).permute(1, 0, 2, 3)  # (1, 1, 5, 5)
    out, m = rotate(img, masks, 90.0)
    assert out[0, 0, 0, 2] == pytest.approx(100.0) and out[0, 0].sum() == pytest.approx(100.0)  # now above
    assert m[0, 0].nonzero().tolist() == [[0, 2]]
    x = torch.rand(2, 3, 7, 7)
    assert torch.allclose(
        rotate(x, torch.zeros(0, 2, 7, 7, dtype=torch.bool), 90.0)[0], torch.rot90(x, 1, (-2, -1)), atol=1e-5
    )


def _orientation(m: torch.Tensor) -> float:
    """Principal-axis angle of a mask in degrees, in (-90, 90]."""
    ys, xs = np.nonzero(m.numpy())
    ys, xs = ys - ys.mean(), xs - xs.mean()
    return float(np.degrees(0.5 * np.arctan2(-2 * (xs * ys).mean(), (xs * xs).mean() - (ys * ys).mean())))


def test_rotation_sequences_stay_within_30_degrees(coco):
    path, root = coco
    ds = PseudoVideoDataset(path, root, mode="rotate3", hflip_prob=0.5, length=1 * 30)
    angles = []
    for i in range(0, 30, 3):  # index % 3 == 0: the image with the horizontal bar (annotation 1)
        item = ds[i]
        for target in item["targets"]:
            bar = target["masks"][target["instance_ids"] == 1]
            if len(bar) and bar.sum() > 100:
                angles.append(_orientation(bar[0]))
    assert len(angles) >= 20
    assert max(abs(a) for a in angles) <= 31.5 and max(abs(a) for a in angles) > 10 and np.std(angles) > 5


def _touches_border(m: torch.Tensor) -> bool:
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_crop_pairs_move_and_zoom_instances(coco):
    path, root = coco
    ds = PseudoVideoDataset(path, root, mode="crop_pair", crop_prob=1.0, hflip_prob=0.0, length=30)
    ratios, moved = [], 0
    for i in range(30):
        t0, t1 = ds[i]["targets"]
        for k, aid in enumerate(t0["instance_ids"].tolist()):
            if aid in t1["instance_ids"].tolist():
                j = t1["instance_ids"].tolist().index(aid)
                if _touches_border(t0["masks"][k]) or _touches_border(t1["masks"][j]):
                    continue  # cut by a crop: its area says nothing about the zoom
                ratios.append(float(t1["masks"][j].sum() / t0["masks"][k].sum()))
                moved += not torch.allclose(t0["boxes"][k], t1["boxes"][j], atol=0.02)
    # crop sides are 0.64..1 of the image, so the zoom between two crops is at most 1 / 0.64^2 in area
    assert max(ratios) < 1 / 0.64**2 + 0.3 and min(ratios) > 0.64**2 - 0.1
    assert len(ratios) > 15 and np.std(ratios) > 0.1 and moved > 10


def test_categories_crowd_and_label_space(coco):
    path, root = coco
    ds = PseudoVideoDataset(path, root, category_ids=[2, 3], mode="rotate3", hflip_prob=0.0)
    assert ds.category_ids == [2, 3] and ds.num_classes == 2
    seen = set()
    for i in range(len(ds)):
        for target in ds[i]["targets"]:
            seen.update(target["instance_ids"].tolist())
            assert set(target["labels"].tolist()) <= {0, 1}
    assert 99 not in seen and 1 not in seen and {2, 3} <= seen  # crowd and category-1 annotations dropped
    full = load_coco_instances(path)
    assert 99 not in [a["id"] for a in full["anns_by_image"][1]]


def test_bad_coco_input_names_file_object_and_field(coco, tmp_path):
    path, root = coco
    data = json.loads(path.read_text())
    del data["annotations"][1]["segmentation"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(VISFormatError, match=r"bad.json: annotations\[1\]: missing field 'segmentation'"):
        PseudoVideoDataset(bad, root)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 42
    bad.write_text(json.dumps(data))
    with pytest.raises(
        VISFormatError, match=r"annotations\[0\] \(id 1\): field 'image_id': unknown image 42"
    ):
        PseudoVideoDataset(bad, root)
    with pytest.raises(ValueError, match="mode"):
        PseudoVideoDataset(path, root, mode="zoom")


def test_synthetic_coco_set_feeds_pseudo_videos(tmp_path):
    path = write_coco(tmp_path, make_config("ovis", height=48, width=80), 4, seed=0)
    ds = PseudoVideoDataset(path, path.parent / "images", mode="crop_pair", min_sizes=(48,))
    item = ds[0]
    assert item["images"].shape == (2, 3, 48, 80) and item["images"].dtype == torch.float32
    t = item["targets"][0]
    assert t["masks"].dtype == torch.bool and t["labels"].dtype == torch.int64 and len(t["instance_ids"]) > 0
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
