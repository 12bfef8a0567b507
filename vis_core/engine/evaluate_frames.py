"""Frame-level mask AP of a trained segmenter on an annotated split (every frame an independent image).

    python -m vis_core.engine.evaluate_frames --checkpoint runs/m2f/last.pth \\
        --json data/synth/valid/instances.json --image-root data/synth/valid/JPEGImages --max-images 200

A method takes part by implementing ``predict_frames(images (N, 3, H, W) float 0..255, image_sizes,
output_sizes) -> N dicts(scores (k,), labels (k,), masks (k, H_out, W_out) bool)`` (``mask2former_frame``
does). The checkpoint's stored config rebuilds the method, so no params.yaml is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vis_core.engine.frame_eval import frame_mask_ap

__all__ = ["iter_annotated_frames", "evaluate_frame_ap", "main"]


def iter_annotated_frames(
    json_path_or_ann: Any, image_root: str | Path, frame_stride: int = 1
) -> Iterator[dict[str, Any]]:
    """Frames of an annotation file with their ground truth, video by video.

    Yields:
        dict(image ``(3, H, W)`` float 0..255, labels ``(N,)`` int64 contiguous (sorted category ids),
        masks ``(N, H, W)`` bool, video_id, frame_index) for every ``frame_stride``-th frame.
    """
    from vis_core.data.clips import read_frame, to_tensor
    from vis_core.data.ytvis import decode_segmentation, load_annotations

    ann = load_annotations(json_path_or_ann)
    label_of = {cid: k for k, cid in enumerate(ann.category_ids)}
    root = Path(image_root)
    for vid in ann.video_ids:
        video = ann.videos[vid]
        if "file_names" not in video:
            raise ValueError(f"{ann.name}: video {vid}: field 'file_names' is needed to read frames")
        height, width = video["height"], video["width"]
        anns = ann.anns_by_video[vid]
        for t in range(0, ann.video_length(vid), frame_stride):
            where = f"{ann.name}: video {vid}: frame {t}: "
            image = to_tensor(read_frame(root / video["file_names"][t], height, width, where))
            present = [a for a in anns if a["segmentations"][t] is not None]
            masks = np.stack([decode_segmentation(a["segmentations"][t], height, width) for a in present]) \
                if present else np.zeros((0, height, width), dtype=np.uint8)
            yield {
                "image": image,
                "labels": torch.tensor([label_of[a["category_id"]] for a in present], dtype=torch.int64),
                "masks": torch.from_numpy(masks.astype(bool)),
                "video_id": vid,
                "frame_index": t,
            }


def _batches(frames: Iterable[dict], batch_size: int, max_images: int | None) -> Iterator[list[dict]]:
    batch, count = [], 0
    for frame in frames:
        if max_images is not None and count >= max_images:
            break
        batch.append(frame)
        count += 1
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def evaluate_frame_ap(
    method: nn.Module,
    dataset: Any,
    max_images: int | None = None,
    batch_size: int = 4,
    min_size: int | None = None,
    max_size: int | None = None,
    frame_stride: int = 1,
    num_classes: int | None = None,
) -> dict[str, float]:
    """COCO mask AP (percent) of ``method.predict_frames`` over annotated frames.

    Args:
        method: a trained method with ``predict_frames``; evaluated in eval mode on its own device.
        dataset: a ``VISClipDataset`` (its annotation file and image root are read frame by frame, without
            augmentation), or any iterable of dicts with ``image``, ``labels``, ``masks`` (see
            :func:`iter_annotated_frames`).
        max_images: evaluate only the first ``max_images`` frames.
        min_size, max_size: shortest-edge resize of the input (None: native size); masks are predicted back
            at the native size.
        frame_stride: every ``frame_stride``-th frame of each video (VISClipDataset input only).
    Returns:
        dict(AP, AP50, AP75, images).
    """
    from vis_core.data.transforms import resize_for_inference

    predict = getattr(method, "predict_frames", None)
    if not callable(predict):
        raise TypeError(f"{type(method).__name__} has no predict_frames(images, image_sizes, output_sizes)")
    if hasattr(dataset, "ann") and hasattr(dataset, "image_root"):
        frames: Iterable[dict] = iter_annotated_frames(dataset.ann, dataset.image_root, frame_stride)
        num_classes = num_classes or getattr(dataset, "num_classes", None)
    else:
        frames = dataset
    device = next(method.parameters()).device
    was_training = method.training
    method.eval()
    predictions, targets = [], []
    try:
        for batch in _batches(frames, batch_size, max_images):
            native = [tuple(f["image"].shape[-2:]) for f in batch]
            inputs = [resize_for_inference(f["image"], min_size, max_size) for f in batch]
            sizes = [tuple(x.shape[-2:]) for x in inputs]
            h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
            images = torch.zeros(len(inputs), 3, h, w)
            for i, x in enumerate(inputs):
                images[i, :, : x.shape[-2], : x.shape[-1]] = x
            outputs = predict(images.to(device), sizes, native)
            for frame, out in zip(batch, outputs, strict=True):
                predictions.append([
                    (float(s), int(c), m.cpu().numpy())
                    for s, c, m in zip(out["scores"], out["labels"], out["masks"], strict=True)
                ])
                targets.append((frame["labels"], frame["masks"]))
    finally:
        method.train(was_training)
    if not targets:
        raise ValueError("evaluate_frame_ap: no frames to evaluate")
    result = frame_mask_ap(predictions, targets, num_classes)
    result["images"] = len(targets)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", required=True, help="annotation file with ground truth")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--min-size", type=int, default=None)
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="write the metrics json here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from vis_core.engine.runs import load_trained_method

    method = load_trained_method(args.checkpoint, device=args.device)
    frames = iter_annotated_frames(args.json, args.image_root, args.frame_stride)
    num_classes = method.num_classes
    result = evaluate_frame_ap(method, frames, args.max_images, min_size=args.min_size,
                               max_size=args.max_size, num_classes=num_classes)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from vis_core.io.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
