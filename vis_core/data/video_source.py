"""One video as the inference runner sees it: its length, lazy indexed frame reads, and iteration.

Online methods read a :class:`VideoSource` front to back once; clip methods read each frame once too (the runner
caches a window's per-frame outputs, not frames); offline methods may read any frame any number of times in
any order (Propose-Reduce propagates backward from key frames). Nothing is read before it is asked for and no
frame is kept, so a source costs no memory that grows with the video length.

    source = folder_video_source(annotations, "data/valid/JPEGImages", video_id, min_size=360)
    len(source), source.frame_size, source.output_size    # T, (h, w) the model sees, (H, W) of the results
    image = source[t]                                     # (3, h, w) float32 RGB 0..255
    for t, image in source: ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from vis_core.data.transforms import resize_for_inference, shortest_edge_size

__all__ = ["VideoSource", "folder_video_source", "tensor_video_source"]


class VideoSource:
    """A video of ``num_frames`` frames read on demand by ``read(t) -> (3, h, w)`` float 0..255.

    Args:
        video_id: the dataset id written into results entries.
        num_frames: T.
        read: frame reader; called once per ``source[t]`` (no caching here).
        output_size: ``(H, W)`` of the results masks (the dataset's stored size).
        frame_size: ``(h, w)`` of the frames ``read`` returns (after any test-time resize).
    """

    def __init__(self, video_id: int, num_frames: int, read: Callable[[int], torch.Tensor],
                 output_size: tuple[int, int], frame_size: tuple[int, int]):
        self.video_id = int(video_id)
        self.num_frames = int(num_frames)
        self._read = read
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.reads = 0  # frames read so far (tests and benchmarks check the access pattern)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> torch.Tensor:
        if not isinstance(t, int) or not 0 <= t < self.num_frames:
            raise IndexError(f"video {self.video_id}: frame {t!r} out of range 0..{self.num_frames - 1}")
        self.reads += 1
        return self._read(t)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        for t in range(self.num_frames):
            yield t, self[t]

    def __repr__(self) -> str:
        return (f"VideoSource(video_id={self.video_id}, T={self.num_frames}, frame_size={self.frame_size}, "
                f"output_size={self.output_size})")


def folder_video_source(ann, image_root: str | os.PathLike, video_id: int, min_size: int | None = None,
                        max_size: int | None = None) -> VideoSource:
    """The frames of ``video_id`` of a YouTube-VIS annotation set (path or loaded) under ``image_root``,
    resized with the shortest-edge rule when ``min_size`` is given (the stored size otherwise)."""
    from vis_core.data.clips import read_frame, to_tensor
    from vis_core.data.ytvis import VISFormatError, load_annotations

    ann = load_annotations(ann)
    if video_id not in ann.videos:
        raise VISFormatError(f"{ann.name}: no video with id {video_id}")
    video = ann.videos[video_id]
    if "file_names" not in video:
        raise VISFormatError(f"{ann.name}: video {video_id}: field 'file_names' is needed to read frames")
    root, names = Path(image_root), list(video["file_names"])
    height, width = video["height"], video["width"]
    where = f"{ann.name}: video {video_id}: "

    def read(t: int) -> torch.Tensor:
        frame = read_frame(root / names[t], height, width, f"{where}frame {t}: ")
        return resize_for_inference(to_tensor(frame), min_size, max_size)

    size = (height, width) if min_size is None else shortest_edge_size(height, width, min_size, max_size)
    return VideoSource(video_id, len(names), read, (height, width), size)


def tensor_video_source(frames: torch.Tensor | Callable[[int], torch.Tensor], video_id: int = 0,
                        num_frames: int | None = None, output_size: tuple[int, int] | None = None,
                        frame_size: tuple[int, int] | None = None) -> VideoSource:
    """A source over in-memory frames ``(T, 3, h, w)`` or a function ``t -> (3, h, w)`` (then give
    ``num_frames`` and ``frame_size``); ``output_size`` defaults to the frame size. For tests and benchmarks."""
    if isinstance(frames, torch.Tensor):
        stack = frames
        num_frames, frame_size = stack.shape[0], tuple(stack.shape[-2:])

        def read(t: int) -> torch.Tensor:
            return stack[t]
    else:
        if num_frames is None or frame_size is None:
            raise ValueError("tensor_video_source: a frame function needs num_frames and frame_size")
        read = frames
    return VideoSource(video_id, num_frames, read, tuple(output_size or frame_size), tuple(frame_size))
