"""Per-seed evaluator metrics -> mean ± std per variant.

Inputs: ``<metrics_dir>/<variant>/seed<k>.json``, each the object ``vis eval --json`` writes::

    {"AP": 0.41, "AP50": 0.62, "AP75": 0.44, "APs": ..., "APm": ..., "APl": ...,
     "AR1": ..., "AR10": ..., "AR100": ..., "ARs": ..., "ARm": ..., "ARl": ...,
     "AP_light": ..., "AP_medium": ..., "AP_heavy": ..., "AR_light": ..., ...}   # occlusion keys: OVIS only

Every top-level key starting with ``AP`` or ``AR`` is a metric; other keys (counts, timings) are ignored.
Values are fractions in [0, 1]; ``-1`` is the COCO convention for "undefined" (no ground truth of that kind)
and is left out of the mean. ``AP`` is required. Files in a variant directory other than ``seed<k>.json``
are ignored.

Statistics: mean over the seeds that define the metric, and the sample standard deviation (ddof=1), which is
undefined (``None``) for a single seed. Units stay fractions here; the report converts to percent for display.

Summary json (``write_summary`` / ``load_summary``; ``vis check-regression --fresh`` also takes one)::

    {"format": "vis-metrics-summary/1",
     "variants": {"<variant>": {"seeds": [0, 1],
                                "metrics": {"AP": {"mean": 0.41, "std": 0.0141, "n": 2}, ...}}}}
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vis_core.report import ReportInputError, read_json, write_json_atomic

SUMMARY_FORMAT = "vis-metrics-summary/1"
UNDEFINED = -1.0
_SEED_RE = re.compile(r"^seed(\d+)\.json$")


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std of one metric over ``n`` seeds (fractions)."""

    mean: float
    std: float | None  # None when n == 1
    n: int

    def percent_text(self, digits: int = 2) -> str:
        """``"41.00 ± 1.41 (n=2)"``; a single seed prints ``"41.00 (n=1)"`` (no spread to show)."""
        if self.std is None:
            return f"{100 * self.mean:.{digits}f} (n={self.n})"
        return f"{100 * self.mean:.{digits}f} ± {100 * self.std:.{digits}f} (n={self.n})"


@dataclass
class VariantSummary:
    seeds: list[int]
    metrics: dict[str, Stat] = field(default_factory=dict)


def mean_std(values: list[float]) -> Stat:
    """Mean and sample standard deviation (ddof=1; ``None`` for one value) of a non-empty list."""
    if not values:
        raise ValueError("mean_std of an empty list")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Stat(mean=mean, std=std, n=n)


def is_metric_key(key: str) -> bool:
    return key.startswith(("AP", "AR"))


def load_seed_metrics(path: str | os.PathLike) -> dict[str, float]:
    """One evaluator json -> ``{metric: fraction or -1}``; malformed input raises naming file and field."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ReportInputError(f"{path}: expected a json object of metrics, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not is_metric_key(key):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportInputError(f"{path}: field '{key}': expected a finite number, got {value!r}")
        if value != UNDEFINED and not 0.0 <= value <= 1.0:
            raise ReportInputError(
                f"{path}: field '{key}': {value} is not a fraction in [0, 1] (nor -1 for undefined); "
                "metrics files hold fractions, not percent"
            )
        out[key] = float(value)
    if "AP" not in out:
        raise ReportInputError(f"{path}: missing field 'AP'")
    return out


def load_metrics_dir(metrics_dir: str | os.PathLike) -> dict[str, dict[int, dict[str, float]]]:
    """``<metrics_dir>/<variant>/seed<k>.json`` -> ``{variant: {seed: metrics}}``; no directory -> ``{}``."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        return {}
    out: dict[str, dict[int, dict[str, float]]] = {}
    for variant_dir in sorted(p for p in metrics_dir.iterdir() if p.is_dir()):
        seeds = {}
        for f in sorted(variant_dir.iterdir()):
            m = _SEED_RE.match(f.name)
            if m and f.is_file():
                seeds[int(m.group(1))] = load_seed_metrics(f)
        if seeds:
            out[variant_dir.name] = dict(sorted(seeds.items()))
    return out


def summarize(per_seed: dict[str, dict[int, dict[str, float]]]) -> dict[str, VariantSummary]:
    """``{variant: {seed: metrics}}`` -> ``{variant: VariantSummary}``; undefined (-1) values are left out."""
    out = {}
    for variant, seeds in per_seed.items():
        keys = list(dict.fromkeys(k for metrics in seeds.values() for k in metrics))
        summary = VariantSummary(seeds=sorted(seeds))
        for key in keys:
            values = [m[key] for m in seeds.values() if key in m and m[key] != UNDEFINED]
            if values:
                summary.metrics[key] = mean_std(values)
        out[variant] = summary
    return out


def summarize_dir(metrics_dir: str | os.PathLike) -> dict[str, VariantSummary]:
    return summarize(load_metrics_dir(metrics_dir))


# ----------------------------------------------------------------------------------------- summary json
def summary_to_json(summary: dict[str, VariantSummary]) -> dict[str, Any]:
    return {
        "format": SUMMARY_FORMAT,
        "variants": {
            v: {"seeds": s.seeds, "metrics": {k: {"mean": st.mean, "std": st.std, "n": st.n}
                                               for k, st in s.metrics.items()}}
            for v, s in summary.items()
        },
    }


def summary_from_json(obj: Any, path: str | os.PathLike = "<summary>") -> dict[str, VariantSummary]:
    """Parse a summary json object (see module docstring); errors name the file, variant and field."""
    if not isinstance(obj, dict) or not isinstance(obj.get("variants"), dict):
        raise ReportInputError(f"{path}: expected an object with a 'variants' mapping ({SUMMARY_FORMAT})")
    out = {}
    for variant, entry in obj["variants"].items():
        where = f"{path}: variant {variant!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise ReportInputError(f"{where}: missing field 'metrics'")
        seeds = entry.get("seeds", [])
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise ReportInputError(f"{where}: field 'seeds': expected a list of ints")
        summary = VariantSummary(seeds=list(seeds))
        for key, st in entry["metrics"].items():
            mean, std, n = (st.get(k) for k in ("mean", "std", "n")) if isinstance(st, dict) else (None,) * 3
            if not _finite(mean) or not (std is None or _finite(std)) or not isinstance(n, int) or n < 1:
                raise ReportInputError(f"{where}: field 'metrics.{key}': expected {{mean, std, n}}, got {st}")
            summary.metrics[key] = Stat(mean=float(mean), std=None if std is None else float(std), n=n)
        out[variant] = summary
    return out


def write_summary(summary: dict[str, VariantSummary], path: str | os.PathLike) -> Path:
    return write_json_atomic(path, summary_to_json(summary))


def load_summary(path: str | os.PathLike) -> dict[str, VariantSummary]:
    """A metrics directory (``<variant>/seed<k>.json``) or a summary json -> ``{variant: VariantSummary}``."""
    path = Path(path)
    if path.is_dir():
        return summarize_dir(path)
    return summary_from_json(read_json(path), path)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
