"""The one inference runner drives toy online, clip and offline methods (vis_core.methods.base contract).

The toy video: two coloured squares (category 1 red, category 2 green) drift across a dark frame, the green one
entering half way. The toy segmenter finds each colour's pixels and returns the detections in a shuffled
order, so identities come only from association (IoU with the previous frame, or with the overlap of the
previous window), exactly as for a real method. Every kind must recover the ground truth (AP 1.0 with the
project's evaluator) and keep the memory behaviour its kind promises: per-frame outputs alive at once are
counted with a probe object in each output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vis_core.data.video_source import tensor_video_source
from vis_core.data.ytvis import mask_to_rle
from vis_core.engine.infer import (
    InferConfig,
    MemoryBudgetError,
    VideoTiming,
    infer_video,
    run_inference,
    window_starts,
)
from vis_core.eval import evaluate
from vis_core.methods.base import VISMethod
from vis_core.methods.registry import build_method, method_kind_of, register_method
from vis_core.tracking.track_state import TrackStore

H, W, NUM_CLASSES = 24, 40, 2
CATEGORY_IDS = [1, 2]


# ------------------------------------------------------------------------------------------ the toy video
def toy_video(num_frames: int) -> tuple[torch.Tensor, list[list[np.ndarray | None]]]:
    """Frames ``(T, 3, H, W)`` float 0..255 and per-object GT masks (None where absent)."""
    frames = torch.full((num_frames, 3, H, W), 20.0)
    gt: list[list[np.ndarray | None]] = [[], []]
    for t in range(num_frames):
        x0 = (t // 2) % (W - 8)  # red: from the start, one pixel every other frame (wrapping keeps IoU high)
        frames[t, 0, 4:12, x0:x0 + 8] = 230.0
        gt[0].append((frames[t, 0] > 128).numpy())
        if t >= num_frames // 2:  # green: enters half way
            x1 = W - 10 - (t - num_frames // 2) // 2 % (W - 10)
            frames[t, 1, 14:22, x1:x1 + 8] = 230.0
            gt[1].append((frames[t, 1] > 128).numpy())
        else:
            gt[1].append(None)
    return frames, gt


def write_gt(path, num_frames: int, gt) -> str:
    annotations = [
        {"id": k + 1, "video_id": 1, "category_id": CATEGORY_IDS[k], "iscrowd": 0,
         "segmentations": [None if m is None else mask_to_rle(m) for m in masks],
         "areas": [None if m is None else int(m.sum()) for m in masks]}
        for k, masks in enumerate(gt)
    ]
    data = {"videos": [{"id": 1, "height": H, "width": W, "length": num_frames,
                        "file_names": [f"v/{t:05d}.jpg" for t in range(num_frames)]}],
            "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS], "annotations": annotations}
    path.write_text(json.dumps(data))
    return str(path)


# -------------------------------------------------------------------------------- the toy segmenter
class LiveProbe:
    """Counts how many per-frame outputs are alive at once (CPython frees them as soon as unreferenced)."""

    live = 0
    peak = 0

    def __init__(self):
        LiveProbe.live += 1
        LiveProbe.peak = max(LiveProbe.peak, LiveProbe.live)

    def __del__(self):
        LiveProbe.live -= 1

    @classmethod
    def reset(cls) -> None:
        cls.live = cls.peak = 0


def segment(image: torch.Tensor) -> dict:
    """Detections of one frame: one per colour present, in an order that depends on the frame content."""
    masks = [image[c] > 128 for c in range(NUM_CLASSES)]
    found = [c for c in range(NUM_CLASSES) if masks[c].any()]
    order = torch.randperm(len(found), generator=torch.Generator().manual_seed(int(image.sum()) % 9973))
    found = [found[i] for i in order.tolist()]
    return {"masks": [masks[c] for c in found], "labels": found, "probe": LiveProbe()}


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def link(previous: dict[int, torch.Tensor], masks: list[torch.Tensor], next_id: int,
         threshold: float = 0.3) -> tuple[list[int], int]:
    """Greedy IoU matching of ``masks`` to the previous masks of tracks; unmatched masks start new tracks."""
    ids, taken = [], set()
    for mask in masks:
        scores = {tid: iou(mask, prev) for tid, prev in previous.items() if tid not in taken}
        best = max(scores, key=scores.get, default=None)
        if best is not None and scores[best] > threshold:
            ids.append(best)
            taken.add(best)
        else:
            ids.append(next_id)
            next_id += 1
    return ids, next_id


def one_hot(labels: list[int]) -> np.ndarray:
    return np.eye(NUM_CLASSES)[labels].reshape(len(labels), NUM_CLASSES)


def write_frame(store: TrackStore, ids: list[int], masks: list[torch.Tensor], labels: list[int]) -> None:
    """The one sink: a frame's masks leave as RLE at once."""
    t = store.start_frame()
    store.add(t, ids, [mask_to_rle(m.numpy()) for m in masks], one_hot(labels))


