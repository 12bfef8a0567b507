"""Inference latency and peak memory vs video length: online methods, streaming vs hold_all.

Each measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) belongs to that one
configuration alone; on CUDA the peak is ``torch.cuda.max_memory_allocated``. Frames come from a short
synthetic video played back and forth (ping-pong keeps the motion continuous), generated on the fly, so the
input itself takes no memory that grows with ``T``: what grows is what the runner keeps.

    vis bench --methods idol minvis --modes streaming hold_all --lengths 50 200 1000 --out bench/latency.json
    vis bench ... --run idol=runs/baseline/seed0 --run minvis=runs/minvis_all/seed0   # trained weights

Output (``bench/latency.json``, read by the report builder)::

    {"device": str, "records": [{"method", "kind", "mode", "T", "ms_per_frame", "segmenter_ms_per_frame",
                                  "association_ms_per_frame", "peak_rss_mb", "peak_cuda_mb"}]}
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

__all__ = ["measure", "run_benchmarks", "add_arguments", "main"]

DEFAULT_MODELS = {
    "idol": {"preset": "tiny", "num_classes": 10},
    "minvis": {"preset": "tiny", "num_classes": 10},
}


def pingpong_source(num_frames: int, height: int = 96, width: int = 160, period: int = 24, seed: int = 0):
    """A :class:`~vis_core.data.video_source.VideoSource` of ``num_frames`` frames of a synthetic ``ovis`` video
    played back and forth (only ``period`` frames stored)."""
    import torch

    from vis_core.data.synthetic import make_config, render_video
    from vis_core.data.video_source import tensor_video_source

    video = render_video(make_config("ovis", frames=(period, period), height=height, width=width), seed, 0)
    frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float()
    cycle = list(range(period)) + list(range(period - 2, 0, -1))
    return tensor_video_source(lambda t: frames[cycle[t % len(cycle)]], num_frames=num_frames,
                               frame_size=(height, width))


def _build(method: str, run: str | None):
    from vis_core.engine.runs import load_trained_method
    from vis_core.methods.registry import build_method

    if run:
        return load_trained_method(run)
    return build_method(method, DEFAULT_MODELS.get(method, {"preset": "tiny"})).eval()


def measure(method: str, mode: str, num_frames: int, run: str | None = None, device: str = "cpu",
            threads: int = 1) -> dict:
    """One configuration in this process (call through :func:`run_benchmarks` for a clean peak RSS)."""
    import torch

    from vis_core.engine.infer import InferConfig, VideoTiming, infer_video
    from vis_core.methods.base import method_kind

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _build(method, run).to(device)
    kind = method_kind(model)
    if kind != "online" and mode in ("streaming", "hold_all"):
        raise ValueError(f"{method} is a {kind} method: modes streaming / hold_all are for online methods")
    cfg = InferConfig(mode=mode, device=device)
    timing = VideoTiming()
    category_ids = list(range(1, model.num_classes + 1))
    # warm-up on a few frames so that one-off allocations do not count as per-frame time
    infer_video(model, pingpong_source(3), category_ids, cfg)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = infer_video(model, pingpong_source(num_frames), category_ids, cfg, timing)
    wall = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "method": method, "kind": kind, "mode": mode, "T": num_frames,
        "ms_per_frame": 1000 * wall / num_frames,
        "segmenter_ms_per_frame": 1000 * timing.segmenter_s / num_frames,
        "association_ms_per_frame": 1000 * timing.association_s / num_frames,
        "peak_rss_mb": rss_kb / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "num_results": len(results),
        "trained": bool(run),
    }


def run_benchmarks(methods: list[str], modes: list[str], lengths: list[int], runs: dict[str, str] | None = None,
                   device: str = "cpu", threads: int = 1, progress: bool = True) -> dict:
    """Every (method, mode, T) in a fresh subprocess; returns the ``latency.json`` object."""
    records = []
    for method in methods:
        for mode in modes:
            for t in lengths:
                cmd = [sys.executable, "-m", "vis_core.engine.bench", "--child", method, mode, str(t),
                       "--device", device, "--threads", str(threads)]
                if runs and runs.get(method):
                    cmd += ["--child-run", runs[method]]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"benchmark {method}/{mode}/T={t} failed:\n{out.stderr[-3000:]}")
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                records.append(rec)
                if progress:
                    print(f"{method:7s} {mode:9s} T={t:5d}: {rec['ms_per_frame']:7.2f} ms/frame "
                          f"(assoc {rec['association_ms_per_frame']:.2f}), peak RSS {rec['peak_rss_mb']:.0f} MB",
                          file=sys.stderr)
    return {"device": _device_name(device), "threads": threads, "records": records}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=["idol", "minvis"])
    parser.add_argument("--modes", nargs="+", default=["streaming", "hold_all"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--run", action="append", default=[], metavar="METHOD=RUN_DIR",
                        help="use a trained run's weights for METHOD (default: untrained tiny config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="json to write (default: print)")


def main(args: argparse.Namespace) -> int:
    from vis_core.data.ytvis import save_json

    runs = dict(item.split("=", 1) for item in args.run)
    report = run_benchmarks(args.methods, args.modes, args.lengths, runs, args.device, args.threads)
    if args.out:
        save_json(report, Path(args.out), indent=1)
    else:
        print(json.dumps(report, indent=1))
    return 0


def _child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", nargs=3)
    p.add_argument("--child-run", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    method, mode, t = a.child
    print(json.dumps(measure(method, mode, int(t), a.child_run, a.device, a.threads)))


if __name__ == "__main__":
    _child(sys.argv[1:])
