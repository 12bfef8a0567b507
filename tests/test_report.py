"""Report machinery on plain fixture files: aggregate, tables, plots, HTML, provenance, builder, CLI."""

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vis_core.cli import main as vis_main
from vis_core.report import ReportInputError
from vis_core.report.aggregate import (
    load_metrics_dir,
    load_summary,
    mean_std,
    summarize,
    summarize_dir,
    write_summary,
)
from vis_core.report.builder import build_report
from vis_core.report.html import markdown_to_html
from vis_core.report.index import build_index
from vis_core.report.paper import load_paper
from vis_core.report.plots import load_bench, load_curves, mean_curve, read_jsonl_log
from vis_core.report.provenance import load_stage_timings, sha256_file
from vis_core.report.tables import RunInfo, compare_table, load_run_info

ROOT = Path(__file__).resolve().parents[1]
OVIS_PAPER = ROOT / "reproductions" / "ovis_2nd" / "paper.yaml"
OVIS_VARIANTS = ("baseline", "quality", "boundary", "batchformer", "multiscale", "ensemble")
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
        "AP_light", "AP_medium", "AP_heavy", "AR_light", "AR_medium", "AR_heavy")


def _metrics(variant_index: int, seed: int) -> dict:
    """Evaluator-like json: AP = 0.30 + 0.02 * variant + 0.02 * seed, other keys at fixed offsets from it."""
    ap = 0.30 + 0.02 * variant_index + 0.02 * seed
    out = {k: round(min(1.0, ap + 0.01 * i), 6) for i, k in enumerate(KEYS)}
    out["APs"] = -1  # undefined: no small objects in this fixture
    out["n_videos"] = 12  # not a metric: ignored
    return out