@dataclass
class ToyConfig:
    window: int = 8
    stride: int = 3


class ToySegmenter(VISMethod):
    """The segmenter every toy method shares (no parameters to learn)."""

    def __init__(self, cfg: ToyConfig | None = None):
        super().__init__()
        self.cfg = cfg or ToyConfig()
        self.segment_calls = 0

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def forward(self, batch):
        raise NotImplementedError("the toy methods are not trained")

    def segment_frame(self, image: torch.Tensor) -> dict:
        self.segment_calls += 1
        return segment(image)


# ----------------------------------------------------------------------------------------- online
class OnlineAssociator:
    def __init__(self):
        self.store, self.previous, self.next_id = TrackStore(NUM_CLASSES), {}, 0

    def update(self, out: dict) -> None:
        ids, self.next_id = link(self.previous, out["masks"], self.next_id)
        self.previous = dict(zip(ids, out["masks"], strict=True))  # masks only: the output dict is dropped
        write_frame(self.store, ids, out["masks"], out["labels"])

    def finalize(self, video_id, category_ids):
        return self.store.finalize(video_id, category_ids, score_threshold=0.5)


@register_method("toy_online", config=ToyConfig)
class ToyOnline(ToySegmenter):
    kind = "online"

    def new_associator(self, output_size):
        return OnlineAssociator()


# ------------------------------------------------------------------------------------------- clip
class ClipAssociator:
    """Tracklets linked inside each window, stitched to the global tracks on the overlapping frames (mean IoU
    over the overlap, as IFC / VITA stitch clips); frames leave as RLE once no later window covers them."""

    def __init__(self):
        self.store = TrackStore(NUM_CLASSES)
        self.pending: dict[int, dict[int, tuple[torch.Tensor, int]]] = {}  # frame -> track -> (mask, label)
        self.next_id = 0
        self.max_pending = 0
        self.covered_until = 0  # frames before this were seen by an earlier window

    def update_window(self, start: int, outs: list[dict], final_before: int) -> None:
        tracklets: dict[int, dict[int, tuple[torch.Tensor, int]]] = {}  # local id -> frame -> (mask, label)
        previous, local_next = {}, 0
        for t, out in enumerate(outs, start):
            ids, local_next = link(previous, out["masks"], local_next)
            previous = dict(zip(ids, out["masks"], strict=True))
            for i, mask, label in zip(ids, out["masks"], out["labels"], strict=True):
                tracklets.setdefault(i, {})[t] = (mask, label)
        taken = set()
        for frames in tracklets.values():
            overlap = [t for t in frames if t < self.covered_until]
            scores = {}
            for t in overlap:
                for tid, (mask, _) in self.pending.get(t, {}).items():
                    scores.setdefault(tid, []).append(iou(frames[t][0], mask))
            mean = {tid: sum(v) / len(overlap) for tid, v in scores.items() if tid not in taken}
            best = max(mean, key=mean.get, default=None)
            if best is None or mean[best] <= 0.5:
                best, self.next_id = self.next_id, self.next_id + 1
            taken.add(best)
            for t, entry in frames.items():
                self.pending.setdefault(t, {}).setdefault(best, entry)  # the earlier window's mask is kept
        self.covered_until = start + len(outs)
        self.max_pending = max(self.max_pending, len(self.pending))
        for t in sorted(t for t in self.pending if t < final_before):
            frame = self.pending.pop(t)
            ids = sorted(frame)
            write_frame(self.store, ids, [frame[i][0] for i in ids], [frame[i][1] for i in ids])

    def finalize(self, video_id, category_ids):
        return self.store.finalize(video_id, category_ids, score_threshold=0.5)


