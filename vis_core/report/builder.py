"""``build_report``: paper.yaml + pipeline outputs -> ``reports/<name>/`` (markdown, HTML, CSVs, figures).

Inputs, all plain files (defaults relative to the reproduction directory ``<repro>``)::

    <repro>/paper.yaml                          the paper's tables (vis_core.report.paper)
    <repro>/params.yaml                         profile + dataset {name, split[, label]} (or CLI overrides)
    <repro>/metrics/<variant>/seed<k>.json      evaluator json per variant and seed (report.aggregate)
    <repro>/runs/<variant>/seed<k>/metrics.jsonl  training logs (vis_core.report.plots)
    <repro>/curves/<variant>.json               AP vs fine-tuning iteration (vis stage curve)
    <repro>/runs/**/timing.json, timings.json   stage wall times (vis_core.report.provenance)
    <repro>/bench/latency.json                  latency / memory benchmark (vis_core.report.plots)
    <repro>/figures/qualitative.png             qualitative figure (optional)
    <repro>/dvc.lock                            hashed into the provenance

Outputs::

    reports/<name>/report.md                    renders on GitHub (figures linked by relative path)
    reports/<name>/report.html                  self-contained: CSS inline, images as data URIs
    reports/<name>/tables/<table id>.csv, .md   paper vs reproduced, one per paper table
    reports/<name>/figures/*.png                learning_curves, ap_vs_iteration, latency, memory, qualitative
    reports/<name>/summary.json                 headline + per-variant mean/std (read by index and the gate)
    reports/<name>/provenance.json

Any input may be missing (a report can be built before any model exists): its section then says what is
missing and where it was looked for. Malformed inputs are errors naming the file and field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vis_core.io.atomic import atomic_write_bytes, atomic_write_text
from vis_core.report import write_json_atomic
from vis_core.report.aggregate import VariantSummary, summarize_dir, summary_to_json
from vis_core.report.html import write_html
from vis_core.report.paper import Paper, flatten_recipe, format_recipe_value, load_paper
from vis_core.report.plots import (
    load_bench,
    load_curves,
    load_training_logs,
    plot_ap_curve,
    plot_latency,
    plot_learning_curves,
    plot_memory,
)
from vis_core.report.provenance import collect_provenance, provenance_markdown
from vis_core.report.tables import RunInfo, load_run_info, md_escape, write_tables

# Display order of evaluator keys; anything else follows alphabetically.
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
                "AP_light", "AP_medium", "AP_heavy", "AR_light", "AR_medium", "AR_heavy")


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (reports never print machine-specific absolute paths)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return path.as_posix()


def headline(paper: Paper, summary: dict[str, VariantSummary]) -> dict[str, Any] | None:
    """The final variant's headline metric: paper value (percent) and reproduced mean/std (fractions)."""
    metric = paper.headline_metric
    variant = paper.final_variant
    if metric is None or variant is None:
        return None
    column, key = metric
    paper_value, paper_text = None, "–"
    for t in paper.tables:
        for row in t.rows:
            if row.variant == variant and column in t.columns and paper_value is None:
                paper_value = row.values[t.columns.index(column)]
                paper_text = row.printed[t.columns.index(column)]
    stat = summary.get(variant, VariantSummary(seeds=[])).metrics.get(key)
    return {
        "column": column, "metric": key, "variant": variant, "paper": paper_value, "paper_text": paper_text,
        "mean": None if stat is None else stat.mean, "std": None if stat is None else stat.std,
        "n": 0 if stat is None else stat.n, "text": "not run" if stat is None else stat.percent_text(),
    }


