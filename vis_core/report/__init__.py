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

This module holds the two helpers every writer shares: one error type and atomic file writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, human-readable json write (indent 2, keys in insertion order, trailing newline)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
