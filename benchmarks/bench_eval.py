"""Evaluator benchmark: fast vs reference on input shaped like the official YouTube-VIS timing case.

    python benchmarks/bench_eval.py                    # full case (generated once, ~25 s), writes JSON
    python benchmarks/bench_eval.py --small            # a seconds-long smoke run of the same pipeline

The case (150 videos x 36 frames at 180x320-360x640, ~1,900 GT tracks mostly in crowded single-category
videos, ~11,900 predictions with a mask in every frame) comes from ``vis_core.eval.synthetic_case`` and is
cached under ``--data-dir``. Every measurement runs in a fresh subprocess so that its peak RSS is its own:
the child loads and validates the inputs, evaluates, and reports wall and CPU times per phase, its RSS after
parsing the GT and the results, and its peak RSS. The fast path runs ``--repeats`` times (best time kept),
with its compiled kernels when they are built ("fast") and again on its numpy code alone ("fast_numpy",
``VIS_EVAL_KERNELS=numpy``); the reference runs once. The JSON written to ``--out`` holds the raw
measurements, the ratios of each fast variant to the reference, and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SMALL = {"n_videos": 6, "n_frames": 6, "n_categories": 5, "crowded_objects": (4, 8), "false_positives": 4}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(impl: str, gt_path: str, res_path: str, occlusion: bool) -> dict:
    """One measured run (in its own process): load + validate, evaluate, summarise."""
    from vis_core.data.ytvis import load_annotations, load_results
    from vis_core.eval.evaluator import check_occlusion, gc_paused
    from vis_core.eval.params import build_params
    from vis_core.eval.summarize import summarize

    impls = {
        "fast": "vis_core.eval.fast:evaluate_fast",
        "reference": "vis_core.eval.reference:evaluate_reference",
    }
    from vis_core.eval.runs import kernels_in_use

    module, fn = impls[impl].split(":")
    evaluate_impl = getattr(__import__(module, fromlist=[fn]), fn)
    out = {"impl": impl, "kernels": "compiled" if kernels_in_use() else "numpy", "rss_base_mb": _rss_mb()}
    w0, c0 = time.perf_counter(), time.process_time()
    with gc_paused():
        gt = load_annotations(gt_path)
        out["rss_after_gt_mb"] = _rss_mb()
        results, _ = load_results(res_path, gt)
        out["rss_after_results_mb"] = _rss_mb()
    if occlusion:
        check_occlusion(gt)
    w1, c1 = time.perf_counter(), time.process_time()
    with gc_paused():
        acc = evaluate_impl(gt, results, build_params(occlusion))
    stats = summarize(acc)
    w2, c2 = time.perf_counter(), time.process_time()
    out.update(
        load_s=w1 - w0,
        load_cpu_s=c1 - c0,
        eval_s=w2 - w1,
        eval_cpu_s=c2 - c1,
        total_s=w2 - w0,
        total_cpu_s=c2 - c0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        stats=stats,
        n_videos=len(gt.videos),
        n_gt_tracks=len(gt.annotations),
        n_predictions=len(results),
        n_masks=sum(len(r["segmentations"]) for r in results),
    )
    return out


def _run_child(impl: str, gt_path: Path, res_path: Path, occlusion: bool, numpy_only: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--gt", str(gt_path), "--results", str(res_path)]
    if occlusion:
        cmd.append("--occlusion")
    env = os.environ | ({"VIS_EVAL_KERNELS": "numpy"} if numpy_only else {})
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t  # includes interpreter start and imports
    return out


def ensure_case(data_dir: Path, small: bool, seed: int) -> tuple[Path, Path]:
    """Generate the case once; a sidecar records its configuration so a changed config regenerates it."""
    from vis_core.eval.synthetic_case import CaseConfig, write_case

    cfg = CaseConfig(seed=seed, occlusion=True, **(SMALL if small else {}))
    tag = json.dumps(cfg.__dict__, sort_keys=True, default=list)
    meta = data_dir / "case_config.json"
    gt_path, res_path = data_dir / "gt.json", data_dir / "results.json"
    if not (meta.is_file() and meta.read_text() == tag and gt_path.is_file() and res_path.is_file()):
        t = time.perf_counter()
        print(f"generating the timing case into {data_dir} ...", file=sys.stderr)
        write_case(data_dir, cfg)
        meta.write_text(tag)
        print(f"  done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return gt_path, res_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="outputs/bench_eval/case")
    ap.add_argument("--out", default="benchmarks/results/bench_eval.json")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the fast path (best kept)")
    ap.add_argument("--reference-repeats", type=int, default=1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-numpy", action="store_true", help="do not measure the fast path without its kernels")
    ap.add_argument("--occlusion", action="store_true", help="OVIS evaluation (18 stats)")
    ap.add_argument("--small", action="store_true", help="a tiny case: checks the pipeline in seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["fast", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.gt, args.results, args.occlusion)))
        return 0

    data_dir = Path(args.data_dir if not args.small else f"{args.data_dir}_small")
    gt_path, res_path = ensure_case(data_dir, args.small, args.seed)
    load_before = os.getloadavg()
    runs = {"fast": [_run_child("fast", gt_path, res_path, args.occlusion) for _ in range(args.repeats)]}
    if not args.skip_numpy:
        runs["fast_numpy"] = [
            _run_child("fast", gt_path, res_path, args.occlusion, numpy_only=True) for _ in range(args.repeats)
        ]
    if not args.skip_reference:
        runs["reference"] = [
            _run_child("reference", gt_path, res_path, args.occlusion) for _ in range(args.reference_repeats)
        ]
    best = {
        k: {
            m: min(r[m] for r in v)
            for m in ("load_s", "load_cpu_s", "eval_s", "eval_cpu_s", "total_s", "total_cpu_s", "peak_rss_mb")
        }
        for k, v in runs.items()
    }
    f0 = runs["fast"][0]
    parsed_results_mb = f0["rss_after_results_mb"] - f0["rss_after_gt_mb"]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "case": {k: f0[k] for k in ("n_videos", "n_gt_tracks", "n_predictions", "n_masks")}
        | {"gt_mb": gt_path.stat().st_size / 2**20, "results_mb": res_path.stat().st_size / 2**20},
        "best": best,
        "memory": {
            "rss_base_mb": f0["rss_base_mb"],
            "rss_after_gt_mb": f0["rss_after_gt_mb"],
            "rss_after_results_mb": f0["rss_after_results_mb"],
            "parsed_results_mb": parsed_results_mb,
            "fast_peak_rss_mb": best["fast"]["peak_rss_mb"],
            # what the run holds at its peak beyond the bare interpreter + imports, per MB of parsed results
            "fast_peak_above_base_over_parsed_results": (best["fast"]["peak_rss_mb"] - f0["rss_base_mb"])
            / parsed_results_mb,
        },
        "runs": runs,
    }
    report["kernels"] = {k: sorted({r["kernels"] for r in v}) for k, v in runs.items() if k != "reference"}
    if "reference" in best:
        ref = best["reference"]
        report["ratios"] = {
            variant: {
                "eval_wall": ref["eval_s"] / best[variant]["eval_s"],
                "eval_cpu": ref["eval_cpu_s"] / best[variant]["eval_cpu_s"],
                "end_to_end_wall": ref["total_s"] / best[variant]["total_s"],
                "end_to_end_cpu": ref["total_cpu_s"] / best[variant]["total_cpu_s"],
            }
            for variant in best
            if variant != "reference"
        }
        report["max_abs_stat_diff"] = max(
            abs(runs["reference"][0]["stats"][k] - r["stats"][k])
            for variant in best
            if variant != "reference"
            for r in runs[variant]
            for k in r["stats"]
        )
    out = Path(args.out if not args.small else str(Path(args.out).with_suffix("")) + "_small.json")
    from vis_core.data.ytvis import save_json

    save_json(report, out, indent=2)
    print(
        json.dumps(
            {k: report[k] for k in ("case", "kernels", "best", "memory", "ratios", "max_abs_stat_diff") if k in report},
            indent=2,
        )
    )
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
