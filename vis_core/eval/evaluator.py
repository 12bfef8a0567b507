"""`evaluate()`: load and validate the inputs, run an evaluator implementation, summarise.

Two implementations give identical numbers: ``"fast"`` (:mod:`vis_core.eval.fast`, the default) and
``"reference"`` (:mod:`vis_core.eval.reference`, the official algorithm loop by loop, slow).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vis_core.data.ytvis import VISFormatError, YTVISAnnotations, load_annotations, load_results
from vis_core.eval.params import build_params, occlusion_score
from vis_core.eval.summarize import Accumulated, format_summary, per_category_stats, summarize


def _evaluate_fast(gt, results, params):
    from vis_core.eval.fast import evaluate_fast

    return evaluate_fast(gt, results, params)


def _evaluate_reference(gt, results, params):
    from vis_core.eval.reference import evaluate_reference

    return evaluate_reference(gt, results, params)


IMPLEMENTATIONS = {"fast": _evaluate_fast, "reference": _evaluate_reference}


@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while building many containers.

    Parsing a results file creates millions of dicts and lists, and the collector's full passes walk every
    container built so far, again each time the heap has grown by a quarter: ``json.load`` of a 60 MB results
    file gets about five times slower. Nothing built here holds reference cycles, so pausing the collector
    changes nothing but the time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class EvalOutput:
    """Everything one evaluation produced; ``as_json()`` is the ``vis eval --json`` object."""

    stats: dict[str, float]
    accumulated: Accumulated
    per_category: dict[str, dict[str, float]] | None = None
    n_dropped: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        if self.per_category is not None:
            out["per_category"] = self.per_category
        return out

    def summary(self) -> str:
        return format_summary(self.accumulated, self.stats)


def load_inputs(
    gt: str | os.PathLike | Mapping | YTVISAnnotations, results: str | os.PathLike | list
) -> tuple[YTVISAnnotations, list[dict], int]:
    """Load (paths) or take (parsed) GT and results and validate both.

    Returns ``(gt, kept_results, n_dropped)``.
    """
    with gc_paused():
        gt = load_annotations(gt)
        kept, n_dropped = load_results(results, gt)
    return gt, kept, n_dropped


def check_occlusion(gt: YTVISAnnotations) -> None:
    """OVIS evaluation needs an ``occlusion`` list with at least one non-null label in every GT annotation."""
    for i, ann in enumerate(gt.raw.get("annotations", []) or []):
        where = f"{gt.name}: annotations[{i}] (id {ann['id']}, video_id {ann['video_id']})"
        if "occlusion" not in ann:
            raise VISFormatError(f"{where}: missing field 'occlusion' (needed by --occlusion)")
        try:
            occlusion_score(ann["occlusion"])
        except ValueError:
            raise VISFormatError(
                f"{where}: field 'occlusion' has no non-null label (needed by --occlusion)"
            ) from None


def run_evaluation(
    gt: str | os.PathLike | Mapping | YTVISAnnotations,
    results: str | os.PathLike | list,
    *,
    occlusion: bool = False,
    per_category: bool = False,
    impl: str = "fast",
) -> EvalOutput:
    """Load, validate, evaluate and summarise; see :func:`evaluate` for the arguments."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown evaluator implementation {impl!r}; choose from {sorted(IMPLEMENTATIONS)}")
    t0 = time.perf_counter()
    gt, kept, n_dropped = load_inputs(gt, results)
    if occlusion:
        check_occlusion(gt)
    t1 = time.perf_counter()
    params = build_params(occlusion)
    with gc_paused():  # both implementations build many short-lived containers and no reference cycles
        acc = IMPLEMENTATIONS[impl](gt, kept, params)
    t2 = time.perf_counter()
    out = EvalOutput(stats=summarize(acc), accumulated=acc, n_dropped=n_dropped)
    if per_category:
        out.per_category = per_category_stats(acc)
    out.timings = {"load_s": t1 - t0, "evaluate_s": t2 - t1, "total_s": time.perf_counter() - t0}
    return out


def evaluate(
    gt: str | os.PathLike | Mapping | YTVISAnnotations,
    results: str | os.PathLike | list,
    *,
    occlusion: bool = False,
    per_category: bool = False,
    impl: str = "fast",
) -> dict[str, Any]:
    """Evaluate YouTube-VIS / OVIS results; returns the ``vis eval --json`` object.

    Args:
        gt: annotation file path, parsed annotation dict, or :class:`YTVISAnnotations`.
        results: results file path or parsed results list.
        occlusion: OVIS occlusion ranges (adds AP/AR light, medium, heavy); needs GT ``occlusion`` labels.
        per_category: add ``per_category``: category id -> {AP, AP50, AP75, AR100}.
        impl: ``"fast"`` or ``"reference"`` (same numbers, the reference is the slow official algorithm).

    Returns keys AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl (fractions, -1 where no
    category has a GT in that range), the OVIS occlusion keys with ``occlusion``, and ``per_category``.
    """
    return run_evaluation(gt, results, occlusion=occlusion, per_category=per_category, impl=impl).as_json()
