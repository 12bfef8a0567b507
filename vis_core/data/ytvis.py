"""YouTube-VIS (2019/2021/2022) and OVIS annotation and results files: load, validate, save.

Annotation files::

    {"videos": [{"id", "width", "height", "length", "file_names": ["<video>/<frame>.jpg", ...]}],
     "annotations": [{"id", "video_id", "category_id", "iscrowd",
                      "segmentations": [seg | null per frame], "areas": [area | null per frame],
                      "bboxes": [[x, y, w, h] | null per frame],          # optional
                      "occlusion": ["no_occlusion" | "slight_occlusion" | "severe_occlusion" | null]}],  # OVIS
     "categories": [{"id", "name", "supercategory"}]}

A per-frame ``seg`` is a polygon list, an RLE with list counts (uncompressed) or an RLE with string counts.
Results files are a list of ``{"video_id", "category_id", "score", "segmentations"}`` with one string-count
RLE or null per frame, exactly what the YouTube-VIS / OVIS servers take.

All RLE work goes through ``pycocotools.mask``. Every validation error is a :class:`VISFormatError` whose message
names the file, the object (index and id) and the field. Writers are atomic (temp file, then rename).
"""

from __future__ import annotations

import gc
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from vis_core.io.atomic import atomic_path

OCCLUSION_LABELS = ("no_occlusion", "slight_occlusion", "severe_occlusion")


class VISFormatError(ValueError):
    """Malformed YouTube-VIS/OVIS annotations or results; the message names file, object and field."""


# ----------------------------------------------------------------------------------------------- json i/o
def load_json(path: str | os.PathLike) -> Any:
    """Read a json file; a missing file, bytes that are not utf-8 or malformed json raise :class:`VISFormatError`
    naming the file.

    (The standard parser, not orjson: orjson is ~2.5x faster but first builds a document tree, which takes the
    peak memory of loading a results file from ~1.2x to ~2x its parsed size.)
    """
    path = Path(path)
    if not path.is_file():
        raise VISFormatError(f"{path}: no such file")
    # A results file is millions of small dicts and lists, and json holds no reference cycles. With the cyclic
    # garbage collector running, json.load gets about five times slower (full passes over everything built so
    # far, again each time the heap grows by a quarter). Paused, all of it would still sit in the youngest
    # generation, and the first collection after the pause would walk it once more (~0.3 s for a YouTube-VIS
    # results file): freeze + unfreeze moves it straight to the oldest generation instead (O(1)), where it
    # would have ended up anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise VISFormatError(f"{path}: malformed json: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise VISFormatError(f"{path}: not utf-8 text ({e.reason} at byte {e.start})") from None
    finally:
        gc.freeze()
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()


