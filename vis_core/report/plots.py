"""Report figures: learning curves, AP vs fine-tuning iteration, latency / peak-memory vs video length.

matplotlib is used through ``matplotlib.figure.Figure`` + the Agg canvas only (no pyplot, no global backend
state), so plotting works headless and in parallel. PNGs are written atomically without the "Software"
metadata, so an unchanged input gives a byte-identical figure (DVC sees no spurious change).

Inputs:

- training logs ``<runs_dir>/<variant>/seed<k>/metrics.jsonl``: one json object per logged iteration,
  ``{"iteration": int, "loss": float, "lr": float, "time": float, "<loss term>": float, ...}``
  (only ``iteration`` and ``loss`` are required by the plot);
- AP vs iteration ``curves/<variant>.json`` (``vis stage curve``)::

      {"variant": str, "pretrained": bool,
       "points": [{"seed": int, "iteration": int, "AP": float, "AP50": float, ...}, ...]}

  (iteration 0 is the pre-trained checkpoint the fine-tuning started from when ``pretrained``; one flat list
  of points, the first list of the file, so that ``dvc plots`` reads it as declared in dvc.yaml);
- benchmark ``latency.json``::

      {"device": str,
       "records": [{"method": "idol" | "minvis" | ..., "mode": "streaming" | "hold_all", "T": int,
                    "ms_per_frame": float, "segmenter_ms_per_frame": float,
                    "association_ms_per_frame": float, "peak_rss_mb": float}, ...]}
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from vis_core.io.atomic import atomic_write_bytes
from vis_core.report import ReportInputError, read_json

BENCH_FIELDS = {
    "method": str, "mode": str, "T": int, "ms_per_frame": float, "segmenter_ms_per_frame": float,
    "association_ms_per_frame": float, "peak_rss_mb": float,
}
_SEED_RE = re.compile(r"^seed(\d+)$")


# ---------------------------------------------------------------------------------------------- reading
def read_jsonl_log(path: str | os.PathLike) -> list[dict]:
    """One training log -> records sorted by iteration; a bad line raises naming file, line and field."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportInputError(f"{path}: line {lineno}: malformed json: {e.msg}") from None
            if not isinstance(rec, dict):
                raise ReportInputError(f"{path}: line {lineno}: expected a json object")
            it, loss = rec.get("iteration"), rec.get("loss")
            if isinstance(it, bool) or not isinstance(it, int) or it < 0:
                raise ReportInputError(f"{path}: line {lineno}: field 'iteration': expected an int >= 0, got {it}")
            if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
                raise ReportInputError(f"{path}: line {lineno}: field 'loss': expected a finite number, "
                                       f"got {loss}")
            records.append(rec)
    return sorted(records, key=lambda r: r["iteration"])


def load_training_logs(runs_dir: str | os.PathLike) -> dict[str, dict[int, list[dict]]]:
    """``<runs_dir>/<variant>/seed<k>/metrics.jsonl`` -> ``{variant: {seed: records}}``; no dir -> ``{}``."""
    runs_dir = Path(runs_dir)
    out: dict[str, dict[int, list[dict]]] = {}
    if not runs_dir.is_dir():
        return out
    for variant_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        for seed_dir in sorted(variant_dir.iterdir()):
            m = _SEED_RE.match(seed_dir.name)
            log = seed_dir / "metrics.jsonl"
            if m and log.is_file():
                records = read_jsonl_log(log)
                if records:
                    out.setdefault(variant_dir.name, {})[int(m.group(1))] = records
    return out


def mean_curve(seeds: dict[int, list[dict]], key: str = "loss") -> tuple[list[int], list[float], list[int]]:
    """Mean of ``key`` over the seeds that logged each iteration -> (iters, means, seeds per iteration)."""
    by_iter: dict[int, list[float]] = defaultdict(list)
    for records in seeds.values():
        for r in records:
            if key in r:
                by_iter[r["iteration"]].append(float(r[key]))
    iters = sorted(by_iter)
    return iters, [math.fsum(by_iter[i]) / len(by_iter[i]) for i in iters], [len(by_iter[i]) for i in iters]


def load_curves(path: str | os.PathLike) -> dict:
    """Read and validate an AP-vs-iteration file (schema in the module docstring); returns it with the points
    grouped per seed: ``{"variant", "pretrained", "curves": [{"seed", "points": [...]}, ...]}``."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("points"), list) or not obj["points"]:
        raise ReportInputError(f"{path}: expected an object with a non-empty 'points' list")
    by_seed: dict[int, list[dict]] = {}
    for j, pt in enumerate(obj["points"]):
        seed, it, ap = (pt.get(k) for k in ("seed", "iteration", "AP")) if isinstance(pt, dict) else (None,) * 3
        for name, value in (("seed", seed), ("iteration", it)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ReportInputError(f"{path}: points[{j}]: field '{name}': expected an int >= 0")
        if isinstance(ap, bool) or not isinstance(ap, (int, float)) or not math.isfinite(ap):
            raise ReportInputError(f"{path}: points[{j}]: field 'AP': expected a number")
        by_seed.setdefault(seed, []).append({k: v for k, v in pt.items() if k != "seed"})
    curves = [{"seed": s, "points": pts} for s, pts in by_seed.items()]
    return {**{k: v for k, v in obj.items() if k != "points"}, "curves": curves}


def load_bench(path: str | os.PathLike) -> dict:
    """Read and validate ``latency.json`` (schema in the module docstring)."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
        raise ReportInputError(f"{path}: expected an object with a 'records' list")
    if not isinstance(obj.get("device"), str):
        raise ReportInputError(f"{path}: field 'device': expected a string")
    for i, rec in enumerate(obj["records"]):
        if not isinstance(rec, dict):
            raise ReportInputError(f"{path}: record {i}: expected an object")
        for name, kind in BENCH_FIELDS.items():
            v = rec.get(name)
            if kind is str:
                ok = isinstance(v, str) and bool(v)
            elif kind is int:
                ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            if not ok:
                raise ReportInputError(
                    f"{path}: record {i} ({rec.get('method')}/{rec.get('mode')}, T={rec.get('T')}): "
                    f"field '{name}': expected {kind.__name__}, got {v!r}")
    return obj


