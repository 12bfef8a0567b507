"""``vis ensemble``: fuse several YouTube-VIS/OVIS results files into one (rule: vis_core.tracking.ensemble).

    vis ensemble --gt-videos GT.json RESULTS1.json RESULTS2.json ... --out OUT.json [--weights 2 1 ...]
"""

from __future__ import annotations

import argparse
import sys

from vis_core.data.ytvis import VISFormatError
from vis_core.tracking.ensemble import CALIBRATIONS, EnsembleConfig, ensemble_files
from vis_core.tracking.sequence_nms import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = EnsembleConfig()
    parser.add_argument("results", nargs="+", help="results json files (one per model / test scale)")
    parser.add_argument("--gt-videos", required=True, help="annotation or video-info json of the split")
    parser.add_argument("--out", required=True, help="fused results json (written atomically)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per results file")
    parser.add_argument("--iou-thr", type=float, default=d.iou_threshold, help="clustering video IoU")
    parser.add_argument(
        "--category-agnostic", action="store_true", help="cluster across categories (category: weighted vote)"
    )
    parser.add_argument(
        "--any-per-model", action="store_true", help="let several entries of one model join a cluster"
    )
    parser.add_argument("--vote-thr", type=float, default=d.vote_threshold, help="fraction of the cluster's vote")
    parser.add_argument("--vote-weighting", choices=("score", "model"), default=d.vote_weighting,
                        help="a member's mask vote: model weight x calibrated score, or the model weight")
    parser.add_argument("--score-mode", choices=("members", "all_models"), default=d.score_mode)
    parser.add_argument("--calibration", choices=CALIBRATIONS, default=d.calibration,
                        help="per-model score calibration over its whole results file")
    parser.add_argument("--nms", choices=METHODS, default=d.nms_method, help="sequence NMS method")
    parser.add_argument("--nms-iou-thr", type=float, default=d.nms_iou_threshold)
    parser.add_argument("--nms-category-agnostic", action="store_true")
    parser.add_argument("--nms-score-thr", type=float, default=d.nms_score_threshold)
    parser.add_argument("--max-per-video", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = EnsembleConfig(
            iou_threshold=args.iou_thr,
            category_aware=not args.category_agnostic,
            one_per_model=not args.any_per_model,
            vote_threshold=args.vote_thr,
            vote_weighting=args.vote_weighting,
            score_mode=args.score_mode,
            calibration=args.calibration,
            nms_method=args.nms,
            nms_iou_threshold=args.nms_iou_thr,
            nms_category_aware=not args.nms_category_agnostic,
            nms_score_threshold=args.nms_score_thr,
            max_per_video=args.max_per_video,
        )
        path = ensemble_files(
            args.gt_videos, args.results, args.out, args.weights, cfg, progress=not args.no_progress
        )
    except (VISFormatError, ValueError) as e:
        print(f"vis ensemble: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
