"""Paper vs reproduced tables -> one CSV and one markdown file per paper table.

Layout in markdown (``tables/<id>.md``, also pasted into ``report.md``):

- leaderboard: the paper's table as printed (every team), plus an added row "Reproduced: <variant> variant,
  <dataset>/<split>, <profile> profile (not <paper dataset> <split>)" holding mean ± std cells; then one block
  ``Metric | Paper | Reproduced (mean ± std, n seeds) | Δ | dataset/profile`` for the team's own row.
- ablation: one block per metric column, ``Method | Paper | Reproduced | Δ | Gain over <first row>: paper /
  reproduced | dataset/profile``. The gain column compares each row with the first row *within* one dataset,
  which is what a synthetic run can check (do the modules help, in the same order?).

Δ (reproduced − paper, in points) is only printed when the reproduction ran on the paper's own dataset and
split (``RunInfo.same_dataset``: dataset name and split equal paper.yaml's ``report.dataset`` and
``report.split``). Otherwise the cell reads "n/a (different dataset)" and the CSV leaves ``delta`` empty: a
difference between a synthetic-data number and an OVIS number measures nothing, and printing it invites
reading it as a gap.

CSV (``tables/<id>.csv``), one line per paper cell, percent::

    table,row,variant,column,metric_key,paper,reproduced_mean,reproduced_std,n_seeds,delta,
    gain_paper,gain_reproduced,dataset,profile,same_dataset
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vis_core.io.atomic import atomic_write_text
from vis_core.report import ReportInputError
from vis_core.report.aggregate import Stat, VariantSummary
from vis_core.report.paper import Paper, PaperRow, PaperTable

NOT_RUN = "not run"
NO_DELTA = "n/a (different dataset)"
CSV_FIELDS = (
    "table", "row", "variant", "column", "metric_key", "paper", "reproduced_mean", "reproduced_std",
    "n_seeds", "delta", "gain_paper", "gain_reproduced", "dataset", "profile", "same_dataset",
)


# --------------------------------------------------------------------------------------------- run info
@dataclass(frozen=True)
class RunInfo:
    """Where the reproduced numbers come from: dataset name, split and pipeline profile."""

    dataset: str  # e.g. "synthetic-ovis"
    split: str  # e.g. "valid"
    profile: str  # "smoke" | "full"
    label: str = ""  # display label; defaults to "<dataset>/<split>"

    @property
    def dataset_label(self) -> str:
        return self.label or f"{self.dataset}/{self.split}"

    @property
    def text(self) -> str:
        """``"synthetic-ovis/valid, smoke"``: the dataset/profile column."""
        return f"{self.dataset_label}, {self.profile}"

    def same_dataset(self, paper: Paper) -> bool:
        return (self.dataset.strip().lower(), self.split.strip().lower()) == (
            paper.dataset.strip().lower(), paper.split.strip().lower())

    def reproduced_row_label(self, paper: Paper, variant: str) -> str:
        label = f"Reproduced: {variant} variant, {self.dataset_label}, {self.profile} profile"
        if not self.same_dataset(paper):
            label += f" (not {paper.dataset} {paper.split})"
        return label


def load_run_info(
    params_path: str | os.PathLike | None = None, *, profile: str | None = None, dataset: str | None = None,
    split: str | None = None, label: str | None = None,
) -> RunInfo:
    """Read ``profile`` and ``dataset: {name, split[, label]}`` from params.yaml; keyword args override."""
    params: dict[str, Any] = {}
    if params_path is not None and Path(params_path).is_file():
        with open(params_path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
        if not isinstance(params, dict):
            raise ReportInputError(f"{params_path}: expected a mapping at the top level")
    ds = params.get("dataset") or {}
    if not isinstance(ds, dict):
        raise ReportInputError(f"{params_path}: field 'dataset': expected a mapping {{name, split[, label]}}")
    name, file_split, file_label = ds.get("name"), ds.get("split"), ds.get("label")
    if isinstance(file_label, str) and "/" in file_label and not (name and file_split):
        name, file_split = file_label.rsplit("/", 1)  # a bare "name/split" label is enough
    overridden = dataset is not None or split is not None  # then the file's label would describe another run
    info = {
        "dataset": dataset or name, "split": split or file_split, "profile": profile or params.get("profile"),
        "label": label or ("" if overridden else file_label or ""),
    }
    where = params_path if params_path is not None else "<no params.yaml>"
    for key, field in (("dataset", "dataset.name"), ("split", "dataset.split"), ("profile", "profile")):
        if not isinstance(info[key], str) or not info[key]:
            raise ReportInputError(f"{where}: field '{field}': missing (set it in params.yaml or on the CLI)")
    return RunInfo(**info)


# ------------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One paper cell and what the reproduction says about it (percent points throughout)."""

    table: str
    row: str
    variant: str | None
    column: str
    metric_key: str | None
    paper: float | None
    paper_text: str
    reproduced: Stat | None  # fractions, as aggregated
    delta: float | None  # reproduced − paper; None unless same dataset
    gain_paper: float | None = None  # ablation: row − first row, paper
    gain_reproduced: float | None = None  # ablation: row − first row, reproduced


