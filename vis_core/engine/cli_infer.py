"""``vis infer``: run a trained method (online, clip or offline) over a video set and write a YouTube-VIS
results json, through the one runner (:mod:`vis_core.engine.infer`).

    vis infer --run runs/idol/seed0 --gt data/valid/instances.json --image-root data/valid/JPEGImages \\
        --out outputs/idol/results.json [--scales 96 128] [--mode hold_all] [--set model.key=value ...]
        [--window 18 --stride 3] [--memory-budget-mb 8000]

``--run`` is a training output directory (``config.yaml`` + ``model_final.pth`` or ``last.pth``, as written
by ``vis train``) or a checkpoint file of one (:func:`vis_core.engine.runs.load_trained_method`); ``--set``
overrides test-time keys of the method's config (tracker thresholds, ...).
"""

from __future__ import annotations

import argparse
import sys

import torch

from vis_core.engine.config import ConfigError
from vis_core.engine.infer import InferConfig, MemoryBudgetError, run_inference
from vis_core.engine.runs import load_trained_method
from vis_core.io.weights import UnsafeCheckpointError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True,
                        help="training output dir (config.yaml + checkpoint), or a checkpoint file of one")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: model_final.pth or last.pth)")
    parser.add_argument("--gt", required=True, help="annotation json whose videos are processed")
    parser.add_argument("--image-root", required=True, help="folder of <video>/<frame>.jpg")
    parser.add_argument("--out", required=True, help="results json to write")
    parser.add_argument("--mode", choices=("streaming", "hold_all"), default="streaming")
    parser.add_argument("--min-size", type=int, default=None, help="test shortest side (default: as stored)")
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--scales", type=int, nargs="*", default=[], help="multi-scale test shortest sides")
    parser.add_argument("--window", type=int, default=None, help="clip methods: frames per window")
    parser.add_argument("--stride", type=int, default=None, help="clip methods: frames between windows")
    parser.add_argument("--memory-budget-mb", type=float, default=None,
                        help="offline methods: refuse a video predicted to need more (default: half the RAM)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--timing", default=None, help="write segmenter/association timing json here")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        method = load_trained_method(args.run, args.checkpoint, args.overrides, args.device)
    except (ConfigError, FileNotFoundError, UnsafeCheckpointError) as e:
        print(f"vis infer: {e}", file=sys.stderr)
        return 1
    try:
        cfg = InferConfig(min_size=args.min_size, max_size=args.max_size, scales=list(args.scales),
                          mode=args.mode, device=args.device, window=args.window, stride=args.stride,
                          memory_budget_mb=args.memory_budget_mb)
    except ValueError as e:
        print(f"vis infer: {e}", file=sys.stderr)
        return 1
    try:
        out = run_inference(method, args.gt, args.image_root, args.out, cfg, progress=not args.no_progress,
                            timing_path=args.timing)
    except MemoryBudgetError as e:  # refused before the video is read: nothing half-written for it
        print(f"vis infer: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