@register_method("toy_clip", config=ToyConfig)
class ToyClip(ToySegmenter):
    kind = "clip"

    @property
    def window(self) -> int:
        return self.cfg.window

    @property
    def stride(self) -> int:
        return self.cfg.stride

    def new_clip_associator(self, output_size, num_frames):
        self.associator = ClipAssociator()
        return self.associator


# ---------------------------------------------------------------------------------------- offline
@register_method("toy_offline", config=ToyConfig)
class ToyOffline(ToySegmenter):
    """Reads the video backward (random access, as Propose-Reduce propagates from key frames), links the whole
    video, then writes the sequences forward. It holds every frame's masks: memory grows with T."""

    kind = "offline"
    bytes_per_frame = NUM_CLASSES * H * W  # bool masks of at most two objects

    def memory_bytes(self, num_frames, frame_size):
        return num_frames * NUM_CLASSES * frame_size[0] * frame_size[1]

    def lower_memory_modes(self, num_frames, frame_size):
        return {"toy_clip (window 8)": self.memory_bytes(8, frame_size)}

    def infer_offline(self, source, category_ids, timing):
        previous, next_id, frames = {}, 0, {}
        for t in reversed(range(len(source))):
            with timing.part("segmenter"):
                out = segment(source[t])
            timing.frames += 1
            with timing.part("association"):
                ids, next_id = link(previous, out["masks"], next_id)
                previous = dict(zip(ids, out["masks"], strict=True))
                frames[t] = (ids, out["masks"], out["labels"])
        store = TrackStore(NUM_CLASSES)
        for t in range(len(source)):
            write_frame(store, *frames[t])
        return store.finalize(source.video_id, category_ids, score_threshold=0.5)


# ------------------------------------------------------------------------------------------ tests
def run(method, frames, cfg=None, timing=None):
    LiveProbe.reset()
    source = tensor_video_source(frames, video_id=1)
    results = infer_video(method, source, CATEGORY_IDS, cfg, timing)
    return results, source


def ap(tmp_path, num_frames, gt, results) -> float:
    return evaluate(write_gt(tmp_path / "gt.json", num_frames, gt), results)["AP"]


def test_registry_records_the_kind_and_checks_the_hooks():
    assert [method_kind_of(m) for m in ("toy_online", "toy_clip", "toy_offline")] == ["online", "clip", "offline"]
    assert method_kind_of("idol") == "online" and method_kind_of("minvis") == "online"
    assert method_kind_of("mask2former_frame") is None

    class NoAssociator(ToySegmenter):
        kind = "online"

    with pytest.raises(TypeError, match="lacks the inference hooks.*new_associator"):
        register_method("toy_broken")(NoAssociator)
    with pytest.raises(TypeError, match="subclass of vis_core.methods.base.VISMethod"):
        register_method("toy_plain")(torch.nn.Linear)
    with pytest.raises(TypeError, match="has no video inference"):
        infer_video(ToySegmenter(), tensor_video_source(torch.zeros(2, 3, 32, 32)), CATEGORY_IDS)  # kind None


@pytest.mark.parametrize(("frame_batch", "mode"), [(1, "streaming"), (4, "streaming"), (1, "hold_all")])
def test_online_method_streams_in_memory_flat_in_T(tmp_path, frame_batch, mode):
    method = build_method("toy_online", {})
    peaks = {}
    for num_frames in (20, 60):
        frames, gt = toy_video(num_frames)
        timing = VideoTiming()
        results, source = run(method, frames, InferConfig(mode=mode, frame_batch=frame_batch), timing)
        peaks[num_frames] = LiveProbe.peak
        assert ap(tmp_path, num_frames, gt, results) == pytest.approx(1.0)
        assert source.reads == num_frames and timing.frames == num_frames
    if mode == "streaming":
        assert peaks[20] == peaks[60] <= 2 * frame_batch  # flat in T: a batch being made + the previous one
    else:
        assert peaks == {20: 20, 60: 60}  # hold_all keeps every frame's outputs, as the official codes do


