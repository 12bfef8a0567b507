"""The evaluator benchmark script runs end to end (on its tiny case) and reports consistent numbers."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_eval_small(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_eval.py"),
        "--small",
        "--repeats",
        "1",
        "--data-dir",
        str(tmp_path / "case"),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    report = json.loads((tmp_path / "bench_small.json").read_text())
    assert report["max_abs_stat_diff"] == 0.0  # fast and reference agree on the benchmark input
    assert report["case"]["n_videos"] == 6 and report["case"]["n_predictions"] > 0
    for impl in ("fast", "fast_numpy", "reference"):
        b = report["best"][impl]
        assert 0 < b["eval_s"] and 0 < b["load_s"] and b["total_s"] >= b["eval_s"]
        assert b["peak_rss_mb"] >= report["memory"]["rss_after_results_mb"] > 0
    assert report["kernels"]["fast_numpy"] == ["numpy"]  # the variant without kernels really ran without them
    assert set(report["ratios"]) == {"fast", "fast_numpy"}
    for ratios in report["ratios"].values():
        assert set(ratios) == {"eval_wall", "eval_cpu", "end_to_end_wall", "end_to_end_cpu"}
