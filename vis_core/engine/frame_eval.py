"""Image-level COCO mask AP with pycocotools (``COCOeval``, ``iouType="segm"``).

Used to check segmenters frame by frame (overfit tests, "a tiny segmenter reaches a non-trivial frame-level
mask AP"), independently of any tracking. Video-level AP lives in ``vis_core.eval``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["frame_mask_ap"]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def frame_mask_ap(
    predictions: Sequence[Sequence[tuple[float, int, Any]]],
    targets: Sequence[tuple[Any, Any]],
    num_classes: int | None = None,
) -> dict[str, float]:
    """COCO mask AP over a set of images.

    Args:
        predictions: per image, a list of ``(score, label, mask)``, ``mask`` an ``(H, W)`` bool array/tensor.
        targets: per image, ``(labels (N,), masks (N, H, W) bool)``.
        num_classes: number of classes (labels in ``[0, K)``); default: the largest label seen + 1.
    Returns:
        dict(AP, AP50, AP75) in percent (0..100), averaged over the categories present in the targets
        (COCO's rule: a category without ground truth is ignored). AP is 0 when there are no predictions.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"frame_mask_ap: {len(predictions)} prediction lists for {len(targets)} images")
    images, annotations, results = [], [], []
    seen_labels: set[int] = set()
    for image_id, ((labels, masks), preds) in enumerate(zip(targets, predictions, strict=True), start=1):
        labels, masks = _as_numpy(labels).astype(np.int64).reshape(-1), _as_numpy(masks).astype(bool)
        if masks.ndim != 3 or len(masks) != len(labels):
            raise ValueError(
                f"frame_mask_ap: image {image_id - 1}: masks {masks.shape} do not match {len(labels)} labels"
            )
        height, width = masks.shape[1:]
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        for label, mask in zip(labels, masks, strict=True):
            rle = _encode(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "segmentation": rle, "area": float(mask.sum()), "bbox": list(mask_util.toBbox(rle)),
                "iscrowd": 0,
            })
            seen_labels.add(int(label))
        for j, (score, label, mask) in enumerate(preds):
            mask = _as_numpy(mask).astype(bool)
            if mask.shape != (height, width):
                raise ValueError(
                    f"frame_mask_ap: image {image_id - 1} prediction {j}: mask {mask.shape} but the image is "
                    f"{(height, width)}"
                )
            score = float(score)
            if not np.isfinite(score):
                raise ValueError(f"frame_mask_ap: image {image_id - 1} prediction {j}: score is {score}")
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "segmentation": _encode(mask), "score": score})
            seen_labels.add(int(label))
    if not annotations:
        raise ValueError("frame_mask_ap: the targets contain no instance")
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    k = num_classes if num_classes is not None else max(seen_labels) + 1
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(k)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    # stats[0:3] = AP@[.5:.95], AP@.5, AP@.75 (-1 when undefined, e.g. no matching category)
    return {"AP": 100 * max(float(stats[0]), 0.0), "AP50": 100 * max(float(stats[1]), 0.0),
            "AP75": 100 * max(float(stats[2]), 0.0)}