def save_json(obj: Any, path: str | os.PathLike, *, indent: int | None = None) -> Path:
    """Write ``obj`` as json atomically (:func:`vis_core.io.atomic.atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, separators=(",", ":") if indent is None else None)
    return Path(path)


# ----------------------------------------------------------------------------------------------------- RLE
def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 mask -> ``{"size": [H, W], "counts": str}`` (compressed RLE, json-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects a 2-D mask, got shape {tuple(mask.shape)}")
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) masks -> N json-ready RLEs, encoded in one pycocotools call."""
    if masks.ndim != 3:
        raise ValueError(f"masks_to_rles expects (N, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def to_compressed_rle(seg: Any, height: int, width: int) -> dict | None:
    """Any per-frame segmentation (polygons, list-count RLE, string-count RLE, None) -> pycocotools RLE or None.

    The returned RLE has ``bytes`` counts, as ``pycocotools.mask`` functions expect.
    """
    if seg is None:
        return None
    if isinstance(seg, list):  # polygons: one merged RLE
        return mask_util.merge(mask_util.frPyObjects(seg, height, width))
    counts = seg["counts"]
    if isinstance(counts, list):
        return mask_util.frPyObjects(seg, height, width)
    if isinstance(counts, str):
        return {"size": list(seg["size"]), "counts": counts.encode("ascii")}
    return {"size": list(seg["size"]), "counts": counts}


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Any per-frame segmentation -> (H, W) uint8 mask; None decodes to all zeros."""
    rle = to_compressed_rle(seg, height, width)
    if rle is None:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_util.decode(rle)


def rle_area(rle: dict) -> int:
    """Foreground pixel count of an RLE (string, bytes or list counts)."""
    h, w = rle["size"]
    return int(mask_util.area(to_compressed_rle(rle, h, w)))


def rle_bbox(rle: dict) -> list[float]:
    """Tight ``[x, y, w, h]`` box of an RLE (pycocotools convention; all zeros for an empty mask)."""
    h, w = rle["size"]
    return [float(v) for v in mask_util.toBbox(to_compressed_rle(rle, h, w))]


# ------------------------------------------------------------------------------------------- annotations
@dataclass
class YTVISAnnotations:
    """A validated annotation file. ``raw`` is the parsed json, other fields are indexes into it."""

    raw: dict
    name: str
    path: Path | None = None
    videos: dict[int, dict] = field(default_factory=dict)
    annotations: list[dict] = field(default_factory=list)
    categories: list[dict] = field(default_factory=list)
    anns_by_video: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def category_ids(self) -> list[int]:
        return sorted(c["id"] for c in self.categories)

    @property
    def video_ids(self) -> list[int]:
        return sorted(self.videos)

    def video_length(self, video_id: int) -> int:
        return _video_length(self.videos[video_id])

    def has_occlusion(self) -> bool:
        return any("occlusion" in a for a in self.annotations)


def _video_length(video: dict) -> int:
    return int(video["length"]) if "length" in video else len(video["file_names"])


def _require(obj: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise VISFormatError(f"{where}: expected an object, got {type(obj).__name__}")
    for k in keys:
        if k not in obj:
            raise VISFormatError(f"{where}: missing field '{k}'")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_segmentation(seg: Any, h: int, w: int, where: str) -> None:
    if seg is None or isinstance(seg, list):
        if isinstance(seg, list) and not all(isinstance(p, list) and len(p) >= 6 for p in seg):
            raise VISFormatError(f"{where}: polygon must be a list of [x1, y1, x2, y2, ...] with >= 3 points")
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise VISFormatError(f"{where}: expected polygon list, RLE {{size, counts}} or null")
    if list(seg["size"]) != [h, w]:
        raise VISFormatError(f"{where}: RLE size {list(seg['size'])}, video is {[h, w]} (height, width)")
    counts = seg["counts"]
    if isinstance(counts, list):
        # pycocotools trusts the counts: a wrong total reads past the mask (garbage or an endless loop)
        if sum(counts) != h * w:
            raise VISFormatError(f"{where}: RLE counts sum to {sum(counts)}, expected height*width = {h * w}")
    elif not isinstance(counts, str):
        raise VISFormatError(f"{where}: RLE counts must be a string or a list of ints")


def validate_annotations(data: Any, name: str) -> YTVISAnnotations:
    """Validate a parsed annotation file and index it; raises :class:`VISFormatError` on the first problem."""
    _require(data, ("videos", "categories"), name)
    if not isinstance(data["videos"], list):
        raise VISFormatError(f"{name}: field 'videos' must be a list")
    out = YTVISAnnotations(raw=data, name=name)
    for i, cat in enumerate(data["categories"]):
        _require(cat, ("id", "name"), f"{name}: categories[{i}]")
        if not _is_int(cat["id"]):
            raise VISFormatError(f"{name}: categories[{i}]: field 'id' must be an integer, got {cat['id']!r}")
        if any(c["id"] == cat["id"] for c in out.categories):
            raise VISFormatError(f"{name}: categories[{i}] (id {cat['id']}): duplicate category id")
        out.categories.append(cat)
    known_cats = {c["id"] for c in out.categories}

    for i, video in enumerate(data["videos"]):
        where = f"{name}: videos[{i}]"
        _require(video, ("id", "width", "height"), where)
        vid = video["id"]
        where = f"{name}: videos[{i}] (id {vid})"
        if not _is_int(vid):
            raise VISFormatError(f"{where}: field 'id' must be an integer")
        if vid in out.videos:
            raise VISFormatError(f"{where}: duplicate video id")
        if "length" not in video and "file_names" not in video:
            raise VISFormatError(f"{where}: missing field 'length' (and no 'file_names')")
        for key in ("width", "height"):
            if not _is_int(video[key]) or video[key] <= 0:
                raise VISFormatError(f"{where}: field '{key}' must be a positive integer, got {video[key]!r}")
        if "file_names" in video and "length" in video and len(video["file_names"]) != video["length"]:
            raise VISFormatError(
                f"{where}: field 'file_names' has {len(video['file_names'])} entries, length is {video['length']}"
            )
        out.videos[vid] = video
        out.anns_by_video[vid] = []

    seen_ids: dict[Any, int] = {}
    for i, ann in enumerate(data.get("annotations", []) or []):
        _require(ann, ("id",), f"{name}: annotations[{i}]")
        where = f"{name}: annotations[{i}] (id {ann['id']})"
        _require(ann, ("video_id", "category_id", "segmentations", "areas", "iscrowd"), where)
        if ann["id"] in seen_ids:
            raise VISFormatError(f"{where}: duplicate annotation id (also annotations[{seen_ids[ann['id']]}])")
        seen_ids[ann["id"]] = i
        vid = ann["video_id"]
        where = f"{name}: annotations[{i}] (id {ann['id']}, video_id {vid})"
        if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], float):
            # the official code reads it both as bool (ignore) and int (crowd): anything else is ambiguous
            raise VISFormatError(f"{where}: field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        if vid not in out.videos:
            raise VISFormatError(f"{where}: unknown video_id")
        if ann["category_id"] not in known_cats:
            raise VISFormatError(f"{where}: field 'category_id': unknown category {ann['category_id']!r}")
        video = out.videos[vid]
        n, h, w = _video_length(video), video["height"], video["width"]
        for key in ("segmentations", "areas", "bboxes", "occlusion"):
            if key in ann and (not isinstance(ann[key], list) or len(ann[key]) != n):
                got = len(ann[key]) if isinstance(ann[key], list) else type(ann[key]).__name__
                raise VISFormatError(f"{where}: field '{key}' has {got} entries, video has {n} frames")
        for t, seg in enumerate(ann["segmentations"]):
            _check_segmentation(seg, h, w, f"{where}: segmentations[{t}]")
        for t, area in enumerate(ann["areas"]):
            if area is not None and (not isinstance(area, (int, float)) or not math.isfinite(area) or area < 0):
                raise VISFormatError(f"{where}: areas[{t}] must be a non-negative number or null, got {area!r}")
        for t, occ in enumerate(ann.get("occlusion", ())):
            if occ is not None and occ not in OCCLUSION_LABELS:
                raise VISFormatError(f"{where}: occlusion[{t}] must be one of {OCCLUSION_LABELS} or null, got {occ!r}")
        out.annotations.append(ann)
        out.anns_by_video[vid].append(ann)
    return out


def load_annotations(
    source: str | os.PathLike | Mapping | YTVISAnnotations, name: str | None = None
) -> YTVISAnnotations:
    """Load and validate an annotation file (path), or validate an already parsed dict."""
    if isinstance(source, YTVISAnnotations):
        return source
    if isinstance(source, Mapping):
        return validate_annotations(dict(source), name or "<annotations>")
    path = Path(source)
    out = validate_annotations(load_json(path), name or str(path))
    out.path = path
    return out


def save_annotations(ann: YTVISAnnotations | dict, path: str | os.PathLike) -> Path:
    """Validate and write an annotation file atomically."""
    raw = ann.raw if isinstance(ann, YTVISAnnotations) else ann
    validate_annotations(raw, str(path))
    return save_json(raw, path)


# ------------------------------------------------------------------------------------------------ results
def _plain_rle_track(segs: list, size: list) -> bool:
    """The common case of :func:`validate_results`, in fewer operations per frame: every frame null or a
    plain dict with string counts and ``size`` equal to the video's. False means "check frame by frame"."""
    for seg in segs:
        if seg is not None and (type(seg) is not dict or type(seg.get("counts")) is not str or seg.get("size") != size):
            return False
    return True


def validate_results(results: Any, gt: YTVISAnnotations, name: str) -> tuple[list[dict], int]:
    """Validate a parsed results list against its ground truth.

    Returns ``(kept_entries, n_dropped)``: entries whose category is not in the GT are dropped with a warning,
    as the official evaluators silently do. Everything else that is wrong raises :class:`VISFormatError`.
    """
    if not isinstance(results, list):
        raise VISFormatError(f"{name}: a results file must be a json list, got {type(results).__name__}")
    known_cats = set(gt.category_ids)
    kept: list[dict] = []
    dropped = 0
    for i, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise VISFormatError(f"{name}: entry {i}: expected an object, got {type(entry).__name__}")
        vid = entry.get("video_id")
        where = f"{name}: entry {i} (video_id {vid})"
        for key in ("video_id", "category_id", "score", "segmentations"):
            if key not in entry:
                raise VISFormatError(f"{where}: missing field '{key}'")
        video = gt.videos.get(vid)
        if video is None:
            raise VISFormatError(f"{where}: unknown video_id (not in {gt.name})")
        score = entry["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or score < 0:
            raise VISFormatError(f"{where}: field 'score' must be a finite non-negative number, got {score!r}")
        segs = entry["segmentations"]
        n, size = _video_length(video), [video["height"], video["width"]]
        if not isinstance(segs, list):
            raise VISFormatError(f"{where}: field 'segmentations' must be a list")
        if len(segs) != n:
            raise VISFormatError(f"{where}: {len(segs)} segmentations, video has {n} frames")
        if _plain_rle_track(segs, size):
            segs = ()  # all frames fine; anything unusual gets the frame-by-frame checks (and messages) below
        for t, seg in enumerate(segs):
            if seg is None:
                continue
            if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
                raise VISFormatError(f"{where}: segmentations[{t}]: expected an RLE {{size, counts}} or null")
            if not isinstance(seg["counts"], str):
                raise VISFormatError(
                    f"{where}: segmentations[{t}]: RLE counts must be a compressed string "
                    f"(got {type(seg['counts']).__name__}; encode masks with pycocotools.mask.encode)"
                )
            if seg["size"] != size and list(seg["size"]) != size:
                raise VISFormatError(
                    f"{where}: segmentations[{t}]: mask size {list(seg['size'])}, video is {size} (height, width)"
                )
        if entry["category_id"] not in known_cats:
            dropped += 1
            continue
        kept.append(entry)
    if dropped:
        warnings.warn(f"{name}: dropped {dropped} result(s) whose category_id is not in {gt.name}", stacklevel=2)
    return kept, dropped


def load_results(
    source: str | os.PathLike | list, gt: YTVISAnnotations, name: str | None = None
) -> tuple[list[dict], int]:
    """Load (path) or take (list) a results file and validate it against ``gt``; see :func:`validate_results`."""
    if isinstance(source, list):
        return validate_results(source, gt, name or "<results>")
    return validate_results(load_json(source), gt, name or str(source))


def save_results(results: list[dict], path: str | os.PathLike, gt: YTVISAnnotations | None = None) -> Path:
    """Write a results file atomically (validated first when ``gt`` is given)."""
    if gt is not None:
        validate_results(results, gt, str(path))
    return save_json(results, path)


# ------------------------------------------------------------------------------------------------ helpers
def track_stats(segmentations: list[dict | None]) -> tuple[list[int | None], list[list[float] | None]]:
    """Per-frame areas and boxes of a track (None where the frame's segmentation is None)."""
    areas: list[int | None] = []
    boxes: list[list[float] | None] = []
    for seg in segmentations:
        if seg is None:
            areas.append(None)
            boxes.append(None)
        else:
            areas.append(rle_area(seg))
            boxes.append(rle_bbox(seg))
    return areas, boxes


def group_by_video(entries: Iterable[dict]) -> dict[int, list[dict]]:
    """Results or annotations grouped by ``video_id`` (order kept)."""
    out: dict[int, list[dict]] = defaultdict(list)
    for e in entries:
        out[e["video_id"]].append(e)
    return dict(out)