def _stat(summary: dict[str, VariantSummary], variant: str | None, key: str | None) -> Stat | None:
    if variant is None or key is None or variant not in summary:
        return None
    return summary[variant].metrics.get(key)


def compare_table(
    paper: Paper, table: PaperTable, summary: dict[str, VariantSummary], run: RunInfo
) -> list[Cell]:
    """Every (row, column) cell of ``table`` with its reproduced statistic, Δ and (ablations) gains."""
    same = run.same_dataset(paper)
    first = table.rows[0]
    cells = []
    for row in table.rows:
        for j, (column, key) in enumerate(zip(table.columns, table.metric_keys, strict=True)):
            stat = _stat(summary, row.variant, key)
            value = row.values[j]
            delta = 100 * stat.mean - value if (same and stat is not None and value is not None) else None
            gain_p = gain_r = None
            if table.kind == "ablation" and row is not first:
                if value is not None and first.values[j] is not None:
                    gain_p = value - first.values[j]
                first_stat = _stat(summary, first.variant, key)
                if stat is not None and first_stat is not None:
                    gain_r = 100 * (stat.mean - first_stat.mean)
            cells.append(Cell(
                table=table.id, row=row.name, variant=row.variant, column=column, metric_key=key,
                paper=value, paper_text=row.printed[j], reproduced=stat, delta=delta, gain_paper=gain_p,
                gain_reproduced=gain_r,
            ))
    return cells


