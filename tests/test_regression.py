"""`vis check-regression`: tolerance rule, reference round trip, fails on an injected regression only."""

import json
import math
import shutil

import pytest

from vis_core.cli import main as vis_main
from vis_core.report import ReportInputError
from vis_core.report.aggregate import summarize_dir, write_summary
from vis_core.report.regression import compare, load_reference, make_reference, tolerance

# variant -> per-seed AP (fractions); the other metrics follow AP at fixed offsets
SEEDS = {"baseline": [0.30, 0.32, 0.31], "boundary": [0.35, 0.35, 0.35]}


def write_metrics(root, seeds=SEEDS, shift=None):
    """Write ``<root>/<variant>/seed<k>.json``; ``shift = (variant, metric, delta)`` perturbs every seed."""
    for variant, aps in seeds.items():
        for k, ap in enumerate(aps):
            m = {"AP": ap, "AP50": ap + 0.2, "AR10": ap + 0.1}
            if shift and shift[0] == variant:
                m[shift[1]] += shift[2]
            path = root / variant / f"seed{k}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(m))
    return root


def test_tolerance_rule():
    assert tolerance(None, 1, floor=0.005) == 0.005  # one seed: no spread, floor only
    assert tolerance(0.0, 3, floor=0.005) == 0.005  # deterministic runs: floor
    assert tolerance(0.01, 2, floor=0.005) == pytest.approx(3 * 0.01 * math.sqrt(2 / 2))
    assert tolerance(0.01, 8, floor=0.001, sigmas=2) == pytest.approx(2 * 0.01 * math.sqrt(2 / 8))


def test_make_reference_values(tmp_path):
    ref = make_reference(summarize_dir(write_metrics(tmp_path / "m")), floor=0.005)
    base = ref["variants"]["baseline"]["metrics"]["AP"]
    assert base["mean"] == pytest.approx(0.31) and base["n"] == 3
    assert base["std"] == pytest.approx(0.01)  # sample std of 0.30, 0.32, 0.31
    assert base["tolerance"] == pytest.approx(3 * 0.01 * math.sqrt(2 / 3))
    assert ref["variants"]["boundary"]["metrics"]["AP"]["tolerance"] == 0.005
    only = make_reference(summarize_dir(tmp_path / "m"), metrics=["AP"])
    assert set(only["variants"]["baseline"]["metrics"]) == {"AP"}


def _reference(tmp_path, capsys):
    metrics = write_metrics(tmp_path / "metrics")
    ref = tmp_path / "metrics" / "reference.json"
    assert vis_main(["check-regression", "--write-reference", "--fresh", str(metrics),
                     "--reference", str(ref)]) == 0
    assert "2 variants, 6 metrics" in capsys.readouterr().out
    return ref


def test_gate_passes_on_identical_metrics(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    # reference.json sits inside the metrics dir: it must not be read as a variant
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(tmp_path / "metrics")]) == 0
    out = capsys.readouterr().out
    assert "6/6 metrics within tolerance, 0 failing" in out and "REGRESSION" not in out


def test_gate_fails_on_injected_regression_and_names_it(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    fresh = write_metrics(tmp_path / "fresh", shift=("boundary", "AP50", -0.02))  # tolerance there is 0.005
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(fresh)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: variant=boundary metric=AP50 old=0.5500 new=0.5300 (-0.0200) tolerance=0.0050" in out
    assert out.count("REGRESSION") == 1 and "1 failing" in out
    # a wider floor at check time absorbs it
    args = ["check-regression", "--reference", str(ref), "--fresh", str(fresh)]
    assert vis_main(args + ["--floor", "0.03"]) == 0


def test_gate_small_drop_within_tolerance_passes(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    fresh = write_metrics(tmp_path / "fresh", shift=("baseline", "AP", -0.02))  # tolerance 0.0245 (3 seeds)
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(fresh)]) == 0


def test_gate_improvement_passes_with_a_note(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    fresh = write_metrics(tmp_path / "fresh", shift=("boundary", "AP", +0.05))
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(fresh)]) == 0
    assert "note: improvement beyond tolerance" in capsys.readouterr().out


def test_gate_fails_on_missing_variant_and_reads_summary_json(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    fresh = write_metrics(tmp_path / "fresh")
    shutil.rmtree(fresh / "boundary")
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(fresh)]) == 1
    assert "MISSING: variant=boundary metric=AP" in capsys.readouterr().out
    # a summary json (as written into reports/<name>/summary.json) is accepted as --fresh
    write_summary(summarize_dir(tmp_path / "metrics"), tmp_path / "summary.json")
    summary = str(tmp_path / "summary.json")
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", summary]) == 0


def test_compare_uses_mean_over_present_seeds(tmp_path):
    reference = make_reference(summarize_dir(write_metrics(tmp_path / "m")))
    ref = load_reference(_write(tmp_path / "r.json", reference))
    fresh = summarize_dir(write_metrics(tmp_path / "f", seeds={"baseline": [0.30, 0.32], "boundary": [0.35]}))
    findings = {(f.variant, f.metric): f for f in compare(ref, fresh)}
    assert findings[("baseline", "AP")].new == pytest.approx(0.31)
    assert all(f.status == "ok" for f in findings.values())


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_bad_reference_is_a_clear_error(tmp_path, capsys):
    bad = _write(tmp_path / "ref.json", {"format": "vis-regression-reference/1",
                                         "variants": {"baseline": {"metrics": {"AP": {"mean": 0.3}}}}})
    with pytest.raises(ReportInputError, match=r"ref\.json: variant 'baseline'.*'metrics\.AP\.tolerance'"):
        load_reference(bad)
    assert vis_main(["check-regression", "--reference", str(bad), "--fresh", str(tmp_path)]) == 2
    assert "metrics.AP.tolerance" in capsys.readouterr().err