def test_online_streaming_equals_hold_all():
    frames, _ = toy_video(30)
    method = build_method("toy_online", {})
    streaming, _ = run(method, frames, InferConfig(mode="streaming", frame_batch=3))
    hold_all, _ = run(method, frames, InferConfig(mode="hold_all"))
    assert json.dumps(streaming) == json.dumps(hold_all)


@pytest.mark.parametrize(("window", "stride"), [(8, 3), (6, 4), (5, 1)])  # stitching needs an overlap
def test_clip_method_holds_at_most_one_window(tmp_path, window, stride):
    method = build_method("toy_clip", {"window": window, "stride": stride})
    peaks = {}
    for num_frames in (24, 61):
        frames, gt = toy_video(num_frames)
        method.segment_calls = 0
        results, source = run(method, frames, InferConfig(frame_batch=2))
        peaks[num_frames] = (LiveProbe.peak, method.associator.max_pending)
        assert ap(tmp_path, num_frames, gt, results) == pytest.approx(1.0)
        assert method.segment_calls == source.reads == num_frames  # overlapping windows reuse cached outputs
    assert peaks[24] == peaks[61]  # bounded by the window, not by T
    assert peaks[61][0] <= window + 1 and peaks[61][1] <= window


def test_clip_window_and_stride_come_from_the_config_when_set(tmp_path):
    method = build_method("toy_clip", {"window": 8, "stride": 3})
    frames, gt = toy_video(40)
    results, _ = run(method, frames, InferConfig(window=5, stride=2))
    assert LiveProbe.peak <= 5 + 1 and method.associator.max_pending <= 5
    assert ap(tmp_path, 40, gt, results) == pytest.approx(1.0)


def test_window_starts_cover_the_video_with_the_last_window_at_its_end():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(3, 8, 2) == [0]
    for t, w, s in [(61, 8, 3), (40, 18, 3), (18, 18, 9), (100, 6, 5)]:
        starts = window_starts(t, w, s)
        covered = {f for start in starts for f in range(start, min(start + w, t))}
        assert covered == set(range(t)) and starts[-1] == max(t - w, 0)
        assert all(b - a <= s for a, b in zip(starts, starts[1:], strict=False))


def test_offline_method_gets_random_access_and_its_memory_is_budgeted(tmp_path):
    method = build_method("toy_offline", {})
    frames, gt = toy_video(40)
    timing = VideoTiming()
    results, source = run(method, frames, InferConfig(memory_budget_mb=1), timing)
    assert ap(tmp_path, 40, gt, results) == pytest.approx(1.0)
    assert source.reads == timing.frames == 40

    # 40 frames x 2 objects x 24 x 40 = 76.8 kB: a 0.05 MiB budget refuses the video before reading a frame
    source = tensor_video_source(frames, video_id=1)
    with pytest.raises(MemoryBudgetError) as err:
        infer_video(method, source, CATEGORY_IDS, InferConfig(memory_budget_mb=0.05))
    message = str(err.value)
    assert "video 1 (40 frames at 24x40)" in message and "memory_budget_mb" in message
    assert "modes that fit: toy_clip (window 8)" in message
    assert source.reads == 0
    with pytest.raises(MemoryBudgetError, match="no mode of this method fits"):
        infer_video(method, source, CATEGORY_IDS, InferConfig(memory_budget_mb=0.001))


def test_run_inference_refuses_an_over_budget_video_before_any_video_runs(tmp_path):
    videos = [{"id": vid, "height": H, "width": W, "length": n, "file_names": [f"v{vid}/{t}.jpg" for t in range(n)]}
              for vid, n in ((1, 10), (2, 400))]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"videos": videos, "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
                              "annotations": []}))
    out = tmp_path / "out" / "results.json"
    # 400 frames x 2 x 24 x 40 = 0.73 MiB > 0.5 MiB; 10 frames fit, but nothing runs (no frame exists on disk)
    with pytest.raises(MemoryBudgetError, match=r"video 2 \(400 frames at 24x40\)"):
        run_inference(build_method("toy_offline", {}), gt, tmp_path / "frames", out,
                      InferConfig(memory_budget_mb=0.5), progress=False)
    assert not out.exists() and not (tmp_path / "out" / "results.json.partial.jsonl").exists()