# --------------------------------------------------------------------------------------------------- csv
def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table_csv(cells: list[Cell], run: RunInfo, same_dataset: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for c in cells:
        st = c.reproduced
        mean = None if st is None else 100 * st.mean
        std = None if st is None or st.std is None else 100 * st.std
        writer.writerow([
            c.table, c.row, c.variant or "", c.column, c.metric_key or "",
            "" if c.paper is None else c.paper_text, _num(mean), _num(std), "" if st is None else st.n,
            _num(c.delta), _num(c.gain_paper), _num(c.gain_reproduced),
            run.dataset_label, run.profile, str(same_dataset).lower(),
        ])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- markdown
def md_escape(text: str) -> str:
    """Make free text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    sep = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _reproduced_text(stat: Stat | None) -> str:
    return NOT_RUN if stat is None else stat.percent_text()


def _delta_text(c: Cell, same: bool) -> str:
    if not same:
        return NO_DELTA
    return "–" if c.delta is None else f"{c.delta:+.2f}"


def _row_label(row: PaperRow) -> str:
    return md_escape(row.name) + (f" (`{row.variant}`)" if row.variant else "")


def _leaderboard_md(paper: Paper, table: PaperTable, cells: list[Cell], run: RunInfo) -> list[str]:
    same = run.same_dataset(paper)
    ours = table.ours_row
    body = []
    for row in table.rows:
        name = f"**{md_escape(row.name)}**" if row.ours else md_escape(row.name)
        body.append([name] + list(row.printed))
    ours_cells = [c for c in cells if c.row == ours.name]
    label = md_escape(run.reproduced_row_label(paper, ours.variant))
    body.append([f"**{label}**"]
                + [_reproduced_text(c.reproduced) if c.metric_key else "–" for c in ours_cells])
    out = [
        f"Paper ({paper.dataset} {paper.split}) with the reproduced row added:",
        "",
        _md_table([md_escape(table.row_header)] + [md_escape(c) for c in table.columns], body,
                  ["l"] + ["r"] * len(table.columns)),
        "",
        f"Paper vs reproduced, row **{md_escape(ours.name)}** (variant `{ours.variant}`):",
        "",
        _md_table(
            ["Metric", "Paper", "Reproduced (mean ± std, n seeds)", "Δ", "dataset/profile"],
            [[md_escape(c.column), c.paper_text, _reproduced_text(c.reproduced), _delta_text(c, same),
              run.text] for c in ours_cells if c.metric_key],
            ["l", "r", "r", "r", "l"],
        ),
    ]
    return out


def _ablation_md(paper: Paper, table: PaperTable, cells: list[Cell], run: RunInfo) -> list[str]:
    same = run.same_dataset(paper)
    first = md_escape(table.rows[0].name)
    out = []
    for column, key in zip(table.columns, table.metric_keys, strict=True):
        if key is None:
            continue
        rows = []
        for c, row in zip([c for c in cells if c.column == column], table.rows, strict=True):
            if row is table.rows[0]:
                gain = "—"
            else:
                gp = "–" if c.gain_paper is None else f"{c.gain_paper:+.2f}"
                gr = NOT_RUN if c.gain_reproduced is None else f"{c.gain_reproduced:+.2f}"
                gain = f"{gp} / {gr}"
            rows.append([_row_label(row), c.paper_text, _reproduced_text(c.reproduced), _delta_text(c, same),
                         gain, run.text])
        out += [
            f"**{md_escape(column)}** (evaluator key `{key}`)",
            "",
            _md_table(
                [md_escape(table.row_header), "Paper", "Reproduced (mean ± std, n seeds)", "Δ",
                 f"Gain over {first}: paper / reproduced", "dataset/profile"],
                rows, ["l", "r", "r", "r", "r", "l"],
            ),
            "",
        ]
    return out[:-1]


def table_markdown(paper: Paper, table: PaperTable, cells: list[Cell], run: RunInfo, level: int = 3) -> str:
    """Markdown for one paper table (heading, note, comparison blocks, Δ footnote)."""
    same = run.same_dataset(paper)
    lines = [f"{'#' * level} {md_escape(table.title)}", ""]
    if table.note:
        lines += [f"> {table.note}", ""]
    if table.kind == "leaderboard":
        lines += _leaderboard_md(paper, table, cells, run)
    else:
        lines += _ablation_md(paper, table, cells, run)
    lines.append("")
    if same:
        lines.append("Δ = reproduced mean − paper, in points (same dataset and split as the paper).")
    else:
        lines.append(
            f"Reproduced numbers come from **{run.dataset_label}** ({run.profile} profile), not from "
            f"{paper.dataset} {paper.split}; Δ against the paper is therefore n/a. Reproduced values are "
            "percent, mean ± sample std over n seeds."
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- files
def write_tables(
    paper: Paper, summary: dict[str, VariantSummary], run: RunInfo, out_dir: str | os.PathLike
) -> dict[str, str]:
    """Write ``<out_dir>/<table id>.csv`` and ``.md`` for every paper table; return ``{id: markdown}``."""
    out_dir = Path(out_dir)
    same = run.same_dataset(paper)
    markdown = {}
    for table in paper.tables:
        cells = compare_table(paper, table, summary, run)
        atomic_write_text(out_dir / f"{table.id}.csv", table_csv(cells, run, same))
        markdown[table.id] = table_markdown(paper, table, cells, run)
        atomic_write_text(out_dir / f"{table.id}.md", markdown[table.id])
    return markdown
