"""Synthetic evaluator inputs shaped like the official YouTube-VIS timing case.

The official timing case is 150 videos x 36 frames at 180x320 to 360x640, about 1,900 GT tracks (mostly in
crowded single-category videos) and about 11,900 predictions that carry a mask in every frame. This module
makes input of that shape, deterministically from a seed, for the evaluator benchmark
(``benchmarks/bench_eval.py``) and, scaled down, for cross-checking the fast evaluator against the reference
one in tests.

Objects are wobbly ellipses moving on straight lines. Masks are written straight as column-major runs (one
interval per image column), so 400k masks take seconds, not the minutes a dense rasterise-and-encode would;
the runs are compressed to COCO string RLE by pycocotools. GT segmentations are stored the way the YouTube-VIS
files store them (list-count RLE, ``areas`` = pixel counts, null where the object is absent); results use
string RLE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

from vis_core.data.ytvis import save_json

RESOLUTIONS = ((180, 320), (240, 426), (270, 480), (360, 640))
OCCLUSION_LABELS = ("no_occlusion", "slight_occlusion", "severe_occlusion")


@dataclass
class CaseConfig:
    """Shape of a synthetic case; the defaults match the official timing case."""

    n_videos: int = 150
    n_frames: int = 36
    n_categories: int = 40
    crowded_fraction: float = 0.6  # share of videos with one category and many objects
    crowded_objects: tuple[int, int] = (10, 27)  # objects per crowded video (inclusive range)
    sparse_objects: tuple[int, int] = (1, 6)  # objects per other video, over 1-3 categories
    preds_per_object: int = 5  # perturbed copies of each GT track, scored by how good they are
    false_positives: int = 16  # per video, random tracks
    crowd_rate: float = 0.01  # share of GT tracks with iscrowd = 1
    occlusion: bool = False  # add OVIS per-frame occlusion labels
    seed: int = 0


def ellipse_runs(
    h: int, w: int, cx: float, cy: float, rx: float, ry: float, wobble: np.ndarray | None
) -> list:
    """Uncompressed column-major COCO counts of a filled ellipse (empty when it misses the frame).

    ``wobble`` (optional, length ``w``) adds per-column pixels to the half-height: outlines are not perfect.
    """
    x = np.arange(max(0, int(cx - rx) - 1), min(w, int(cx + rx) + 2))
    dx = (x + 0.5 - cx) / max(rx, 1e-6)
    inside = np.abs(dx) < 1
    x, dx = x[inside], dx[inside]
    half = ry * np.sqrt(1 - dx * dx)
    if wobble is not None:
        half = half + wobble[x]
    top = np.clip(np.ceil(cy - half - 0.5), 0, h).astype(np.int64)
    bot = np.clip(np.floor(cy + half - 0.5) + 1, 0, h).astype(np.int64)  # exclusive
    keep = bot > top
    x, top, bot = x[keep], top[keep], bot[keep]
    if len(x) == 0:
        return [h * w]
    starts, ends = x * h + top, x * h + bot
    # merge runs that touch across a column boundary (object spanning the full image height)
    join = starts[1:] == ends[:-1]
    if join.any():
        starts = np.concatenate([starts[:1], starts[1:][~join]])
        ends = np.concatenate([ends[:-1][~join], ends[-1:]])
    edges = np.empty(2 * len(starts) + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, h * w
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    return np.diff(edges).tolist()


def _compress(counts_list: list[list[int]], h: int, w: int) -> list[dict]:
    """Uncompressed counts -> json-ready string RLEs, one pycocotools call for the whole list."""
    if not counts_list:
        return []
    rles = mask_util.frPyObjects([{"size": [h, w], "counts": c} for c in counts_list], h, w)
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in rles]


def _track(rng, h, w, n_frames, size_range):
    """A moving object: per-frame (cx, cy, rx, ry) and a presence window."""
    r = rng.uniform(*size_range)
    rx, ry = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
    c0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    vel = rng.normal(0, 2.0, size=2)
    t = np.arange(n_frames)[:, None]
    centers = c0 + vel * t + rng.normal(0, 0.7, size=(n_frames, 2))
    scale = 1 + 0.1 * np.sin(t[:, 0] / 5 + rng.uniform(0, 6))
    start = 0 if rng.random() < 0.7 else int(rng.integers(0, n_frames // 2))
    end = n_frames if rng.random() < 0.7 else int(rng.integers(start + 1, n_frames + 1))
    return {
        "cx": centers[:, 0],
        "cy": centers[:, 1],
        "rx": rx * scale,
        "ry": ry * scale,
        "start": start,
        "end": end,
    }


def _perturb(rng, track, n_frames, quality):
    """A prediction of ``track``: jittered centre and radii; worse quality moves it further away."""
    shift = rng.normal(0, 1, size=2) * (1 - quality) * 0.8 * float(np.mean(track["rx"]))
    jitter = rng.normal(0, (1 - quality) * 2, size=(n_frames, 2))
    grow = 1 + rng.normal(0, 0.25 * (1 - quality))
    return {
        "cx": track["cx"] + shift[0] + jitter[:, 0],
        "cy": track["cy"] + shift[1] + jitter[:, 1],
        "rx": np.maximum(track["rx"] * grow, 1.0),
        "ry": np.maximum(track["ry"] * grow, 1.0),
    }


def make_case(config: CaseConfig | None = None, **overrides) -> tuple[dict, list[dict]]:
    """Build ``(gt_dict, results_list)`` in YouTube-VIS format; see :class:`CaseConfig` for the knobs."""
    cfg = config or CaseConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    # three independent streams: the video layout (sizes, object counts, categories) does not depend on the
    # number of frames, and occlusion labels do not change anything else
    layout_rng = np.random.default_rng([cfg.seed, 0])
    occ_rng = np.random.default_rng([cfg.seed, 1])
    rng = np.random.default_rng([cfg.seed, 2])
    categories = [
        {"id": k + 1, "name": f"class_{k + 1}", "supercategory": "object"} for k in range(cfg.n_categories)
    ]
    n_crowded = round(cfg.crowded_fraction * cfg.n_videos)
    crowded_videos = set(layout_rng.permutation(cfg.n_videos)[:n_crowded].tolist())
    videos, annotations, results = [], [], []
    n_frames = cfg.n_frames
    for v in range(cfg.n_videos):
        vid = v + 1
        h, w = RESOLUTIONS[int(layout_rng.integers(len(RESOLUTIONS)))]
        videos.append(
            {
                "id": vid,
                "width": w,
                "height": h,
                "length": n_frames,
                "file_names": [f"video_{vid:04d}/{t:05d}.jpg" for t in range(n_frames)],
            }
        )
        if v in crowded_videos:
            n_obj = int(layout_rng.integers(cfg.crowded_objects[0], cfg.crowded_objects[1] + 1))
            cats = [int(layout_rng.integers(1, cfg.n_categories + 1))]
            size_range = (6.0, 0.09 * min(h, w) + 12)
        else:
            n_obj = int(layout_rng.integers(cfg.sparse_objects[0], cfg.sparse_objects[1] + 1))
            n_cats = int(layout_rng.integers(1, 4))
            cats = layout_rng.choice(np.arange(1, cfg.n_categories + 1), n_cats, replace=False).tolist()
            size_range = (10.0, 0.45 * min(h, w))
        gt_counts, pred_counts = [], []
        gt_meta, pred_meta = [], []
        for _ in range(n_obj):
            tr = _track(rng, h, w, n_frames, size_range)
            cat = cats[int(rng.integers(len(cats)))]
            wobble = rng.normal(0, 0.6, size=w)
            segs = []
            for t in range(n_frames):
                if tr["start"] <= t < tr["end"]:
                    segs.append(
                        ellipse_runs(h, w, tr["cx"][t], tr["cy"][t], tr["rx"][t], tr["ry"][t], wobble)
                    )
                else:
                    segs.append(None)
            gt_meta.append((cat, rng.random() < cfg.crowd_rate))
            gt_counts.append(segs)
            for _ in range(cfg.preds_per_object):
                quality = float(rng.beta(4, 1.5))
                p = _perturb(rng, tr, n_frames, quality)
                pw = rng.normal(0, 0.8, size=w)
                # a mask in every frame: where the object is absent, the track keeps predicting where it was
                pred_counts.append(
                    [
                        ellipse_runs(h, w, p["cx"][t], p["cy"][t], p["rx"][t], p["ry"][t], pw)
                        for t in range(n_frames)
                    ]
                )
                wrong = rng.random() < 0.1
                pcat = int(rng.integers(1, cfg.n_categories + 1)) if wrong else cat
                pred_meta.append((pcat, quality * 0.9 + 0.1 * rng.random()))
        for _ in range(cfg.false_positives):
            tr = _track(rng, h, w, n_frames, size_range)
            pw = rng.normal(0, 0.8, size=w)
            pred_counts.append(
                [
                    ellipse_runs(h, w, tr["cx"][t], tr["cy"][t], tr["rx"][t], tr["ry"][t], pw)
                    for t in range(n_frames)
                ]
            )
            pcat = (
                cats[int(rng.integers(len(cats)))]
                if rng.random() < 0.8
                else int(rng.integers(1, cfg.n_categories + 1))
            )
            pred_meta.append((pcat, 0.5 * rng.random()))

        for segs, (cat, crowd) in zip(gt_counts, gt_meta, strict=True):
            ann = {
                "id": len(annotations) + 1,
                "video_id": vid,
                "category_id": cat,
                "iscrowd": int(crowd),
                "segmentations": [None if c is None else {"size": [h, w], "counts": c} for c in segs],
                "areas": [None if c is None else int(sum(c[1::2])) for c in segs],
            }
            if cfg.occlusion:
                labels = occ_rng.choice(3, size=n_frames, p=[0.5, 0.3, 0.2])
                ann["occlusion"] = [
                    None if c is None else OCCLUSION_LABELS[int(k)] for c, k in zip(segs, labels, strict=True)
                ]
            annotations.append(ann)
        flat = [c for segs in pred_counts for c in segs]
        rles = _compress(flat, h, w)
        for i, (cat, score) in enumerate(pred_meta):
            results.append(
                {
                    "video_id": vid,
                    "category_id": cat,
                    "score": round(float(score), 4),
                    "segmentations": rles[i * n_frames : (i + 1) * n_frames],
                }
            )
    gt = {
        "info": {"description": f"synthetic evaluator case, seed {cfg.seed}"},
        "videos": videos,
        "annotations": annotations,
        "categories": categories,
    }
    return gt, results


def write_case(
    out_dir: str | os.PathLike, config: CaseConfig | None = None, **overrides
) -> tuple[Path, Path]:
    """Write ``gt.json`` and ``results.json`` of :func:`make_case` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    gt, results = make_case(config, **overrides)
    return save_json(gt, out_dir / "gt.json"), save_json(results, out_dir / "results.json")


