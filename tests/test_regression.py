"""`vis check-regression`: tolerance rule, reference round trip, fails on an injected regression only.

The two behaviours CI relies on are tested on metrics with a realistic seed spread: a fresh run whose seeds
are new draws of the same training noise (what another machine's float paths produce) passes, and a
regression of a few AP (a broken loss, a tracker bug) fails."""

import json
import math
import shutil

import numpy as np
import pytest

from vis_core.cli import main as vis_main
from vis_core.report import ReportInputError
from vis_core.report.aggregate import summarize_dir, write_summary
from vis_core.report.regression import compare, load_reference, make_reference, pooled_std, tolerance

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
    assert tolerance(0.01, 2, floor=0.005) == pytest.approx(5 * 0.01 * math.sqrt(2 / 2))
    assert tolerance(0.01, 8, floor=0.001, sigmas=2) == pytest.approx(2 * 0.01 * math.sqrt(2 / 8))


def test_make_reference_values(tmp_path):
    ref = make_reference(summarize_dir(write_metrics(tmp_path / "m")), floor=0.005)
    base = ref["variants"]["baseline"]["metrics"]["AP"]
    assert base["mean"] == pytest.approx(0.31) and base["n"] == 3
    assert base["std"] == pytest.approx(0.01)  # sample std of 0.30, 0.32, 0.31
    assert base["tolerance"] == pytest.approx(5 * 0.01 * math.sqrt(2 / 3))
    # boundary's own seeds agree exactly; its tolerance comes from the spread pooled over both variants
    pooled = math.sqrt((2 * 0.01 ** 2 + 2 * 0.0) / 4)
    assert ref["pooled_std"]["AP"] == pytest.approx(pooled)
    assert ref["variants"]["boundary"]["metrics"]["AP"]["tolerance"] == pytest.approx(5 * pooled * math.sqrt(2 / 3))
    only = make_reference(summarize_dir(tmp_path / "m"), metrics=["AP"])
    assert set(only["variants"]["baseline"]["metrics"]) == {"AP"}


def test_pooled_std_hand_case():
    from vis_core.report.aggregate import Stat

    # (n - 1) weighted: 2 * 0.02^2 + 1 * 0.05^2 over 3 degrees of freedom; single seeds carry none
    got = pooled_std([Stat(0.3, 0.02, 3), Stat(0.4, 0.05, 2), Stat(0.5, None, 1)])
    assert got == pytest.approx(math.sqrt((2 * 0.02 ** 2 + 0.05 ** 2) / 3))
    assert pooled_std([Stat(0.3, None, 1)]) is None


# --- the gate on realistic spreads: 6 rows x 3 seeds, seed noise 1 AP (AP50 1.5, AR10 1.2) ------------------
ROWS = {"baseline": 0.35, "quality": 0.36, "boundary": 0.36, "batchformer": 0.37, "multiscale": 0.375,
        "ensemble": 0.40}
NOISE = {"AP": 0.010, "AP50": 0.015, "AR10": 0.012}


def _draw(root, rng, shift=None):
    """Fresh seeds: every metric of every row redrawn around the row's true value with the seed noise."""
    for variant, ap in ROWS.items():
        for k in range(3):
            m = {key: ap + {"AP": 0.0, "AP50": 0.2, "AR10": 0.1}[key] + rng.normal(0, sd) for key, sd in NOISE.items()}
            if shift and shift[0] == variant:
                m[shift[1]] += shift[2]
            path = root / variant / f"seed{k}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(m))
    return summarize_dir(root)


def test_reruns_with_other_float_paths_pass_the_gate(tmp_path):
    rng = np.random.default_rng(0)
    ref = load_reference(_write(tmp_path / "ref.json", make_reference(_draw(tmp_path / "ref", rng))))
    failures = 0
    for trial in range(300):  # 300 clean reruns x 18 gated (row, metric) pairs
        fresh = _draw(tmp_path / f"fresh{trial % 2}", rng)
        failures += any(f.status == "regressed" for f in compare(ref, fresh))
    assert failures <= 1, f"{failures} of 300 clean reruns failed the gate"


@pytest.mark.parametrize("variant,metric,drop", [("baseline", "AP", 0.06), ("ensemble", "AP50", 0.08),
                                                 ("boundary", "AR10", 0.07)])
def test_a_regression_of_a_few_points_fails_the_gate(tmp_path, variant, metric, drop):
    rng = np.random.default_rng(1)
    ref = load_reference(_write(tmp_path / "ref.json", make_reference(_draw(tmp_path / "ref", rng))))
    caught = 0
    for trial in range(50):
        fresh = _draw(tmp_path / f"fresh{trial % 2}", rng, shift=(variant, metric, -drop))
        findings = {(f.variant, f.metric): f.status for f in compare(ref, fresh)}
        caught += findings[(variant, metric)] == "regressed"
    assert caught >= 48, f"a {100 * drop:.0f}-point drop of {variant} {metric} was caught in {caught} of 50 runs"


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
    fresh = write_metrics(tmp_path / "fresh", shift=("boundary", "AP50", -0.04))  # tolerance there is 0.0289
    assert vis_main(["check-regression", "--reference", str(ref), "--fresh", str(fresh)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: variant=boundary metric=AP50 old=0.5500 new=0.5100 (-0.0400) tolerance=0.0289" in out
    assert out.count("REGRESSION") == 1 and "1 failing" in out
    # a wider floor at check time absorbs it
    args = ["check-regression", "--reference", str(ref), "--fresh", str(fresh)]
    assert vis_main(args + ["--floor", "0.05"]) == 0


def test_gate_small_drop_within_tolerance_passes(tmp_path, capsys):
    ref = _reference(tmp_path, capsys)
    fresh = write_metrics(tmp_path / "fresh", shift=("baseline", "AP", -0.04))  # tolerance 0.0408 (3 seeds)
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
