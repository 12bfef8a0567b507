"""Video mask IoU between tracks, as the YouTube-VIS evaluator defines it (``youtubevos/cocoapi``
``ytvoseval.computeIoU``)::

    IoU(a, b) = sum_t |a_t & b_t| / sum_t |a_t | b_t|

A frame where one track is absent (None) adds the other track's area to the union and nothing to the
intersection, which is exactly what an empty mask does, so None and an empty mask are interchangeable here.
Two tracks with an empty union have IoU 0 (the evaluator's convention).

Two forms share the rule:

* :func:`video_iou_rle`: tracks as lists of per-frame RLEs / None (results json, ensembling, multi-scale);
* :func:`video_iou_dense`: tracks as ``(N, T, H, W)`` tensors (Propose-Reduce sequence masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import Tensor

from vis_core.data.ytvis import to_compressed_rle

__all__ = ["video_iou_rle", "video_iou_dense", "iou_from_sums"]

Track = Sequence[dict | None]


def iou_from_sums(inter: np.ndarray | Tensor, area_a, area_b):
    """``inter / (area_a[:, None] + area_b[None, :] - inter)`` with 0 where the union is 0."""
    union = area_a[:, None] + area_b[None, :] - inter
    if isinstance(inter, Tensor):
        return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _frame_rles(tracks: Sequence[Track], t: int, size: list[int], name: str):
    """The present RLEs of frame ``t`` (bytes counts), their tracks' indices and their areas."""
    rles, idx = [], []
    for i, track in enumerate(tracks):
        seg = track[t]
        if seg is None:
            continue
        if list(seg["size"]) != size:
            raise ValueError(
                f"video_iou_rle: {name}[{i}] frame {t}: mask size {list(seg['size'])}, expected {size}"
            )
        rles.append(to_compressed_rle(seg, *size))
        idx.append(i)
    areas = mask_util.area(rles).astype(np.float64) if rles else np.zeros(0)
    return rles, idx, areas


def video_iou_rle(tracks_a: Sequence[Track], tracks_b: Sequence[Track] | None = None) -> np.ndarray:
    """Pairwise video mask IoU of two sets of tracks given as per-frame RLEs (or None).

    Args:
        tracks_a: ``Na`` tracks, each a list of ``T`` RLE dicts (string, bytes or list counts) or None.
        tracks_b: ``Nb`` tracks of the same video (``T`` frames, same mask size); None -> ``tracks_a``.
    Returns:
        ``(Na, Nb)`` float64 IoU matrix.

    Per frame, one ``pycocotools.mask.iou`` call gives every pair's IoU; with the areas known the
    intersection is ``iou * (area_a + area_b) / (1 + iou)``, an integer, so it is rounded back exactly.
    """
    same = tracks_b is None
    tracks_b = tracks_a if same else tracks_b
    na, nb = len(tracks_a), len(tracks_b)
    inter = np.zeros((na, nb), dtype=np.float64)
    area_a = np.zeros(na, dtype=np.float64)
    area_b = np.zeros(nb, dtype=np.float64)
    if na == 0 or nb == 0:
        return inter
    lengths = {len(t) for t in tracks_a} | {len(t) for t in tracks_b}
    if len(lengths) != 1:
        raise ValueError(f"video_iou_rle: tracks have different frame counts {sorted(lengths)}")
    present = (seg for tracks in (tracks_a, tracks_b) for track in tracks for seg in track if seg is not None)
    first = next(present, None)
    if first is None:  # every track empty: IoU 0 everywhere
        return inter
    size = list(first["size"])
    for t in range(lengths.pop()):
        ra, ia, aa = _frame_rles(tracks_a, t, size, "tracks_a")
        rb, ib, ab = (ra, ia, aa) if same else _frame_rles(tracks_b, t, size, "tracks_b")
        area_a[ia] += aa
        area_b[ib] += ab
        if not ra or not rb:
            continue
        iou = np.asarray(mask_util.iou(ra, rb, [0] * len(rb)), dtype=np.float64).reshape(len(ra), len(rb))
        inter[np.ix_(ia, ib)] += np.rint(iou * (aa[:, None] + ab[None, :]) / (1.0 + iou))
    return iou_from_sums(inter, area_a, area_b)


def video_iou_dense(masks_a: Tensor, masks_b: Tensor | None = None, threshold: float | None = None) -> Tensor:
    """Pairwise video mask IoU of dense tracks.

    Args:
        masks_a: ``(Na, T, H, W)`` bool or 0/1 masks (or probabilities with ``threshold``).
        masks_b: ``(Nb, T, H, W)``; None -> ``masks_a``.
        threshold: if given, masks are binarised as ``masks >= threshold`` first.
    Returns:
        ``(Na, Nb)`` float32 IoU matrix.
    """
    masks_b = masks_a if masks_b is None else masks_b
    if masks_a.shape[1:] != masks_b.shape[1:]:
        raise ValueError(f"video_iou_dense: shapes {tuple(masks_a.shape)} and {tuple(masks_b.shape)} differ")
    if threshold is not None:
        masks_a, masks_b = masks_a >= threshold, masks_b >= threshold
    a = masks_a.flatten(1).float()
    b = masks_b.flatten(1).float()
    return iou_from_sums(a @ b.T, a.sum(1), b.sum(1))
