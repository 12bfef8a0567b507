"""Reports of the reproductions: paper tables vs reproduced metrics, plots, markdown + self-contained HTML.

Everything here works from plain files (``paper.yaml``, metrics json, training logs, benchmark json), so
that a report can be built and tested before any model exists. Modules:

- ``paper``: load and validate ``reproductions/<name>/paper.yaml`` (the report's tables, verbatim)
- ``aggregate``: per-seed metric files -> mean ± std per variant
- ``tables``: paper vs reproduced tables -> CSV + markdown
- ``plots``: learning curves, latency and memory plots (matplotlib, Agg, no pyplot state)
- ``html``: the markdown subset we write -> one self-contained HTML file (images inlined)
- ``provenance``: git commit, dvc.lock hash, torch version, device, stage wall times
- ``builder``: ``build_report(...)``; ``index``: ``reports/index.md``
- ``cli`` (``vis report ...``) and ``regression`` (``vis check-regression``)

This module holds what every writer shares: one error type, json reading and the report json writer (atomic
writes themselves are :mod:`vis_core.io.atomic`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vis_core.io.atomic import atomic_write_text


class ReportInputError(ValueError):
    """A report input is malformed or missing; the message names the file, the object and the field."""


def read_json(path: str | os.PathLike) -> Any:
    """Read a json file; a missing file or malformed json raises :class:`ReportInputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        msg = f"{path}: malformed json: {e.msg} (line {e.lineno}, column {e.colno})"
        raise ReportInputError(msg) from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, human-readable json write (indent 2, keys in insertion order, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
