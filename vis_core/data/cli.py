"""``vis data``: generate, validate and look at VIS datasets.

vis data synth --preset ovis --out data/synth_ovis [--videos 60] [--valid-videos 20] [--seed 0]
               [--height 96] [--width 160] [--frames 20 36] [--objects 5 10] [--coco 200] [--workers 2]
vis data show DIR/valid/instances.json [--image-root DIR/valid/JPEGImages] [--video 1] --out sheet.png
vis data validate DIR/train/instances.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("synth", help="write a deterministic synthetic dataset in the YouTube-VIS layout")
    p.add_argument("--preset", default="ytvis", help="ytvis | ovis | long")
    p.add_argument("--out", required=True, help="output directory (gets train/ and valid/ splits)")
    p.add_argument("--videos", type=int, default=None, help="train videos (preset default when omitted)")
    p.add_argument(
        "--valid-videos", type=int, default=None, help="valid videos (preset default when omitted)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--frames", type=int, nargs=2, metavar=("MIN", "MAX"), default=None, help="video length range"
    )
    p.add_argument(
        "--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=None, help="instances per video"
    )
    p.add_argument(
        "--coco", type=int, default=0, metavar="N", help="also write a COCO set of N single frames"
    )
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")

    p = sub.add_parser("show", help="write a PNG contact sheet of one video with masks and ids")
    p.add_argument("annotations", help="instances.json (YouTube-VIS / OVIS format)")
    p.add_argument(
        "--image-root",
        default=None,
        help="folder holding <video>/<frame>.jpg (default: JPEGImages next to the json)",
    )
    p.add_argument("--video", type=int, default=None, help="video id (default: the first)")
    p.add_argument("--results", default=None, help="draw this results json's predictions instead of the GT")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--frames", type=int, default=16, help="at most this many frames")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stride", type=int, default=None, help="frame step (default: spread over the video)")
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", required=True, help="output PNG")

    p = sub.add_parser("validate", help="check a YouTube-VIS / OVIS annotation file and print a summary")
    p.add_argument("file")


def _synth(args) -> int:
    from vis_core.data.synthetic import generate

    summary = generate(
        args.out,
        args.preset,
        args.seed,
        train_videos=args.videos,
        valid_videos=args.valid_videos,
        coco_images=args.coco,
        workers=args.workers,
        height=args.height,
        width=args.width,
        frames=args.frames,
        objects=args.objects,
    )
    for split, s in summary["splits"].items():
        print(
            f"{split}: {s['videos']} videos, {s['frames']} frames, {s['annotations']} annotations, "
            f"{s['bytes'] / 1e6:.2f} MB, {s['seconds']:.1f} s -> {s['json']}"
        )
    return 0


def _show(args) -> int:
    from vis_core.data.visualize import show_video
    from vis_core.data.ytvis import load_json

    root = args.image_root or str(Path(args.annotations).parent / "JPEGImages")
    results = load_json(args.results) if args.results else None
    show_video(
        args.annotations,
        root,
        args.video,
        out=args.out,
        results=results,
        score_threshold=args.score_threshold,
        max_frames=args.frames,
        start=args.start,
        stride=args.stride,
        cols=args.cols,
        scale=args.scale,
    )
    print(f"wrote {args.out}")
    return 0


def _validate(args) -> int:
    from vis_core.data.ytvis import load_annotations

    ann = load_annotations(args.file)
    n_frames = sum(ann.video_length(v) for v in ann.videos)
    n_masks = sum(s is not None for a in ann.annotations for s in a["segmentations"])
    print(
        json.dumps(
            {
                "file": str(args.file),
                "videos": len(ann.videos),
                "frames": n_frames,
                "categories": len(ann.categories),
                "annotations": len(ann.annotations),
                "masks": n_masks,
                "occlusion_labels": ann.has_occlusion(),
            },
            indent=1,
        )
    )
    return 0


def main(args) -> int:
    from vis_core.data.ytvis import VISFormatError

    handlers = {"synth": _synth, "show": _show, "validate": _validate}
    try:
        return handlers[args.data_command](args)
    except (VISFormatError, ValueError) as e:
        print(f"vis data {args.data_command}: error: {e}", file=sys.stderr)
        return 1
