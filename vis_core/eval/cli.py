"""``vis eval GT.json RESULTS.json [--occlusion] [--per-category] [--json OUT.json]``.

Prints the official-style summary; ``--json`` writes the numbers (fractions in [0, 1], -1 where undefined).
Bad input exits with status 2 and one line naming the file, the entry and the field.
"""

from __future__ import annotations

import argparse
import sys

from vis_core.data.ytvis import VISFormatError, save_json
from vis_core.eval.evaluator import IMPLEMENTATIONS, run_evaluation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", help="ground-truth annotation json (YouTube-VIS / OVIS format)")
    parser.add_argument("results", help="results json: list of {video_id, category_id, score, segmentations}")
    parser.add_argument(
        "--occlusion",
        action="store_true",
        help="OVIS: add AP/AR for light, medium and heavy occlusion (needs GT occlusion labels)",
    )
    parser.add_argument("--per-category", action="store_true", help="add AP, AP50, AP75, AR100 per category")
    parser.add_argument("--json", metavar="OUT.json", help="write the numbers to this json file")
    parser.add_argument(
        "--impl",
        choices=sorted(IMPLEMENTATIONS),
        default="fast",
        help="evaluator implementation (same numbers; 'reference' is the slow official algorithm)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        out = run_evaluation(
            args.gt, args.results, occlusion=args.occlusion, per_category=args.per_category, impl=args.impl
        )
    except VISFormatError as e:
        print(f"vis eval: error: {e}", file=sys.stderr)
        return 2
    if out.n_dropped:
        print(f"vis eval: dropped {out.n_dropped} result(s) whose category is not in the GT", file=sys.stderr)
    print(out.summary())
    if out.per_category is not None:
        print("\nper category (AP / AP50 / AP75 / AR100):")
        for cat, s in out.per_category.items():
            print(f"  {cat:>6s}: {s['AP']:0.3f} / {s['AP50']:0.3f} / {s['AP75']:0.3f} / {s['AR100']:0.3f}")
    if args.json:
        save_json(out.as_json(), args.json, indent=2)
    return 0
