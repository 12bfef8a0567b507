"""Training metrics as ``metrics.jsonl`` (one JSON object per logged iteration) and ``metrics.csv``.

Reports read either file to plot learning curves (``read_metrics`` gives a pandas DataFrame). Floats are
written with ``repr`` precision, so two runs can be compared exactly. On resume the logs are cut back to the
resumed iteration (rows logged after the last checkpoint of a killed job are dropped) before appending.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vis_core.io.atomic import atomic_write_text

__all__ = ["MetricsLogger", "read_metrics"]


def _json_value(value: Any) -> Any:
    # NaN/inf are not JSON; keep them readable as strings instead of producing an invalid file
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


class MetricsLogger:
    """Appends metric rows to ``<output_dir>/metrics.jsonl`` and ``metrics.csv``.

    Args:
        output_dir: run directory.
        resume_iteration: when resuming, keep only rows with ``iteration <= resume_iteration``; ``None``
            starts fresh files.
    """

    def __init__(self, output_dir: str | Path, resume_iteration: int | None = None):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.csv_path = self.output_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if resume_iteration is not None and self.jsonl_path.is_file():
            self.rows = [r for r in _read_jsonl(self.jsonl_path) if r.get("iteration", 0) <= resume_iteration]
        self.columns: list[str] = []
        for row in self.rows:
            self._extend_columns(row)
        atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._rewrite_csv()

    def _extend_columns(self, row: dict[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns.extend(new)
        return bool(new)

    def _rewrite_csv(self) -> None:
        lines = []
        if self.columns:
            lines.append(",".join(self.columns))
            lines.extend(self._csv_line(row) for row in self.rows)
        atomic_write_text(self.csv_path, "".join(line + "\n" for line in lines))

    def _csv_line(self, row: dict[str, Any]) -> str:
        return ",".join("" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float)
                        else str(row[c]) for c in self.columns)

    def log(self, row: dict[str, Any]) -> None:
        """Append one row (must contain ``iteration``)."""
        if "iteration" not in row:
            raise ValueError("MetricsLogger.log: row needs an 'iteration' entry")
        row = {k: _json_value(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._extend_columns(row):
            self._rewrite_csv()  # a new loss appeared: the header changes, rewrite the whole file
        else:
            with open(self.csv_path, "a") as f:
                f.write(self._csv_line(row) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a half-written last line of a killed job
    return rows


def read_metrics(path: str | Path):
    """Metrics of a run as a pandas DataFrame (``path``: the run directory, a .jsonl or a .csv file)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.DataFrame(_read_jsonl(path))
