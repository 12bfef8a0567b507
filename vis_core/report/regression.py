"""``vis check-regression``: fail CI when a fresh metric falls below the committed one beyond its tolerance.

Write the reference once from a metrics directory (``<variant>/seed<k>.json``) and commit it::

    vis check-regression --write-reference --fresh reproductions/ovis_2nd/metrics \\
        --reference reproductions/ovis_2nd/metrics/reference.json

Check a fresh run (a metrics directory, or a summary json such as ``reports/<name>/summary.json``)::

    vis check-regression --reference reproductions/ovis_2nd/metrics/reference.json \\
        --fresh reproductions/ovis_2nd/metrics [--floor 0.005]

Reference json (fractions, like the evaluator)::

    {"format": "vis-regression-reference/2",
     "rule": "tolerance = max(floor, sigmas * spread * sqrt(2 / n))", "floor": 0.005, "sigmas": 5.0,
     "pooled_std": {"AP": 0.009, ...},
     "variants": {"<variant>": {"seeds": [0, 1, 2],
                                "metrics": {"AP": {"mean": 0.41, "std": 0.011, "n": 3, "tolerance": 0.03}}}}}

What the gate must tell apart. A fresh run on another machine is *not* a replay of the committed one: CPU float
paths (vector widths, thread counts, library versions) change the last bits of every reduction, and training
amplifies them into different weights, so each fresh seed is effectively a new draw of the training noise. A
real regression (a broken loss, a tracker bug) moves the mean by more than that noise. So:

* ``spread`` of a metric is the seed standard deviation pooled over every variant of the reference,
  ``sqrt(sum_v (n_v - 1) s_v^2 / sum_v (n_v - 1))``, or the variant's own std when that is larger. Pooling
  matters: a 3-seed std alone has 2 degrees of freedom and is often far below the true spread (a 1-in-10 draw
  is under a third of it), which is how a gate built on it fails on another machine.
* A committed mean and a fresh mean of ``n`` seeds each differ by ``spread * sqrt(2 / n)`` (one standard
  deviation); the tolerance is ``sigmas`` (default 5) of those. With the spread estimated from ~12 degrees of
  freedom and ~50 gated metrics, 4 would fail about one clean rerun in twenty (measured in
  ``tests/test_regression.py``); 5 keeps that near 1% while a drop of ~5 AP on rows with a seed spread of
  1 AP still fails (tolerance 4.1 AP at n = 3).
* ``floor`` (default 0.005 = 0.5 points) covers metrics with no spread (a single seed, deterministic runs).
* Only the metrics named at write time are gated (default :data:`GATED_METRICS`, those present): AP, AP50,
  AP75, AR1, AR10 and the occlusion splits. Size-split metrics (APs, ARl, ...) rest on a handful of tracks on a
  small split; they stay in the report, not in the gate.

``--floor`` at check time can only widen the stored tolerances. The gate compares every (variant, metric) of
the reference with the mean over the fresh seeds present; it exits 1 naming each regression (variant, metric,
old, new, tolerance) and each reference entry the fresh run lacks; improvements beyond the tolerance are
printed as notes and pass. Bad input exits 2 naming the file and field.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vis_core.report import ReportInputError, read_json, write_json_atomic
from vis_core.report.aggregate import Stat, VariantSummary, load_summary, summarize_dir

REFERENCE_FORMAT = "vis-regression-reference/2"
DEFAULT_FLOOR = 0.005
DEFAULT_SIGMAS = 5.0
GATED_METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_light", "AP_medium", "AP_heavy")


def tolerance(
    std: float | None, n: int, floor: float = DEFAULT_FLOOR, sigmas: float = DEFAULT_SIGMAS
) -> float:
    """``max(floor, sigmas * std * sqrt(2 / n))``; the floor alone when there is no spread."""
    if std is None or n < 2:
        return floor
    return max(floor, sigmas * std * math.sqrt(2.0 / n))


def pooled_std(stats: list[Stat]) -> float | None:
    """Seed standard deviation pooled over several variants (``None`` without any variant of n >= 2)."""
    dof = sum(st.n - 1 for st in stats if st.std is not None)
    if dof == 0:
        return None
    return math.sqrt(math.fsum((st.n - 1) * st.std ** 2 for st in stats if st.std is not None) / dof)


def make_reference(
    summary: dict[str, VariantSummary], floor: float = DEFAULT_FLOOR, sigmas: float = DEFAULT_SIGMAS,
    metrics: list[str] | None = None,
) -> dict[str, Any]:
    """Reference json object from aggregated metrics: the named metric keys (default :data:`GATED_METRICS`),
    each with its mean, std, n and tolerance from the pooled spread (module docstring)."""
    wanted = list(metrics) if metrics is not None else list(GATED_METRICS)
    keys = [k for k in wanted if any(k in s.metrics for s in summary.values())]
    pooled = {k: pooled_std([s.metrics[k] for s in summary.values() if k in s.metrics]) for k in keys}
    variants = {}
    for variant, s in summary.items():
        entries = {}
        for key in keys:
            st = s.metrics.get(key)
            if st is None:
                continue
            spread = max((x for x in (st.std, pooled[key]) if x is not None), default=None)
            entries[key] = {"mean": st.mean, "std": st.std, "n": st.n,
                            "tolerance": tolerance(spread, st.n, floor, sigmas)}
        if entries:
            variants[variant] = {"seeds": s.seeds, "metrics": entries}
    return {"format": REFERENCE_FORMAT, "rule": "tolerance = max(floor, sigmas * spread * sqrt(2 / n)), spread = "
                                                "max(variant std, std pooled over variants)",
            "floor": floor, "sigmas": sigmas, "pooled_std": pooled, "variants": variants}


def load_reference(path: str | os.PathLike) -> dict[str, dict[str, dict[str, float]]]:
    """Reference json -> ``{variant: {metric: {"mean", "tolerance"}}}``; errors name file, variant, field."""
    path = Path(path)
    obj = read_json(path)
    variants = obj.get("variants") if isinstance(obj, dict) else None
    if not isinstance(variants, dict) or obj.get("format") not in (REFERENCE_FORMAT, "vis-regression-reference/1"):
        raise ReportInputError(f"{path}: expected a {REFERENCE_FORMAT} object with a 'variants' mapping")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant, entry in obj["variants"].items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(metrics, dict):
            raise ReportInputError(f"{path}: variant {variant!r}: missing field 'metrics'")
        out[variant] = {}
        for key, m in metrics.items():
            for field in ("mean", "tolerance"):
                v = m.get(field) if isinstance(m, dict) else None
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                        (field == "tolerance" and v < 0):
                    raise ReportInputError(f"{path}: variant {variant!r}: field 'metrics.{key}.{field}': "
                                           f"expected a finite number, got {v!r}")
            out[variant][key] = {"mean": float(m["mean"]), "tolerance": float(m["tolerance"])}
    return out


@dataclass(frozen=True)
class Finding:
    variant: str
    metric: str
    old: float
    new: float | None  # None: the fresh run lacks this variant/metric
    tolerance: float

    @property
    def status(self) -> str:
        if self.new is None:
            return "missing"
        if self.new < self.old - self.tolerance:
            return "regressed"
        if self.new > self.old + self.tolerance:
            return "improved"
        return "ok"

    def describe(self) -> str:
        new = "absent" if self.new is None else f"{self.new:.4f} ({self.new - self.old:+.4f})"
        return (f"variant={self.variant} metric={self.metric} old={self.old:.4f} new={new} "
                f"tolerance={self.tolerance:.4f}")


def compare(
    reference: dict[str, dict[str, dict[str, float]]], fresh: dict[str, VariantSummary], floor: float = 0.0
) -> list[Finding]:
    """One finding per reference (variant, metric); the effective tolerance is ``max(stored, floor)``."""
    findings = []
    for variant, metrics in reference.items():
        for key, ref in metrics.items():
            stat = fresh[variant].metrics.get(key) if variant in fresh else None
            findings.append(Finding(variant=variant, metric=key, old=ref["mean"],
                                    new=None if stat is None else stat.mean,
                                    tolerance=max(ref["tolerance"], floor)))
    return findings


# ---------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Compare fresh metrics with committed ones; exit 1 on a regression beyond tolerance."
    parser.add_argument("--reference", required=True, help="committed reference json (read, or written)")
    parser.add_argument("--fresh", required=True,
                        help="metrics dir (<variant>/seed<k>.json) or a summary json "
                             "(reports/<name>/summary.json)")
    parser.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                        help="minimum tolerance, in metric units (fractions; default 0.005 = 0.5 points)")
    parser.add_argument("--write-reference", action="store_true",
                        help="write --reference from the metrics dir --fresh instead of checking")
    parser.add_argument("--sigmas", type=float, default=DEFAULT_SIGMAS,
                        help="with --write-reference: tolerance = max(floor, sigmas * spread * sqrt(2/n))")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help=f"with --write-reference: the gated metric keys (default: {' '.join(GATED_METRICS)})")


def _write_reference(args: argparse.Namespace) -> int:
    fresh = Path(args.fresh)
    if not fresh.is_dir():
        raise ReportInputError(f"{fresh}: --write-reference needs a metrics directory <variant>/seed<k>.json")
    summary = summarize_dir(fresh)
    if not summary:
        raise ReportInputError(f"{fresh}: no <variant>/seed<k>.json metrics files found")
    ref = make_reference(summary, floor=args.floor, sigmas=args.sigmas, metrics=args.metrics)
    write_json_atomic(args.reference, ref)
    n = sum(len(v["metrics"]) for v in ref["variants"].values())
    print(f"wrote {args.reference}: {len(ref['variants'])} variants, {n} metrics")
    return 0


def _check(args: argparse.Namespace) -> int:
    reference = load_reference(args.reference)
    fresh = load_summary(args.fresh)
    findings = compare(reference, fresh, floor=args.floor)
    failed = [f for f in findings if f.status in ("regressed", "missing")]
    for f in findings:
        if f.status == "regressed":
            print(f"REGRESSION: {f.describe()}")
        elif f.status == "missing":
            print(f"MISSING: {f.describe()} (the fresh metrics lack it)")
        elif f.status == "improved":
            print(f"note: improvement beyond tolerance, consider updating the reference: {f.describe()}")
    extra = sorted(set(fresh) - set(reference))
    if extra:
        print(f"note: variants not in the reference (not checked): {', '.join(extra)}")
    ok = sum(f.status in ("ok", "improved") for f in findings)
    print(f"check-regression: {ok}/{len(findings)} metrics within tolerance, {len(failed)} failing "
          f"(reference {args.reference}, fresh {args.fresh})")
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    try:
        return _write_reference(args) if args.write_reference else _check(args)
    except ReportInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
