"""The one inference runner: every VIS method kind over whole videos, written as a YouTube-VIS results json.

A method declares its kind (:mod:`vis_core.methods.base`); :func:`infer_video` drives it over a
:class:`~vis_core.data.video_source.VideoSource` (length, lazy indexed frame reads) accordingly:

* ``online`` (IDOL, MinVIS): ``method.segment_frame(s)`` (the frame-level segmenter, no state, low-resolution
  outputs) then ``associator.update(frame_out)`` frame by frame, and ``associator.finalize``. Modes:

  - ``streaming`` (default): segment a frame (or ``frame_batch`` consecutive frames in one batched pass),
    associate it, drop it. Peak memory does not grow with the video length beyond the RLE output itself.
  - ``hold_all``: segment every frame first and keep all outputs (Q x T x H/4 x W/4 query masks), associate at
    the end, which mirrors the memory behaviour of the official IDOL/MinVIS code. It calls the very same
    ``update`` on the very same tensors, so both modes give identical results (tested); it exists for the
    memory benchmark.

* ``clip`` (VITA): windows of ``window`` frames every ``stride`` frames, the last one aligned to the video end.
  Each frame is segmented once; its outputs stay cached while a window still covers it, so at most one
  window's outputs are alive. ``associator.update_window(start, outs, final_before)`` gets each window and the
  first frame a later window covers (earlier frames are final and leave as RLE).

* ``offline`` (DVIS's refiner, Propose-Reduce): ``method.infer_offline(source, category_ids, timing)`` with
  random access to the whole video. Its memory grows with T, so first the method's ``memory_bytes(T, (h, w))``
  is checked against ``InferConfig.memory_budget_mb`` and a video that would not fit is refused with a
  :class:`MemoryBudgetError` naming the video, the prediction, the budget and the modes that would fit,
  instead of the process being killed half way. A clip method that declares ``memory_bytes`` gets the same
  check for its window.

Multi-scale test (report 001): the video is run once per shortest-side size in ``scales`` (each scale with its
own associator), then each scale's results are merged per category by
:func:`vis_core.tracking.multiscale.merge_multiscale` (its docstring: the reading of the report and the rule):
tracks matched across scales on video mask IoU >= ``merge_iou`` average their per-frame mask probabilities
(thresholded at 0.5) and their scores (a scale that missed the track votes 0 with ``merge_absent_weight``).
The probabilities reach the merge as soft encodings (:mod:`vis_core.tracking.soft_masks`, levels
``soft_levels``): the runner asks each online associator to keep them (its optional ``record_soft_masks``
hook), and the results entries of each scale carry them as ``"soft_segmentations"`` until the merge. The
results json never holds them: :func:`run_inference` drops them when it writes the file.

Reusing a scale: a single-scale run of the same checkpoint with the same test settings at size ``s`` already
holds scale ``s`` of the multi-scale test (the scales run independently until the merge), so ``run_inference``
accepts those results (``reuse={s: results}``) instead of recomputing them; :func:`reusable_scales` says
which scales of a config another config's results stand for. The merge needs the soft encodings, so the
single-scale run must keep them: ``run_inference(soft_path=...)`` writes its entries with them to a sidecar
json next to the results (:func:`read_soft_results` reads it back). Outputs are identical either way (tested).

Resuming: each finished video's results go to ``<out>.partial.jsonl`` at once; a rerun skips those videos. The
final json is written atomically and the partial file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vis_core.data.transforms import shortest_edge_size
from vis_core.data.video_source import VideoSource, folder_video_source
from vis_core.data.ytvis import YTVISAnnotations, load_annotations, load_json, save_json
from vis_core.methods.base import method_kind
from vis_core.tracking.multiscale import ScaleTrack, merge_multiscale
from vis_core.tracking.soft_masks import DEFAULT_LEVELS, SOFT_FIELD, SoftMaskCodec

__all__ = [
    "InferConfig", "MemoryBudgetError", "VideoTiming", "check_memory_budget", "infer_video",
    "infer_video_multiscale", "merge_scale_results", "read_soft_results", "results_by_video", "reusable_scales",
    "run_inference", "window_starts",
]


@dataclass
class InferConfig:
    """Test-time settings. ``min_size``/``max_size``: shortest-side resize (None keeps the stored size);
    ``scales``: several shortest sides for the multi-scale test (overrides ``min_size``); ``mode``: online
    methods' ``streaming`` or ``hold_all``; ``frame_batch``: frames segmented per batched pass (online and clip
    methods; association stays per frame / per window); ``window`` / ``stride``: clip methods' window and
    stride in frames (None: the method's own); ``memory_budget_mb``: offline methods' (and clip windows')
    predicted peak memory above which a video is refused (None: half the machine's physical memory).
    Multi-scale merge (module docstring): ``merge_iou`` (cross-scale match), ``merge_absent_weight`` (weight
    of a missing scale's zero score vote), ``soft_levels`` (extra probability levels of the soft masks)."""

    min_size: int | None = None
    max_size: int | None = None
    scales: list[int] = field(default_factory=list)
    mode: str = "streaming"
    merge_iou: float = 0.5
    merge_absent_weight: float = 1.0
    soft_levels: list[float] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    device: str = "cpu"
    frame_batch: int = 1
    window: int | None = None
    stride: int | None = None
    memory_budget_mb: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("streaming", "hold_all"):
            raise ValueError(f"InferConfig.mode must be 'streaming' or 'hold_all', got {self.mode!r}")
        if self.frame_batch < 1:
            raise ValueError(f"InferConfig.frame_batch must be >= 1, got {self.frame_batch}")
        for name in ("window", "stride"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"InferConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise ValueError(f"InferConfig.memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        if not 0.0 <= self.merge_absent_weight <= 1.0:
            raise ValueError(f"InferConfig.merge_absent_weight must be in [0, 1], got {self.merge_absent_weight}")
        self.soft_codec()  # validates soft_levels

    def soft_codec(self) -> SoftMaskCodec:
        """The codec of the soft masks the multi-scale merge reads."""
        return SoftMaskCodec(self.soft_levels)

    def memory_budget_bytes(self) -> int:
        if self.memory_budget_mb is not None:
            return int(self.memory_budget_mb * 2**20)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class MemoryBudgetError(RuntimeError):
    """A video whose predicted inference memory exceeds ``InferConfig.memory_budget_mb``."""


@dataclass
class VideoTiming:
    """Wall seconds of one or more videos, split into segmenter and association time."""

    frames: int = 0
    segmenter_s: float = 0.0
    association_s: float = 0.0
    device: str = "cpu"

    def add(self, other: VideoTiming) -> None:
        self.frames += other.frames
        self.segmenter_s += other.segmenter_s
        self.association_s += other.association_s

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Add the wall time of the block (CUDA synchronised) to ``segmenter`` or ``association``."""
        start = time.perf_counter()
        yield
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if name == "segmenter":
            self.segmenter_s += elapsed
        elif name == "association":
            self.association_s += elapsed
        else:
            raise ValueError(f"VideoTiming.part: unknown part {name!r}")


def _segment(method: Any, source: VideoSource, frame_ids: Sequence[int], cfg: InferConfig,
             timing: VideoTiming) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(t, segment_frame outputs)`` of the given consecutive frames, ``cfg.frame_batch`` per batched pass
    (the segmenter of an online or clip method is per frame: the outputs are those of frame-by-frame calls up
    to float rounding). Frames are read only when their batch is due."""
    for i in range(0, len(frame_ids), cfg.frame_batch):
        ids = frame_ids[i:i + cfg.frame_batch]
        images = [source[t] for t in ids]
        groups = [[0]]  # a batched pass never mixes frame sizes
        for j in range(1, len(images)):
            if images[j].shape == images[groups[-1][0]].shape:
                groups[-1].append(j)
            else:
                groups.append([j])
        for group in groups:
            with timing.part("segmenter"):
                if len(group) == 1:
                    outs = [method.segment_frame(images[group[0]].to(cfg.device))]
                else:
                    outs = method.segment_frames(torch.stack([images[j] for j in group]).to(cfg.device))
            timing.frames += len(group)
            yield from zip((ids[j] for j in group), outs, strict=True)


def _record_soft(associator: Any, codec: SoftMaskCodec | None) -> None:
    """Ask the associator to keep soft masks (its optional ``record_soft_masks`` hook); one without the hook
    writes binary masks only, which the multi-scale merge counts as 0/1 probabilities."""
    hook = getattr(associator, "record_soft_masks", None)
    if codec is not None and hook is not None:
        hook(codec)


def _infer_online(method: Any, source: VideoSource, category_ids: Sequence[int], cfg: InferConfig,
                  timing: VideoTiming, soft: SoftMaskCodec | None) -> list[dict]:
    associator = method.new_associator(source.output_size)
    _record_soft(associator, soft)
    held: list[dict[str, torch.Tensor]] = []
    for _, out in _segment(method, source, range(len(source)), cfg, timing):
        if cfg.mode == "hold_all":
            held.append(out)
            continue
        with timing.part("association"):
            associator.update(out)
    with timing.part("association"):
        for out in held:  # hold_all: the official order of work, all frames' outputs alive at once
            associator.update(out)
        return associator.finalize(source.video_id, category_ids)


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frames of the clip windows over ``num_frames`` frames: every ``stride`` frames, the last window
    aligned to the video end (every frame covered, no window cut short); one window when ``window >= T``."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    last = max(num_frames - window, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def _frames_held(method: Any, num_frames: int, cfg: InferConfig) -> int:
    """Frames whose state a clip (one window) or offline (the whole video) method holds at once."""
    if method_kind(method) == "clip":
        return min(cfg.window or method.window, num_frames)
    return num_frames


def _infer_clip(method: Any, source: VideoSource, category_ids: Sequence[int], cfg: InferConfig,
                timing: VideoTiming, soft: SoftMaskCodec | None) -> list[dict]:
    window = _frames_held(method, len(source), cfg)
    stride = cfg.stride or method.stride
    check_memory_budget(method, source, cfg, frames_held=window)
    associator = method.new_clip_associator(source.output_size, len(source))
    _record_soft(associator, soft)
    cache: dict[int, dict[str, torch.Tensor]] = {}
    starts = window_starts(len(source), window, stride)
    for i, start in enumerate(starts):
        todo = [t for t in range(start, start + window) if t not in cache]
        cache.update(_segment(method, source, todo, cfg, timing))
        final_before = starts[i + 1] if i + 1 < len(starts) else len(source)
        with timing.part("association"):
            associator.update_window(start, [cache[t] for t in range(start, start + window)], final_before)
        for t in [t for t in cache if t < final_before]:  # no later window covers these frames
            del cache[t]
    with timing.part("association"):
        return associator.finalize(source.video_id, category_ids)


def check_memory_budget(method: Any, source: VideoSource, cfg: InferConfig, frames_held: int | None = None) -> None:
    """Refuse (:class:`MemoryBudgetError`) a video whose predicted peak, ``method.memory_bytes(frames_held,
    frame_size)``, exceeds the budget; the message lists the method's lower-memory modes that would fit
    (its optional ``lower_memory_modes(T, frame_size) -> {description: bytes}``). Methods that declare no
    ``memory_bytes`` (online ones: flat in T) are not checked."""
    predict = getattr(method, "memory_bytes", None)
    if predict is None:
        return
    frames_held = len(source) if frames_held is None else frames_held
    need, budget = int(predict(frames_held, source.frame_size)), cfg.memory_budget_bytes()
    if need <= budget:
        return
    alternatives = getattr(method, "lower_memory_modes", lambda *_: {})(len(source), source.frame_size)
    fits = [f"{mode} (~{size / 2**20:.0f} MiB)" for mode, size in alternatives.items() if size <= budget]
    h, w = source.frame_size
    raise MemoryBudgetError(
        f"video {source.video_id} ({len(source)} frames at {h}x{w}): {type(method).__name__} "
        f"({method_kind(method)}, {frames_held} frames held) needs about {need / 2**20:.0f} MiB, over the "
        f"budget of {budget / 2**20:.0f} MiB (InferConfig.memory_budget_mb); "
        + (f"modes that fit: {', '.join(fits)}" if fits else "no mode of this method fits: raise the budget, "
           "use a machine with more memory or a lower test resolution (min_size)")
    )


def _infer_offline(method: Any, source: VideoSource, category_ids: Sequence[int], cfg: InferConfig,
                   timing: VideoTiming, soft: SoftMaskCodec | None) -> list[dict]:
    # the method writes its own sequences: binary masks only (0/1 probabilities in a multi-scale merge)
    check_memory_budget(method, source, cfg)
    return method.infer_offline(source, category_ids, timing)


_RUNNERS = {"online": _infer_online, "clip": _infer_clip, "offline": _infer_offline}


@torch.no_grad()
def infer_video(method: Any, source: VideoSource, category_ids: Sequence[int], cfg: InferConfig | None = None,
                timing: VideoTiming | None = None, soft: SoftMaskCodec | None = None) -> list[dict]:
    """Results entries of one video: ``method`` run over ``source`` as its kind says (module docstring);
    masks are written at ``source.output_size``. ``timing`` accumulates frames and segmenter / association
    seconds. ``soft``: the associator also keeps soft masks, and the entries carry them as
    ``"soft_segmentations"`` (online and clip associators with the ``record_soft_masks`` hook)."""
    cfg = cfg or InferConfig()
    kind = method_kind(method)
    if kind not in _RUNNERS:
        raise TypeError(f"{type(method).__name__} has no video inference (kind {kind!r}; "
                        f"the runner drives {sorted(_RUNNERS)})")
    timing = timing if timing is not None else VideoTiming()
    timing.device = cfg.device
    return _RUNNERS[kind](method, source, category_ids, cfg, timing, soft)


def merge_scale_results(per_scale: Sequence[list[dict]], iou_threshold: float = 0.5, absent_weight: float = 1.0,
                        codec: SoftMaskCodec | None = None) -> list[dict]:
    """Merge one video's results entries from several test scales, category by category (module docstring).
    An entry's ``"soft_segmentations"`` (levels of ``codec``), when present, are its mask probabilities."""
    num_frames = next((len(e["segmentations"]) for scale in per_scale for e in scale), 0)
    categories = sorted({e["category_id"] for scale in per_scale for e in scale})
    video_ids = {e["video_id"] for scale in per_scale for e in scale}
    merged: list[dict] = []
    for cat in categories:
        tracks = [
            [ScaleTrack(e["segmentations"], torch.tensor([float(e["score"])]), e.get(SOFT_FIELD))
             for e in scale if e["category_id"] == cat]
            for scale in per_scale
        ]
        for m in merge_multiscale(tracks, iou_threshold=iou_threshold, absent_weight=absent_weight,
                                  output="rle", codec=codec):
            segs = list(m.masks) if m.masks else [None] * num_frames
            merged.append({"video_id": next(iter(video_ids)), "category_id": cat,
                           "score": float(m.scores[0]), "segmentations": segs})
    merged.sort(key=lambda e: -e["score"])
    return merged


def infer_video_multiscale(
    method: Any,
    gt: YTVISAnnotations,
    image_root: str | os.PathLike,
    video_id: int,
    cfg: InferConfig,
    category_ids: Sequence[int],
    timing: VideoTiming | None = None,
    reuse: Mapping[int, Mapping[int, list[dict]]] | None = None,
    keep_soft: bool = False,
) -> list[dict]:
    """One video at every size in ``cfg.scales`` (or once at ``cfg.min_size``), merged across scales.
    ``reuse[size][video_id]``, when present, is taken as that scale's results instead of running it (entries
    with their ``"soft_segmentations"``, as a run with ``keep_soft`` writes them). ``keep_soft``: a
    single-scale run's entries keep their soft masks (a multi-scale run's always do until the merge)."""
    sizes = cfg.scales or [cfg.min_size]
    codec = cfg.soft_codec() if len(sizes) > 1 or keep_soft else None
    per_scale = []
    for size in sizes:
        if video_id in (reuse or {}).get(size, {}):
            per_scale.append(list(reuse[size][video_id]))
            continue
        source = folder_video_source(gt, image_root, video_id, size, cfg.max_size)
        per_scale.append(infer_video(method, source, category_ids, cfg, timing, codec))
    if len(per_scale) == 1:
        return per_scale[0]
    return merge_scale_results(per_scale, cfg.merge_iou, cfg.merge_absent_weight, codec)


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
    sizes = {"min_size", "max_size", "scales", "merge_iou", "merge_absent_weight"}  # merge_*: after the scales
    if any(getattr(cfg, f.name) != getattr(single, f.name) for f in fields(InferConfig) if f.name not in sizes):
        return []
    sizes = _effective_size(gt, single.min_size, single.max_size)
    return [s for s in cfg.scales if _effective_size(gt, s, cfg.max_size) == sizes]


def _official(entry: dict) -> dict:
    """The entry as the results json holds it: without its soft masks."""
    return {key: value for key, value in entry.items() if key != SOFT_FIELD}


def _write_soft_results(path: str | os.PathLike, codec: SoftMaskCodec, results: list[dict]) -> None:
    """The sidecar of a single-scale run: its entries with their soft masks, and the levels they use."""
    save_json({"soft_levels": list(codec.levels), "results": results}, path)


def read_soft_results(path: str | os.PathLike, cfg: InferConfig) -> dict[int, list[dict]] | None:
    """``{video_id: entries}`` of a soft-mask sidecar (``run_inference(soft_path=...)``) whose levels are
    ``cfg.soft_levels``; None when the file is missing or its levels differ (the scale is then recomputed)."""
    path = Path(path)
    if not path.is_file():
        return None
    sidecar = load_json(path)
    if SoftMaskCodec(sidecar["soft_levels"]) != cfg.soft_codec():
        return None
    return results_by_video(sidecar["results"])


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
    soft_path: str | os.PathLike | None = None,
) -> Path:
    """Run ``method`` over every video of ``gt`` (an annotation file: only its ``videos`` are needed) and write
    a YouTube-VIS results json to ``out_path``; resumes from ``<out>.partial.jsonl`` if present.

    ``category_ids`` maps the method's contiguous labels to dataset category ids (default: the sorted ids of
    ``gt``). A clip or offline method whose predicted memory exceeds the budget on any video is refused
    (:class:`MemoryBudgetError`) before the first video runs. ``timing_path`` gets ``{frames, segmenter_s,
    association_s, wall_s}`` as json (frames counts the frames segmented here, so not those of reused
    scales). ``reuse``: ``{scale: {video_id: entries}}``, results of a scale of ``cfg.scales`` that are already
    known, with their soft masks (module docstring); a video missing from it is simply run at that scale.
    ``soft_path`` (single-scale runs): also write the entries with their soft masks there, for a later
    multi-scale run to reuse (:func:`read_soft_results`). The results json never holds the soft masks.
    """
    cfg = cfg or InferConfig()
    if soft_path is not None and len(cfg.scales) > 1:
        raise ValueError("run_inference: soft_path is for single-scale runs (merged entries hold no soft masks)")
    gt = load_annotations(gt)
    category_ids = list(category_ids) if category_ids is not None else gt.category_ids
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial.jsonl")
    done = _read_partial(partial)
    ids = list(video_ids) if video_ids is not None else gt.video_ids
    if method_kind(method) in ("clip", "offline"):  # refuse an over-budget video before any video runs
        for vid in ids:
            for size in cfg.scales or [cfg.min_size]:
                source = folder_video_source(gt, image_root, vid, size, cfg.max_size)  # reads no frame
                check_memory_budget(method, source, cfg, _frames_held(method, len(source), cfg))
    timing = VideoTiming()
    start = time.perf_counter()
    method.eval()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as log:
        bar = tqdm(ids, desc=f"infer {out_path.name}", unit="video", disable=not progress)
        for vid in bar:
            if vid in done:
                continue
            results = infer_video_multiscale(method, gt, image_root, vid, cfg, category_ids, timing, reuse,
                                             keep_soft=soft_path is not None)
            log.write(json.dumps({"video_id": vid, "results": results}, separators=(",", ":")) + "\n")
            log.flush()
            done[vid] = results
            if timing.frames:
                per_frame = (timing.segmenter_s + timing.association_s) / timing.frames
                bar.set_postfix(ms_per_frame=f"{1000 * per_frame:.1f}")
    results = [entry for vid in ids for entry in done[vid]]
    save_json([_official(entry) for entry in results], out_path)
    if soft_path is not None:
        _write_soft_results(soft_path, cfg.soft_codec(), results)
    partial.unlink(missing_ok=True)
    if timing_path is not None:
        save_json({"frames": timing.frames, "segmenter_s": timing.segmenter_s,
                   "association_s": timing.association_s, "wall_s": time.perf_counter() - start}, timing_path)
    return out_path