# --------------------------------------------------------------------------------------------- plotting
def _new_figure(ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * ncols, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def plot_learning_curves(
    logs: dict[str, dict[int, list[dict]]], out_png: str | os.PathLike, variants: list[str] | None = None
) -> Path | None:
    """Mean training loss vs iteration, one line per variant (mean over seeds); ``None`` without logs."""
    order = [v for v in (variants or []) if v in logs] + sorted(v for v in logs if v not in (variants or []))
    if not order:
        return None
    fig, (ax,) = _new_figure()
    positive = True
    for variant in order:
        iters, means, counts = mean_curve(logs[variant])
        n = max(counts)
        ax.plot(iters, means, label=f"{variant} (n={n})", linewidth=1.4)
        positive &= all(m > 0 for m in means)
    if positive:
        ax.set_yscale("log")  # detection losses fall by orders of magnitude; log keeps late training visible
        _plain_ticks(ax.yaxis)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_ap_curve(curves: dict, out_png: str | os.PathLike, label: str) -> Path:
    """AP and AP50 (percent) vs fine-tuning iteration: one thin line per seed, the mean bold."""
    fig, (ax,) = _new_figure()
    for key, color in (("AP", "C0"), ("AP50", "C1")):
        by_iter: dict[int, list[float]] = defaultdict(list)
        for curve in curves["curves"]:
            pts = [(p["iteration"], 100 * p[key]) for p in curve["points"] if key in p]
            for it, v in pts:
                by_iter[it].append(v)
            if len(curves["curves"]) > 1 and pts:
                ax.plot(*zip(*pts, strict=True), color=color, alpha=0.35, linewidth=0.8)
        iters = sorted(by_iter)
        n = max((len(v) for v in by_iter.values()), default=0)
        ax.plot(iters, [math.fsum(by_iter[i]) / len(by_iter[i]) for i in iters], color=color, marker="o",
                linewidth=1.8, label=f"{key} (mean, n={n})")
    start = "pre-trained weights" if curves.get("pretrained") else "initialisation"
    ax.set_xlabel(f"fine-tuning iteration (0 = {start})")
    ax.set_ylabel(f"video {label} (%)")
    ax.set_title(f"`{curves.get('variant', '?')}`: AP vs iterations", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def _series(records: list[dict], key: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    groups: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["mode"])].append((r["T"], float(r[key])))
    return {g: ([t for t, _ in sorted(v)], [y for _, y in sorted(v)]) for g, v in sorted(groups.items())}


def _plain_ticks(axis) -> None:
    """Log-axis tick labels as plain numbers (``4``, ``200``) rather than ``4 x 10^0``."""
    from matplotlib.ticker import FormatStrFormatter

    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(FormatStrFormatter("%g"))


def _plot_series(ax, records: list[dict], key: str) -> None:
    """One line per (method, mode): colour = method, solid = streaming, dashed = hold_all; x = T (log)."""
    series = _series(records, key)
    methods = sorted({m for m, _ in series})
    for (method, mode), (ts, ys) in series.items():
        ax.plot(ts, ys, label=f"{method} ({mode})", color=f"C{methods.index(method)}",
                linestyle="-" if mode == "streaming" else "--", marker="o", markersize=3.5)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["T"] for r in records}))
    _plain_ticks(ax.xaxis)
    ax.xaxis.set_minor_formatter("")  # only the measured lengths are labelled
    ax.set_xlabel("video length T (frames)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_latency(bench: dict, out_png: str | os.PathLike) -> Path:
    """Per-frame time vs video length T: total (left) and association only (right), per method/mode."""
    fig, (ax_total, ax_assoc) = _new_figure(ncols=2)
    for ax, key, title in ((ax_total, "ms_per_frame", "time per frame"),
                           (ax_assoc, "association_ms_per_frame", "association time per frame")):
        _plot_series(ax, bench["records"], key)
        ax.set_ylabel("ms / frame")
        ax.set_title(f"{title} — {bench['device']}", fontsize=9)
    return _save(fig, out_png)


def plot_memory(bench: dict, out_png: str | os.PathLike) -> Path:
    """Peak resident memory vs video length T: streaming (solid) vs hold-all (dashed), one line per method."""
    fig, (ax,) = _new_figure()
    _plot_series(ax, bench["records"], "peak_rss_mb")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(f"Peak memory — {bench['device']}", fontsize=9)
    return _save(fig, out_png)