def _metrics_table(paper: Paper, summary: dict[str, VariantSummary]) -> str:
    known = [v for v in paper.variants if v in summary]
    variants = known + sorted(v for v in summary if v not in known)
    keys = list(dict.fromkeys(k for v in variants for k in summary[v].metrics))
    keys = [k for k in METRIC_ORDER if k in keys] + sorted(k for k in keys if k not in METRIC_ORDER)
    header = ["metric"] + [f"`{v}` (seeds {', '.join(map(str, summary[v].seeds))})" for v in variants]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(variants)]
    for k in keys:
        cells = []
        for v in variants:
            st = summary[v].metrics.get(k)
            cells.append("–" if st is None else st.percent_text())
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bench_table(bench: dict) -> str:
    lines = ["| method | kind | mode | T | ms / frame | segmenter ms / frame | association ms / frame | "
             "peak RSS (MB) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(bench["records"], key=lambda r: (r["method"], r["mode"], r["T"])):
        kind = md_escape(r.get("kind") or "–")  # the method's kind (vis_core.methods.base); older files lack it
        lines.append(f"| {md_escape(r['method'])} | {kind} | {md_escape(r['mode'])} | {r['T']} | "
                     f"{r['ms_per_frame']:.2f} | {r['segmenter_ms_per_frame']:.2f} | "
                     f"{r['association_ms_per_frame']:.2f} | {r['peak_rss_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def build_report(
    repro_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    run: RunInfo | None = None,
    paper_path: str | os.PathLike | None = None,
    metrics_dir: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    bench_path: str | os.PathLike | None = None,
    qualitative: str | os.PathLike | None = None,
    timings_path: str | os.PathLike | None = None,
    curves_dir: str | os.PathLike | None = None,
    dvc_lock: str | os.PathLike | None = None,
    repo_root: str | os.PathLike = ".",
    device: str | None = None,
    html: bool = True,
) -> dict[str, Any]:
    """Build ``reports/<name>/`` for one reproduction; returns the written paths (see module docstring)."""
    repro = Path(repro_dir)
    root = Path(repo_root)
    name = name or repro.resolve().name
    out = Path(out_dir) if out_dir is not None else root / "reports" / name
    paper = load_paper(paper_path or repro / "paper.yaml")
    run = run or load_run_info(repro / "params.yaml")
    metrics_dir = Path(metrics_dir or repro / "metrics")
    runs_dir = Path(runs_dir or repro / "runs")
    bench_path = Path(bench_path or repro / "bench" / "latency.json")
    qualitative = Path(qualitative or repro / "figures" / "qualitative.png")
    timings_path = Path(timings_path or repro / "timings.json")
    curves_dir = Path(curves_dir or repro / "curves")
    dvc_lock = Path(dvc_lock or repro / "dvc.lock")

    summary = summarize_dir(metrics_dir)
    table_md = write_tables(paper, summary, run, out / "tables")
    written: dict[str, Any] = {"tables": sorted((out / "tables").glob("*.csv")), "figures": []}

    same = run.same_dataset(paper)
    md: list[str] = [
        f"# Reproduction: {md_escape(paper.title)}", "",
        f"- Paper: **{md_escape(paper.title)}** (`shared/seeds/{paper.seed_file}`), evaluated on "
        f"**{paper.dataset} {paper.split}**.",
        f"- Reproduction `{name}`: dataset **{run.dataset_label}**, profile **{run.profile}**.",
        "- Reproduced numbers are percent, mean ± sample std over n seeds.", "",
    ]
    if not same:
        md += [f"> **These are not {paper.dataset} {paper.split} numbers.** The reproduction ran on "
               f"{run.dataset_label} with the {run.profile} profile. Absolute values are not comparable with "
               "the paper; the ablation gains (each row vs the first row, within one dataset) are.", ""]

    head = headline(paper, summary)
    if head is not None:
        md += ["## Headline", "",
               "| variant | metric | Paper | Reproduced (mean ± std, n seeds) | dataset/profile |",
               "|---|---|---:|---:|---|",
               f"| `{head['variant']}` | {md_escape(head['column'])} | {head['paper_text']} | "
               f"{head['text']} | {run.text} |",
               ""]
    if not summary:
        md += [f"> No metrics found under `{_rel(metrics_dir, root)}/<variant>/seed<k>.json`: "
               "every reproduced cell reads \"not run\".", ""]

    md += ["## Paper tables vs reproduction", ""]
    for table in paper.tables:
        md += [table_md[table.id], f"CSV: [tables/{table.id}.csv](tables/{table.id}.csv)", ""]

    if summary:
        md += ["## All reproduced metrics", "", _metrics_table(paper, summary)]

    md += ["## Recipe (as stated in the paper)", "", "| item | value |", "|---|---|"]
    md += [f"| {md_escape(k)} | {md_escape(format_recipe_value(v))} |"
           for k, v in flatten_recipe(paper.recipe)]
    md += [""]

    md += ["## Learning curves", ""]
    logs = load_training_logs(runs_dir)
    png = plot_learning_curves(logs, out / "figures" / "learning_curves.png", paper.variants)
    if png is None:
        md += [f"No training logs found (`{_rel(runs_dir, root)}/<variant>/seed<k>/metrics.jsonl`).", ""]
    else:
        written["figures"].append(png)
        md += ["![Training loss vs iteration, mean over seeds](figures/learning_curves.png)", ""]

    md += ["## AP vs iterations", ""]
    curve_files = sorted(curves_dir.glob("*.json")) if curves_dir.is_dir() else []
    if not curve_files:
        md += [f"No AP-vs-iteration curve (`{_rel(curves_dir, root)}/<variant>.json`, `vis stage curve`).", ""]
    for path in curve_files:
        curves = load_curves(path)
        png = plot_ap_curve(curves, out / "figures" / f"ap_vs_iteration_{path.stem}.png", run.dataset_label)
        written["figures"].append(png)
        md += [f"Video AP of `{path.stem}` on {run.dataset_label} at each checkpoint of its fine-tuning "
               f"(seeds {', '.join(str(c['seed']) for c in curves['curves'])}); iteration 0 is the checkpoint "
               "it started from.", "",
               f"![AP vs fine-tuning iteration](figures/{png.name})", "",
               "| iteration | " + " | ".join(f"AP seed {c['seed']}" for c in curves["curves"]) + " |",
               "|---:|" + "---:|" * len(curves["curves"])]
        iters = sorted({p["iteration"] for c in curves["curves"] for p in c["points"]})
        for it in iters:
            cells = [next((f"{100 * p['AP']:.2f}" for p in c["points"] if p["iteration"] == it), "–")
                     for c in curves["curves"]]
            md.append(f"| {it} | " + " | ".join(cells) + " |")
        md.append("")

    md += ["## Latency and memory vs video length", ""]
    bench = load_bench(bench_path) if bench_path.is_file() else None
    if bench is None:
        md += [f"No benchmark found (`{_rel(bench_path, root)}`).", ""]
    else:
        written["figures"] += [plot_latency(bench, out / "figures" / "latency.png"),
                               plot_memory(bench, out / "figures" / "memory.png")]
        md += [f"Measured on: {md_escape(bench['device'])}.", "",
               "![Per-frame time vs video length](figures/latency.png)", "",
               "![Peak memory vs video length: streaming vs hold-all](figures/memory.png)", "",
               _bench_table(bench)]

    md += ["## Qualitative results", ""]
    if qualitative.is_file():
        dest = atomic_write_bytes(out / "figures" / "qualitative.png", qualitative.read_bytes())
        written["figures"].append(dest)
        md += [f"![Qualitative results ({run.dataset_label})](figures/qualitative.png)", ""]
    else:
        md += [f"No qualitative figure (`{_rel(qualitative, root)}`).", ""]

    prov = collect_provenance(root, dvc_lock=dvc_lock if dvc_lock.is_file() else None,
                              device=device or (bench["device"] if bench else None),
                              timings_path=timings_path, runs_dir=runs_dir)
    if prov["dvc_lock"] is not None:
        prov["dvc_lock"] = _rel(dvc_lock, root)
    md += ["## Provenance", "", provenance_markdown(prov)]

    written["markdown"] = atomic_write_text(out / "report.md", "\n".join(md).rstrip() + "\n")
    written["provenance"] = write_json_atomic(out / "provenance.json", prov)
    written["summary"] = write_json_atomic(out / "summary.json", {
        "name": name, "title": paper.title, "paper_dataset": paper.dataset, "paper_split": paper.split,
        "dataset": run.dataset_label, "profile": run.profile, "same_dataset": same,
        "final_variant": paper.final_variant, "headline": head, "report": "report.md",
        **summary_to_json(summary),
    })
    if html:
        written["html"] = write_html(out / "report.md", out / "report.html")
    return written