def write_fixture(repro: Path, seeds=(0, 1), variants=OVIS_VARIANTS, with_extras=True) -> Path:
    """A reproduction directory as the pipeline leaves it: paper, params, metrics, logs, bench, figure."""
    repro.mkdir(parents=True, exist_ok=True)
    shutil.copy(OVIS_PAPER, repro / "paper.yaml")
    (repro / "params.yaml").write_text(
        "profile: smoke\ndataset:\n  name: synthetic-ovis\n  split: valid\nseeds: [0, 1]\n")
    for vi, variant in enumerate(variants):
        for seed in seeds:
            path = repro / "metrics" / variant / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_metrics(vi, seed)))
            if not with_extras:
                continue
            run = repro / "runs" / variant / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            lines = [{"iteration": it, "loss": 5.0 / (1 + it / 10) + seed, "lr": 1e-4, "time": 0.1, "loss_ce": 1.0}
                     for it in range(0, 100, 10)]
            (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
            (run / "timing.json").write_text(json.dumps({"train": 12.5 + seed, "eval": 1.25}))
    if with_extras:
        records = [
            {"method": m, "mode": mode, "T": t,
             "ms_per_frame": 10.0 + t * (0.1 if mode == "hold_all" else 0.0),
             "segmenter_ms_per_frame": 9.0, "association_ms_per_frame": 1.0 + (0.5 if m == "minvis" else 0.0),
             "peak_rss_mb": 500.0 + (t * 2.0 if mode == "hold_all" else 0.0)}
            for m in ("idol", "minvis") for mode in ("streaming", "hold_all") for t in (8, 32, 128)
        ]
        (repro / "bench").mkdir(exist_ok=True)
        bench = {"device": "cpu (test)", "records": records}
        (repro / "bench" / "latency.json").write_text(json.dumps(bench))
        (repro / "figures").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 12, 3), 200, dtype=np.uint8)).save(repro / "figures" / "qualitative.png")
        (repro / "timings.json").write_text(json.dumps({"data": 3.0, "bench": 61.0}))
        (repro / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return repro


# -------------------------------------------------------------------------------------------- aggregate
def test_mean_std_hand_case():
    st = mean_std([0.40, 0.42])
    assert st.n == 2
    assert st.mean == pytest.approx(0.41)
    assert st.std == pytest.approx(math.sqrt(((0.01) ** 2 + (0.01) ** 2) / 1))  # ddof = 1
    assert st.percent_text() == "41.00 ± 1.41 (n=2)"
    st3 = mean_std([0.1, 0.2, 0.6])  # mean 0.3, deviations -0.2, -0.1, 0.3 -> var = 0.14 / 2
    assert st3.mean == pytest.approx(0.3) and st3.std == pytest.approx(math.sqrt(0.07))
    one = mean_std([0.5])
    assert one.std is None and one.percent_text() == "50.00 (n=1)"


def test_summarize_skips_undefined_and_non_metrics(tmp_path):
    write_fixture(tmp_path / "r", with_extras=False)
    per_seed = load_metrics_dir(tmp_path / "r" / "metrics")
    assert sorted(per_seed) == sorted(OVIS_VARIANTS) and sorted(per_seed["ensemble"]) == [0, 1]
    summary = summarize(per_seed)
    ens = summary["ensemble"]
    assert ens.seeds == [0, 1]
    assert ens.metrics["AP"].mean == pytest.approx(0.41) and ens.metrics["AP"].n == 2  # 0.40, 0.42
    assert "APs" not in ens.metrics  # -1 everywhere: undefined, not averaged as -1
    assert "n_videos" not in ens.metrics
    # mixed: one seed undefined -> mean over the defined one only
    mixed = summarize({"v": {0: {"AP": 0.5, "APs": -1.0}, 1: {"AP": 0.7, "APs": 0.2}}})["v"]
    assert mixed.metrics["APs"].n == 1 and mixed.metrics["APs"].mean == pytest.approx(0.2)


def test_summary_json_round_trip(tmp_path):
    write_fixture(tmp_path / "r", with_extras=False)
    summary = summarize_dir(tmp_path / "r" / "metrics")
    write_summary(summary, tmp_path / "summary.json")
    back = load_summary(tmp_path / "summary.json")
    assert back["quality"].metrics["AP75"] == summary["quality"].metrics["AP75"]
    assert load_summary(tmp_path / "r" / "metrics")["quality"].seeds == [0, 1]


@pytest.mark.parametrize("bad, field", [({"AP": 41.0}, "AP"), ({"AP": float("nan")}, "AP"),
                                        ({"AP50": 0.5}, "AP"), ({"AP": 0.4, "AR1": "x"}, "AR1")])
def test_bad_metrics_file_names_file_and_field(tmp_path, bad, field):
    path = tmp_path / "m" / "baseline" / "seed3.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(bad))  # json.dumps writes NaN, which json.load accepts
    with pytest.raises(ReportInputError, match=rf"seed3\.json.*'{field}'"):
        load_metrics_dir(tmp_path / "m")


# ----------------------------------------------------------------------------------------------- tables
def _run(dataset="synthetic-ovis", split="valid"):
    return RunInfo(dataset=dataset, split=split, profile="smoke")


def test_compare_table_gains_and_delta_policy(tmp_path):
    write_fixture(tmp_path / "r", with_extras=False)
    paper = load_paper(OVIS_PAPER)
    summary = summarize_dir(tmp_path / "r" / "metrics")
    cells = compare_table(paper, paper.table("table2"), summary, _run())
    quality_ap = next(c for c in cells if c.row == "+Quality assessment" and c.column == "mAP")
    assert quality_ap.delta is None  # synthetic data: no delta against an OVIS number
    assert quality_ap.gain_paper == pytest.approx(44.54 - 43.68)
    assert quality_ap.gain_reproduced == pytest.approx(2.0)  # variant index step of 0.02
    # the same numbers labelled as the paper's own dataset and split do get a delta
    same = compare_table(paper, paper.table("table2"), summary, _run("OVIS 2022", "test"))
    base = next(c for c in same if c.row == "Baseline" and c.column == "mAP")
    assert base.delta == pytest.approx(31.0 - 43.68)


def test_load_run_info_params_and_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: smoke\ndataset: {name: synthetic-ovis, split: valid}\n")
    run = load_run_info(p)
    assert (run.dataset_label, run.profile) == ("synthetic-ovis/valid", "smoke")
    assert load_run_info(p, profile="full", split="train").text == "synthetic-ovis/train, full"
    p.write_text("profile: smoke\ndataset: {label: synthetic-ytvis/valid}\n")
    assert load_run_info(p).split == "valid"
    p.write_text("dataset: {name: x, split: y}\n")
    with pytest.raises(ReportInputError, match="params.yaml.*'profile'"):
        load_run_info(p)


# ------------------------------------------------------------------------------------------------ plots
def test_logs_and_bench_readers(tmp_path):
    write_fixture(tmp_path / "r")
    log = read_jsonl_log(tmp_path / "r" / "runs" / "baseline" / "seed1" / "metrics.jsonl")
    assert [r["iteration"] for r in log][:3] == [0, 10, 20]
    from vis_core.report.plots import load_training_logs

    iters, means, counts = mean_curve(load_training_logs(tmp_path / "r" / "runs")["baseline"])
    assert iters[0] == 0 and means[0] == pytest.approx(5.5) and counts[0] == 2  # (5 + 6) / 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iteration": 0, "loss": 1.0}\n{"iteration": 1, "loss": null}\n')
    with pytest.raises(ReportInputError, match=r"bad\.jsonl: line 2: field 'loss'"):
        read_jsonl_log(bad)
    bench = json.loads((tmp_path / "r" / "bench" / "latency.json").read_text())
    bench["records"][4]["peak_rss_mb"] = "lots"
    (tmp_path / "b.json").write_text(json.dumps(bench))
    with pytest.raises(ReportInputError, match=r"b\.json: record 4 .*'peak_rss_mb'"):
        load_bench(tmp_path / "b.json")


def test_stage_timings(tmp_path):
    write_fixture(tmp_path / "r")
    stages = dict(load_stage_timings(tmp_path / "r" / "timings.json", tmp_path / "r" / "runs"))
    assert stages["bench"] == 61.0 and stages["train (baseline/seed1)"] == 13.5
    assert sha256_file(tmp_path / "r" / "dvc.lock") is not None and sha256_file(tmp_path / "nope") is None


# ------------------------------------------------------------------------------------------------- html
def test_markdown_to_html_inlines_images_and_never_points_outside(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    md = ("# T\n\nsee [docs](https://example.com/x) and [csv](tables/t.csv)\n\n![a](a.png)\n\n"
          "![remote](https://example.com/i.png)\n\n| x | y \\| z |\n|---|---:|\n| `c` | **1** |\n")
    out = markdown_to_html(md, tmp_path)
    assert 'src="data:image/png;base64,' in out
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", out)
    assert '<a href="tables/t.csv">csv</a>' in out
    assert "<th class=\"r\">y | z</th>" in out and "<strong>1</strong>" in out and "<code>c</code>" in out


# ---------------------------------------------------------------------------------------------- builder
def test_build_report_end_to_end(tmp_path):
    repro = write_fixture(tmp_path / "reproductions" / "ovis_2nd")
    written = build_report(repro, repo_root=tmp_path, device="cpu (test)")
    out = tmp_path / "reports" / "ovis_2nd"
    md = (out / "report.md").read_text()
    paper = load_paper(OVIS_PAPER)

    for table in paper.tables:  # every row and every printed paper value is in the report
        assert table.title in md
        for row in table.rows:
            assert row.name in md
            for text in row.printed:
                assert text in md
    # ensemble is variant 5: AP = 0.40 / 0.42 over seeds 0, 1 -> 41.00 ± 1.41
    assert "41.00 ± 1.41 (n=2)" in md
    assert re.search(r"\d+\.\d\d ± \d+\.\d\d \(n=2\)", md)
    assert ("Reproduced: ensemble variant, synthetic-ovis/valid, smoke profile (not OVIS 2022 test)") in md
    assert "n/a (different dataset)" in md and "These are not OVIS 2022 test numbers" in md
    assert "+0.86 / +2.00" in md  # quality vs baseline: paper gain / reproduced gain
    for fig in ("learning_curves", "latency", "memory", "qualitative"):
        assert f"figures/{fig}.png" in md and (out / "figures" / f"{fig}.png").stat().st_size > 0
    assert "train (baseline/seed0)" in md and "cpu (test)" in md and "Swin-L" in md

    html = (out / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "http://" not in html and "https://" not in html
    assert html.count('src="data:image/png;base64,') == 4
    assert "41.00 ± 1.41 (n=2)" in html

    with open(out / "tables" / "table2.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 3
    quality = next(r for r in rows if r["row"] == "+Quality assessment" and r["column"] == "mAP")
    assert quality["paper"] == "44.54" and quality["reproduced_mean"] == "33.0000"
    assert quality["n_seeds"] == "2"
    assert quality["delta"] == "" and quality["same_dataset"] == "false" and quality["profile"] == "smoke"
    with open(out / "tables" / "table1.csv", newline="") as f:
        t1 = list(csv.DictReader(f))
    assert {r["row"] for r in t1} == {"q", "Ours", "tiantian.tt", "weic", "Yong"}
    assert next(r for r in t1 if r["row"] == "Yong" and r["column"] == "AP50")["paper"] == "74.10"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"]["text"] == "41.00 ± 1.41 (n=2)"
    assert summary["headline"]["paper_text"] == "47.75"
    assert load_summary(out / "summary.json")["ensemble"].metrics["AP"].mean == pytest.approx(0.41)
    assert written["html"] == out / "report.html"

    index = build_index(tmp_path / "reports").read_text()
    assert "`ovis_2nd`" in index and "mAP 41.00 ± 1.41 (n=2)" in index
    assert "[report](ovis_2nd/report.md)" in index and "synthetic-ovis/valid, smoke" in index


def test_build_report_before_any_model_exists(tmp_path):
    """Only paper.yaml and params.yaml: the report still builds and says what is missing."""
    repro = tmp_path / "reproductions" / "ovis_2nd"
    repro.mkdir(parents=True)
    shutil.copy(OVIS_PAPER, repro / "paper.yaml")
    build_report(repro, repo_root=tmp_path, run=_run(), device="cpu")
    md = (tmp_path / "reports" / "ovis_2nd" / "report.md").read_text()
    assert "not run" in md and "No training logs found" in md and "No benchmark found" in md
    assert "+Model ensemble" in md


def test_cli_report_build_tables_index(tmp_path, monkeypatch, capsys):
    repro = write_fixture(tmp_path / "reproductions" / "ovis_2nd")
    monkeypatch.chdir(tmp_path)
    assert vis_main(["report", "tables", str(repro), "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "table1.csv").is_file() and (tmp_path / "t" / "table2.md").is_file()
    assert vis_main(["report", "build", str(repro), "--device", "cpu", "--no-html", "--index"]) == 0
    assert (tmp_path / "reports" / "ovis_2nd" / "report.md").is_file()
    assert not (tmp_path / "reports" / "ovis_2nd" / "report.html").exists()
    assert vis_main(["report", "index"]) == 0
    assert "ovis_2nd" in (tmp_path / "reports" / "index.md").read_text()
    (repro / "metrics" / "baseline" / "seed0.json").write_text('{"AP": 7}')
    assert vis_main(["report", "build", str(repro), "--device", "cpu"]) == 2
    assert "seed0.json: field 'AP'" in capsys.readouterr().err


def test_ap_curve_file_is_one_flat_list_grouped_per_seed_on_reading(tmp_path):
    path = tmp_path / "baseline.json"
    points = [{"seed": s, "iteration": it, "AP": ap} for s, it, ap in [(0, 0, 0.3), (0, 50, 0.31), (1, 0, 0.29)]]
    path.write_text(json.dumps({"variant": "baseline", "pretrained": True, "points": points}))
    curves = load_curves(path)
    assert curves["variant"] == "baseline" and curves["pretrained"] is True
    assert curves["curves"] == [{"seed": 0, "points": [{"iteration": 0, "AP": 0.3}, {"iteration": 50, "AP": 0.31}]},
                                {"seed": 1, "points": [{"iteration": 0, "AP": 0.29}]}]
    path.write_text(json.dumps({"variant": "baseline", "points": [{"seed": 0, "iteration": -1, "AP": 0.3}]}))
    with pytest.raises(ReportInputError, match=r"points\[0\]: field 'iteration'"):
        load_curves(path)
