"""Contact sheets: a grid of video frames with instance masks, contours and ids drawn on top.

``vis data show`` uses :func:`show_video` on a YouTube-VIS/OVIS annotation file; reports call the same
function with a results file (``results=``) to show predictions, or :func:`contact_sheet` directly with
in-memory masks.

Every tile shows the frame index, each visible instance as a translucent colour fill with a solid contour and
its id (colour is a fixed function of the id, so an id keeps its colour across frames), an occlusion mark when
the annotation has OVIS labels (``3s`` slight, ``3S`` severe occlusion of id 3) and, in the footer, the ids
that exist in the video but are not visible in this frame (fully occluded or out of the frame).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vis_core.io.atomic import atomic_path

OCCLUSION_MARKS = {"no_occlusion": "", "slight_occlusion": "s", "severe_occlusion": "S"}


@dataclass
class Track:
    """One instance to draw: ``masks[t]`` is an (H, W) bool mask or None (not visible) per sheet frame."""

    track_id: int
    masks: Sequence[np.ndarray | None]
    label: str = ""  # e.g. a category name, shown in the legend
    marks: Sequence[str] | None = None  # optional per-frame suffix after the id (e.g. occlusion marks)


def id_color(track_id: int) -> tuple[int, int, int]:
    """A bright colour that is a fixed function of the id (golden-ratio hue steps keep neighbours apart)."""
    h = (track_id * 0.618033988749895) % 1.0
    s = 0.85 if track_id % 2 else 0.65
    r, g, b = colorsys.hsv_to_rgb(h, s, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing: the fixed bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    return int(font.getbbox("Ag")[3]) + 4


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _upscale(a: np.ndarray, scale: int) -> np.ndarray:
    return a if scale == 1 else np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def draw_frame(
    frame: np.ndarray,
    tracks: Sequence[Track],
    t: int,
    *,
    scale: int = 2,
    alpha: float = 0.45,
    title: str = "",
) -> Image.Image:
    """One tile: (H, W, 3) uint8 frame, upscaled by ``scale``, with the tracks' masks of sheet frame ``t``."""
    img = _upscale(np.asarray(frame, dtype=np.float32), scale)
    labels = []
    absent = []
    for tr in tracks:
        m = tr.masks[t]
        if m is None or not np.any(m):
            absent.append(tr.track_id)
            continue
        m = _upscale(np.asarray(m, dtype=bool), scale)
        color = np.array(id_color(tr.track_id), dtype=np.float32)
        img[m] = (1 - alpha) * img[m] + alpha * color
        img[_boundary(m)] = color
        ys, xs = np.nonzero(m)
        mark = tr.marks[t] if tr.marks is not None else ""
        labels.append(
            (int(xs.min()), int(ys.min()), f"{tr.track_id}{mark or ''}", tuple(int(c) for c in color))
        )
    tile = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(tile)
    font = _font(max(9, 5 * scale))
    for x, y, text, color in labels:
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), fill=(0, 0, 0))
        draw.text((x, y), text, fill=color, font=font)
    foot = title + (f"  absent: {' '.join(map(str, absent))}" if absent else "")
    canvas = Image.new("RGB", (tile.width, tile.height + _line_height(font) + 2), "white")
    canvas.paste(tile, (0, 0))
    ImageDraw.Draw(canvas).text((2, tile.height + 2), foot, fill=(0, 0, 0), font=font)
    return canvas


