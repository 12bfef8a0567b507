"""``reports/index.md``: one line per built report with its headline numbers.

Reads ``reports/<name>/summary.json`` (written by ``build_report``); a directory without one is not a report.
"""

from __future__ import annotations

import os
from pathlib import Path

from vis_core.io.atomic import atomic_write_text
from vis_core.report import ReportInputError, read_json
from vis_core.report.tables import md_escape


def _headline_text(head: dict | None) -> str:
    if not head:
        return "–"
    return f"{md_escape(head['column'])} {head['text']}"


def index_markdown(reports_dir: str | os.PathLike) -> str:
    """The index page text for every ``<reports_dir>/*/summary.json``, sorted by report name."""
    reports_dir = Path(reports_dir)
    lines = [
        "# Reproduction reports", "",
        "Headline = the final variant's first metric, percent, mean ± sample std over n seeds.",
        "A reproduction that did not run on the paper's own dataset and split is not comparable with the",
        "paper's number.", "",
        "| reproduction | paper | paper headline (dataset) | reproduced headline | final variant | "
        "dataset/profile | report |",
        "|---|---|---:|---:|---|---|---|",
    ]
    found = 0
    for path in sorted(reports_dir.glob("*/summary.json")):
        s = read_json(path)
        required = ("name", "title", "paper_dataset", "paper_split", "dataset", "profile")
        missing = [k for k in required if k not in s]
        if missing:
            raise ReportInputError(f"{path}: missing field '{missing[0]}'")
        head = s.get("headline")
        paper = "–" if not head or head.get("paper_text") in (None, "–") else \
            f"{head['paper_text']} ({s['paper_dataset']} {s['paper_split']})"
        report = f"{path.parent.name}/{s.get('report', 'report.md')}"
        lines.append(
            f"| `{s['name']}` | {md_escape(s['title'])} | {md_escape(paper)} | {_headline_text(head)} | "
            f"`{s.get('final_variant') or '–'}` | {md_escape(s['dataset'])}, {md_escape(s['profile'])} | "
            f"[report]({report}) |"
        )
        found += 1
    if not found:
        lines.append("| – | no reports built yet | | | | | |")
    return "\n".join(lines) + "\n"


def build_index(reports_dir: str | os.PathLike = "reports") -> Path:
    """Write ``<reports_dir>/index.md`` atomically and return its path."""
    return atomic_write_text(Path(reports_dir) / "index.md", index_markdown(reports_dir))