def _list_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed column-major COCO counts of a small dense mask (test and example data only)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [len(flat)]])
    counts = np.diff(edges).tolist()
    return [0] + counts if len(flat) and flat[0] else counts


def case_from_masks(
    videos: dict[int, tuple[int, int, int]],
    gt_tracks: list[dict],
    pred_tracks: list[dict],
    n_categories: int = 1,
    gt_format: str = "list",
) -> tuple[dict, list[dict]]:
    """Small YouTube-VIS inputs from dense masks, for tests and examples.

    ``videos``: id -> (height, width, n_frames). A GT track is ``{"video_id", "category_id", "masks"}`` with
    one (H, W) array or None per frame, plus optional ``"id"``, ``"iscrowd"``, ``"areas"`` (default: the mask
    areas)
    and ``"occlusion"`` (OVIS labels). A prediction is ``{"video_id", "category_id", "score", "masks"}``.
    ``gt_format`` stores GT masks as list-count RLE (``"list"``, as YouTube-VIS does) or string RLE
    (``"str"``).
    """
    from vis_core.data.ytvis import mask_to_rle

    def gt_seg(m):
        if m is None:
            return None
        if gt_format == "list":
            return {"size": list(m.shape), "counts": _list_counts(m)}
        return mask_to_rle(m)

    gt = {
        "videos": [
            {
                "id": vid,
                "height": h,
                "width": w,
                "length": n,
                "file_names": [f"{vid}/{t:05d}.jpg" for t in range(n)],
            }
            for vid, (h, w, n) in videos.items()
        ],
        "categories": [
            {"id": k + 1, "name": f"class_{k + 1}", "supercategory": "object"} for k in range(n_categories)
        ],
        "annotations": [],
    }
    for j, tr in enumerate(gt_tracks):
        ann = {
            "id": tr.get("id", j + 1),
            "video_id": tr["video_id"],
            "category_id": tr["category_id"],
            "iscrowd": tr.get("iscrowd", 0),
            "segmentations": [gt_seg(m) for m in tr["masks"]],
            "areas": tr.get("areas", [None if m is None else int(np.asarray(m).sum()) for m in tr["masks"]]),
        }
        if "occlusion" in tr:
            ann["occlusion"] = tr["occlusion"]
        gt["annotations"].append(ann)
    results = [
        {
            "video_id": p["video_id"],
            "category_id": p["category_id"],
            "score": p["score"],
            "segmentations": [None if m is None else mask_to_rle(m) for m in p["masks"]],
        }
        for p in pred_tracks
    ]
    return gt, results