def contact_sheet(
    frames: Sequence[np.ndarray],
    tracks: Sequence[Track],
    *,
    titles: Sequence[str] | None = None,
    cols: int = 4,
    scale: int = 2,
    alpha: float = 0.45,
    heading: str = "",
) -> Image.Image:
    """Grid of ``len(frames)`` tiles; ``tracks[k].masks`` must have one entry per frame in ``frames``."""
    if not len(frames):
        raise ValueError("contact_sheet: no frames to draw")
    for tr in tracks:
        if len(tr.masks) != len(frames):
            raise ValueError(
                f"contact_sheet: track {tr.track_id} has {len(tr.masks)} masks for {len(frames)} frames"
            )
    titles = titles if titles is not None else [f"t={t}" for t in range(len(frames))]
    tiles = [
        draw_frame(f, tracks, t, scale=scale, alpha=alpha, title=titles[t]) for t, f in enumerate(frames)
    ]
    cols = max(1, min(cols, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    tw, th, gap = tiles[0].width, tiles[0].height, 4
    font = _font(max(10, 6 * scale))
    legend = "  ".join(f"{tr.track_id}={tr.label}" for tr in tracks if tr.label)
    # heading and legend lines are always reserved: sheets of one video share a layout, with or without tracks
    head_lines = [heading, legend]
    head_h = _line_height(font) * len(head_lines) + gap
    sheet = Image.new("RGB", (cols * tw + (cols + 1) * gap, head_h + rows * th + (rows + 1) * gap), "white")
    draw = ImageDraw.Draw(sheet)
    y = gap
    for line in head_lines:
        draw.text((gap, y), line, fill=(0, 0, 0), font=font)
        y += _line_height(font)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(tile, (gap + c * (tw + gap), head_h + gap + r * (th + gap)))
    return sheet


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Atomic PNG write (temp file in the same directory, then rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def select_frames(length: int, max_frames: int = 16, start: int = 0, stride: int | None = None) -> list[int]:
    """Frame indices to show: from ``start`` every ``stride`` frames, or evenly spread when stride is None."""
    if not 0 <= start < length:
        raise ValueError(f"start frame {start} is outside the video (length {length})")
    if stride is None:
        n = min(max_frames, length - start)
        return sorted({int(round(x)) for x in np.linspace(start, length - 1, n)})
    return list(range(start, length, max(1, stride)))[:max_frames]


def show_video(
    annotations,
    image_root: str | os.PathLike,
    video_id: int | None = None,
    *,
    out: str | os.PathLike | None = None,
    results: list[dict] | None = None,
    score_threshold: float = 0.3,
    max_frames: int = 16,
    start: int = 0,
    stride: int | None = None,
    cols: int = 4,
    scale: int = 2,
    with_gt: bool = False,
) -> Image.Image:
    """Contact sheet of one video of a YouTube-VIS/OVIS annotation file (path, dict or YTVISAnnotations).

    Draws the ground truth (ids = annotation ids), or, with ``results`` (entries of a results file), the
    predictions of that video scoring at least ``score_threshold`` (ids = 1-based rank by score); with both
    ``results`` and ``with_gt`` the ground-truth sheet is stacked above the predictions' (same frames).
    ``video_id=None`` takes the first video. Writes a PNG to ``out`` when given.
    """
    if results is not None and with_gt:
        common = dict(video_id=video_id, score_threshold=score_threshold, max_frames=max_frames, start=start,
                      stride=stride, cols=cols, scale=scale)
        sheets = [show_video(annotations, image_root, **common),
                  show_video(annotations, image_root, results=results, **common)]
        stacked = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)), "white")
        stacked.paste(sheets[0], (0, 0))
        stacked.paste(sheets[1], (0, sheets[0].height))
        if out is not None:
            save_png(stacked, out)
        return stacked
    from vis_core.data.ytvis import VISFormatError, decode_segmentation, load_annotations

    ann = load_annotations(annotations)
    vid = video_id if video_id is not None else ann.video_ids[0]
    if vid not in ann.videos:
        raise VISFormatError(f"{ann.name}: no video with id {vid}")
    video = ann.videos[vid]
    if "file_names" not in video:
        raise VISFormatError(f"{ann.name}: video {vid}: field 'file_names' is needed to show frames")
    H, W = video["height"], video["width"]
    idx = select_frames(len(video["file_names"]), max_frames, start, stride)
    frames = [_read_rgb(Path(image_root) / video["file_names"][t], H, W) for t in idx]
    cat_names = {c["id"]: c["name"] for c in ann.categories}

    def masks_of(segs):
        return [decode_segmentation(segs[t], H, W).astype(bool) if segs[t] is not None else None for t in idx]

    tracks = []
    if results is None:
        for a in ann.anns_by_video[vid]:
            occ = a.get("occlusion")
            marks = [OCCLUSION_MARKS.get(occ[t], "") if occ and occ[t] else "" for t in idx] if occ else None
            tracks.append(
                Track(a["id"], masks_of(a["segmentations"]), cat_names.get(a["category_id"], "?"), marks)
            )
        what = "ground truth"
    else:
        preds = sorted(
            (r for r in results if r["video_id"] == vid and r["score"] >= score_threshold),
            key=lambda r: -r["score"],
        )
        # a track may be listed once per category (IDOL writes every class above 0.05): draw its best entry
        seen, unique = set(), []
        for r in preds:
            key = tuple(None if m is None else str(m.get("counts")) for m in r["segmentations"])
            if key not in seen:
                seen.add(key)
                unique.append(r)
        for k, r in enumerate(unique):
            label = f"{cat_names.get(r['category_id'], '?')} {r['score']:.2f}"
            tracks.append(Track(k + 1, masks_of(r["segmentations"]), label))
        what = f"predictions (score >= {score_threshold})"
    name = video["file_names"][0].split("/")[0]
    heading = f"{ann.name}  video {vid} ({name}, {len(video['file_names'])} frames, {H}x{W})  {what}"
    sheet = contact_sheet(
        frames, tracks, titles=[f"t={t}" for t in idx], cols=cols, scale=scale, heading=heading
    )
    if out is not None:
        save_png(sheet, out)
    return sheet


def _read_rgb(path: Path, height: int, width: int) -> np.ndarray:
    from vis_core.data.ytvis import VISFormatError

    if not path.is_file():
        raise VISFormatError(f"{path}: frame image not found")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    if arr.shape[:2] != (height, width):
        raise VISFormatError(
            f"{path}: image is {arr.shape[0]}x{arr.shape[1]}, annotation says {height}x{width}"
        )
    return arr
