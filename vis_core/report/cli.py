"""``vis report``: build a reproduction's report, its tables only, or the index of all reports.

    vis report build  reproductions/ovis_2nd [--out reports/ovis_2nd] [--profile smoke
                      --dataset synthetic-ovis --split valid] [--qualitative fig.png] [--bench ...]
    vis report tables reproductions/ovis_2nd --out reproductions/ovis_2nd/tables
    vis report index  [--reports reports]
    vis report check-paper reproductions/*/paper.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vis_core.report import ReportInputError


def _add_run_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params.yaml with profile + dataset (default <repro>/...)")
    p.add_argument("--profile", default=None, help="override params.yaml 'profile' (smoke | full)")
    p.add_argument("--dataset", default=None, help="override params.yaml 'dataset.name' (synthetic-ovis)")
    p.add_argument("--split", default=None, help="override params.yaml 'dataset.split' (e.g. valid)")
    p.add_argument("--metrics", default=None, help="metrics dir (default <repro>/metrics)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", metavar="{build,tables,index,publish,check-paper}",
                                required=True)

    b = sub.add_parser("build", help="build reports/<name>/ (report.md, report.html, tables, figures)")
    b.add_argument("repro", help="reproduction directory, e.g. reproductions/ovis_2nd")
    b.add_argument("--out", default=None, help="output dir (default reports/<name of repro>)")
    b.add_argument("--name", default=None, help="report name (default: the reproduction directory's name)")
    _add_run_info(b)
    b.add_argument("--runs", default=None, help="training runs dir (default <repro>/runs)")
    b.add_argument("--bench", default=None, help="benchmark json (default <repro>/bench/latency.json)")
    b.add_argument("--qualitative", default=None,
                   help="qualitative PNG (default <repro>/figures/qualitative.png)")
    b.add_argument("--timings", default=None, help="stage timings json (default <repro>/timings.json)")
    b.add_argument("--dvc-lock", default=None, help="dvc.lock to hash (default <repro>/dvc.lock)")
    b.add_argument("--device", default=None, help="device label (default: the benchmark's, else detected)")
    b.add_argument("--no-html", action="store_true", help="skip report.html")
    b.add_argument("--index", action="store_true",
                   help="also refresh <out>/../index.md (the pipeline has its own index stage)")

    t = sub.add_parser("tables", help="paper vs reproduced tables only (CSV + markdown per paper table)")
    t.add_argument("repro", help="reproduction directory")
    t.add_argument("--out", required=True, help="directory for <table id>.csv / .md")
    _add_run_info(t)

    i = sub.add_parser("index", help="write reports/index.md from reports/*/summary.json")
    i.add_argument("--reports", default="reports", help="reports directory (default: reports)")

    p = sub.add_parser("publish", help="copy a built report dir into reports/<name>/ and refresh the index")
    p.add_argument("src", help="built report directory, e.g. reproductions/ovis_2nd/report")
    p.add_argument("dst", help="published directory, e.g. reports/ovis_2nd")

    c = sub.add_parser("check-paper", help="validate paper.yaml files")
    c.add_argument("paths", nargs="+")


def _run_info(args: argparse.Namespace):
    from vis_core.report.tables import load_run_info

    params = Path(args.params) if args.params else Path(args.repro) / "params.yaml"
    return load_run_info(params, profile=args.profile, dataset=args.dataset, split=args.split)


def _build(args: argparse.Namespace) -> int:
    from vis_core.report.builder import build_report
    from vis_core.report.index import build_index

    written = build_report(
        args.repro, args.out, name=args.name, run=_run_info(args), metrics_dir=args.metrics,
        runs_dir=args.runs, bench_path=args.bench, qualitative=args.qualitative, timings_path=args.timings,
        dvc_lock=args.dvc_lock, device=args.device, html=not args.no_html,
    )
    print(f"wrote {written['markdown']}" + (f" and {written['html']}" if "html" in written else ""))
    if args.index:
        print(f"wrote {build_index(Path(written['markdown']).parent.parent)}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    from vis_core.report.aggregate import summarize_dir
    from vis_core.report.paper import load_paper
    from vis_core.report.tables import write_tables

    repro = Path(args.repro)
    paper = load_paper(repro / "paper.yaml")
    summary = summarize_dir(args.metrics or repro / "metrics")
    written = write_tables(paper, summary, _run_info(args), args.out)
    print(f"wrote {len(written)} tables to {args.out}: {', '.join(written)}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from vis_core.report.index import build_index

    print(f"wrote {build_index(args.reports)}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    """Copy ``src`` to ``dst`` whole: a temp sibling first, then swapped in, so a reader never sees half."""
    import shutil
    import tempfile

    from vis_core.report.index import build_index

    src, dst = Path(args.src), Path(args.dst)
    if not (src / "report.md").is_file():
        raise ReportInputError(f"{src}: no report.md (build the report first)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        old = dst.with_name(f".{dst.name}.old")
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"published {src} -> {dst}; wrote {build_index(dst.parent)}")
    return 0


def _check_paper(args: argparse.Namespace) -> int:
    from vis_core.report.paper import load_paper

    for path in args.paths:
        paper = load_paper(path)
        n = sum(len(t.rows) for t in paper.tables)
        print(f"{path}: ok ({len(paper.tables)} tables, {n} rows, variants {', '.join(paper.variants)})")
    return 0


def main(args: argparse.Namespace) -> int:
    handlers = {"build": _build, "tables": _tables, "index": _index, "publish": _publish, "check-paper": _check_paper}
    try:
        return handlers[args.report_command](args)
    except ReportInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
