"""The inference runner: online VIS methods over whole videos, written as a YouTube-VIS results json.

Every online method (IDOL, MinVIS, ...) implements two calls, split so that the runner can time and order them:

* ``method.segment_frame(image (3, H, W) float 0..255) -> dict[str, Tensor]``: the frame-level segmenter,
  no state; low-resolution outputs (e.g. query mask logits at stride 4), never full-resolution masks;
* ``method.new_associator(output_size (H, W)) -> associator`` with ``associator.update(frame_out)`` (consumes
  one frame's outputs, keeps only per-track state and writes the kept masks as RLE at once) and
  ``associator.finalize(video_id, category_ids) -> list[results entries]``.

Modes:

* ``streaming`` (default): segment a frame, associate it, drop it. Peak memory does not grow with the video
  length beyond the RLE output itself.
* ``hold_all``: segment every frame first and keep all outputs (Q x T x H/4 x W/4 query masks), associate at the
  end, which mirrors the memory behaviour of the official IDOL/MinVIS code. It calls the very same
  ``update`` on the very same tensors, so both modes give identical results (tested); it exists for the
  memory benchmark.

Multi-scale test (report 001): the video is run once per shortest-side size in ``scales`` (each scale with its
own associator, streaming), then each scale's results are merged per category by
:func:`vis_core.tracking.multiscale.merge_multiscale`: tracks matched across scales on video mask IoU >= 0.5
average their scores (a scale that missed the track counts 0) and vote their per-frame masks (pixel kept when
at least half the scales that have the track mark it).

Reusing a scale: a single-scale run of the same checkpoint with the same test settings at size ``s`` already
holds scale ``s`` of the multi-scale test (the scales run independently until the merge), so ``run_inference``
accepts those results (``reuse={s: results}``) instead of recomputing them; :func:`reusable_scales` says
which scales of a config another config's results stand for. Outputs are identical either way (tested).

Resuming: each finished video's results go to ``<out>.partial.jsonl`` at once; a rerun skips those videos. The
final json is written atomically and the partial file removed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from vis_core.data.clips import iter_video_frames
from vis_core.data.transforms import shortest_edge_size
from vis_core.data.ytvis import YTVISAnnotations, load_annotations, save_json
from vis_core.tracking.multiscale import ScaleTrack, merge_multiscale

__all__ = [
    "InferConfig", "OnlineMethod", "VideoTiming", "infer_video", "infer_video_multiscale", "results_by_video",
    "reusable_scales", "run_inference",
]


class Associator(Protocol):
    def update(self, frame_out: dict[str, torch.Tensor]) -> None: ...

    def finalize(self, video_id: int, category_ids: Sequence[int]) -> list[dict]: ...


class OnlineMethod(Protocol):
    def segment_frame(self, image: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def new_associator(self, output_size: tuple[int, int]) -> Associator: ...


@dataclass
class InferConfig:
    """Test-time settings. ``min_size``/``max_size``: shortest-side resize (None keeps the stored size);
    ``scales``: several shortest sides for the multi-scale test (overrides ``min_size``)."""

    min_size: int | None = None
    max_size: int | None = None
    scales: list[int] = field(default_factory=list)
    mode: str = "streaming"
    merge_iou: float = 0.5
    device: str = "cpu"
    frame_batch: int = 1  # frames segmented per batched pass (online methods; association stays per frame)

    def __post_init__(self) -> None:
        if self.mode not in ("streaming", "hold_all"):
            raise ValueError(f"InferConfig.mode must be 'streaming' or 'hold_all', got {self.mode!r}")
        if self.frame_batch < 1:
            raise ValueError(f"InferConfig.frame_batch must be >= 1, got {self.frame_batch}")


@dataclass
class VideoTiming:
    """Wall seconds of one video, split into segmenter and association time."""

    frames: int = 0
    segmenter_s: float = 0.0
    association_s: float = 0.0

    def add(self, other: VideoTiming) -> None:
        self.frames += other.frames
        self.segmenter_s += other.segmenter_s
        self.association_s += other.association_s


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _segment(method: OnlineMethod, images: list[torch.Tensor], device: str) -> list[dict[str, torch.Tensor]]:
    """Segment a few frames of one size: one batched pass when the method has ``segment_frames``."""
    batched = getattr(method, "segment_frames", None)
    if batched is not None and len(images) > 1:
        return batched(torch.stack(images).to(device))
    return [method.segment_frame(image.to(device)) for image in images]


def _batches(frames: Iterable[tuple[int, torch.Tensor]], size: int):
    """Consecutive frames in groups of at most ``size`` (a group never mixes frame sizes)."""
    group: list[torch.Tensor] = []
    for _, image in frames:
        if group and (len(group) == size or image.shape != group[0].shape):
            yield group
            group = []
        group.append(image)
    if group:
        yield group


@torch.no_grad()
def infer_video(
    method: OnlineMethod,
    frames: Iterable[tuple[int, torch.Tensor]],
    output_size: tuple[int, int],
    video_id: int,
    category_ids: Sequence[int],
    mode: str = "streaming",
    device: str = "cpu",
    timing: VideoTiming | None = None,
    frame_batch: int = 1,
) -> list[dict]:
    """Run one video. ``frames`` yields ``(t, image (3, h, w))``; masks are written at ``output_size``.

    ``frame_batch`` > 1 segments that many consecutive frames in one batched pass (the segmenter of an online
    method is per frame, so the outputs are those of frame-by-frame calls up to float rounding); association
    stays frame by frame and in order, and memory stays flat in T (at most ``frame_batch`` frames' outputs).
    """
    timing = timing if timing is not None else VideoTiming()
    associator = method.new_associator(tuple(output_size))
    held: list[dict[str, torch.Tensor]] = []
    for images in _batches(frames, max(1, frame_batch)):
        t0 = time.perf_counter()
        outs = _segment(method, images, device)
        _sync(device)
        t1 = time.perf_counter()
        timing.segmenter_s += t1 - t0
        timing.frames += len(images)
        if mode == "hold_all":
            held.extend(outs)
            continue
        for out in outs:
            associator.update(out)
        _sync(device)
        timing.association_s += time.perf_counter() - t1
    t1 = time.perf_counter()
    for out in held:  # hold_all: the official order of work, all frames' outputs alive at once
        associator.update(out)
    results = associator.finalize(video_id, category_ids)
    timing.association_s += time.perf_counter() - t1
    return results


def merge_scale_results(per_scale: Sequence[list[dict]], iou_threshold: float = 0.5) -> list[dict]:
    """Merge one video's results entries from several test scales, category by category (module docstring)."""
    num_frames = next((len(e["segmentations"]) for scale in per_scale for e in scale), 0)
    categories = sorted({e["category_id"] for scale in per_scale for e in scale})
    video_ids = {e["video_id"] for scale in per_scale for e in scale}
    merged: list[dict] = []
    for cat in categories:
        tracks = [
            [ScaleTrack(e["segmentations"], torch.tensor([float(e["score"])]))
             for e in scale if e["category_id"] == cat]
            for scale in per_scale
        ]
        for m in merge_multiscale(tracks, iou_threshold=iou_threshold, output="rle"):
            segs = list(m.masks) if m.masks else [None] * num_frames
            merged.append({"video_id": next(iter(video_ids)), "category_id": cat,
                           "score": float(m.scores[0]), "segmentations": segs})
    merged.sort(key=lambda e: -e["score"])
    return merged


def infer_video_multiscale(
    method: OnlineMethod,
    gt: YTVISAnnotations,
    image_root: str | os.PathLike,
    video_id: int,
    cfg: InferConfig,
    category_ids: Sequence[int],
    timing: VideoTiming | None = None,
    reuse: Mapping[int, Mapping[int, list[dict]]] | None = None,
) -> list[dict]:
    """One video at every size in ``cfg.scales`` (or once at ``cfg.min_size``), merged across scales.
    ``reuse[size][video_id]``, when present, is taken as that scale's results instead of running it."""
    video = gt.videos[video_id]
    output_size = (video["height"], video["width"])
    sizes = cfg.scales or [cfg.min_size]
    per_scale = []
    for size in sizes:
        if video_id in (reuse or {}).get(size, {}):
            per_scale.append(list(reuse[size][video_id]))
            continue
        frames = iter_video_frames(gt, image_root, video_id, size, cfg.max_size)
        per_scale.append(
            infer_video(method, frames, output_size, video_id, category_ids, cfg.mode, cfg.device, timing,
                        cfg.frame_batch)
        )
    if len(per_scale) == 1:
        return per_scale[0]
    return merge_scale_results(per_scale, cfg.merge_iou)


def _effective_size(gt: YTVISAnnotations, min_size: int | None, max_size: int | None) -> dict[int, tuple]:
    """Frame size (h, w) the segmenter sees in every video of ``gt`` at a shortest side of ``min_size``."""
    out = {}
    for vid, video in gt.videos.items():
        h, w = video["height"], video["width"]
        out[vid] = (h, w) if min_size is None else shortest_edge_size(h, w, min_size, max_size)
    return out


def reusable_scales(gt: YTVISAnnotations, cfg: InferConfig, single: InferConfig) -> list[int]:
    """The scales of the multi-scale ``cfg`` whose per-scale results equal a single-scale run with ``single``.

    That holds when every setting but the size agrees and, in every video of ``gt``, scale ``s`` resizes the
    frames to the very size ``single`` does (``min_size: null`` keeps the stored size, which scale ``s``
    equals when it is the stored shortest side). The caller vouches for the checkpoint being the same.
    """
    if len(cfg.scales) < 2 or single.scales:
        return []
    sizes = {"min_size", "max_size", "scales", "merge_iou"}  # merge_iou only acts after the scales
    if any(getattr(cfg, f.name) != getattr(single, f.name) for f in fields(InferConfig) if f.name not in sizes):
        return []
    sizes = _effective_size(gt, single.min_size, single.max_size)
    return [s for s in cfg.scales if _effective_size(gt, s, cfg.max_size) == sizes]


def results_by_video(results: Iterable[dict]) -> dict[int, list[dict]]:
    """Results entries grouped by ``video_id``, in their order."""
    grouped: dict[int, list[dict]] = {}
    for entry in results:
        grouped.setdefault(int(entry["video_id"]), []).append(entry)
    return grouped


def _read_partial(path: Path) -> dict[int, list[dict]]:
    done: dict[int, list[dict]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption: that video is simply redone
                break
            done[int(rec["video_id"])] = rec["results"]
    return done


def run_inference(
    method: Any,
    gt: str | os.PathLike | YTVISAnnotations,
    image_root: str | os.PathLike,
    out_path: str | os.PathLike,
    cfg: InferConfig | None = None,
    category_ids: Sequence[int] | None = None,
    video_ids: Sequence[int] | None = None,
    progress: bool = True,
    timing_path: str | os.PathLike | None = None,
    reuse: Mapping[int, Mapping[int, list[dict]]] | None = None,
) -> Path:
    """Run ``method`` over every video of ``gt`` (an annotation file: only its ``videos`` are needed) and write
    a YouTube-VIS results json to ``out_path``; resumes from ``<out>.partial.jsonl`` if present.

    ``category_ids`` maps the method's contiguous labels to dataset category ids (default: the sorted ids of
    ``gt``). ``timing_path`` gets ``{frames, segmenter_s, association_s, wall_s}`` as json (frames counts the
    frames segmented here, so not those of reused scales). ``reuse``: ``{scale: {video_id: entries}}``,
    results of a scale of ``cfg.scales`` that are already known (module docstring); a video missing from it
    is simply run at that scale.
    """
    cfg = cfg or InferConfig()
    gt = load_annotations(gt)
    category_ids = list(category_ids) if category_ids is not None else gt.category_ids
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial.jsonl")
    done = _read_partial(partial)
    ids = list(video_ids) if video_ids is not None else gt.video_ids
    timing = VideoTiming()
    start = time.perf_counter()
    if hasattr(method, "eval"):
        method.eval()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as log:
        bar = tqdm(ids, desc=f"infer {out_path.name}", unit="video", disable=not progress)
        for vid in bar:
            if vid in done:
                continue
            results = infer_video_multiscale(method, gt, image_root, vid, cfg, category_ids, timing, reuse)
            log.write(json.dumps({"video_id": vid, "results": results}, separators=(",", ":")) + "\n")
            log.flush()
            done[vid] = results
            if timing.frames:
                per_frame = (timing.segmenter_s + timing.association_s) / timing.frames
                bar.set_postfix(ms_per_frame=f"{1000 * per_frame:.1f}")
    results = [entry for vid in ids for entry in done[vid]]
    save_json(results, out_path)
    partial.unlink(missing_ok=True)
    if timing_path is not None:
        save_json({"frames": timing.frames, "segmenter_s": timing.segmenter_s,
                   "association_s": timing.association_s, "wall_s": time.perf_counter() - start}, timing_path)
    return out_path
