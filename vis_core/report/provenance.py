"""Where a report's numbers came from: code version, pipeline lock, software, device and stage wall times.

Stage timings (both files map a stage name to wall-clock seconds)::

    <repro>/timings.json                      {"data": 12.5, "bench": 40.1}
    <repro>/runs/<...>/timing.json            {"train": 310.2, "infer": 8.4, "eval": 1.9}

A ``runs/**/timing.json`` stage is reported as ``"<stage> (<dir relative to runs/>)"``, e.g.
``"train (baseline/seed0)"``. Everything here is read-only: ``git rev-parse HEAD`` is the only git call.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from vis_core.report import ReportInputError, read_json


def git_commit(repo_root: str | os.PathLike = ".") -> str | None:
    """``git rev-parse HEAD`` in ``repo_root``; ``None`` outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def sha256_file(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version(name: str) -> str | None:
    """Installed version without importing the package (importing torch costs seconds)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def detect_device() -> str:
    """``"cuda: <name>"`` when a GPU is visible, else ``"cpu: <machine>, <n> cores"``."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    except ImportError:
        pass
    return f"cpu: {platform.machine() or 'unknown'}, {os.cpu_count()} cores"


def _read_timing(path: Path) -> dict[str, float]:
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ReportInputError(f"{path}: expected a json object {{stage: seconds}}")
    for stage, seconds in obj.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ReportInputError(f"{path}: field '{stage}': expected seconds >= 0, got {seconds!r}")
    return {k: float(v) for k, v in obj.items()}


def load_stage_timings(
    timings_path: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None
) -> list[tuple[str, float]]:
    """(stage, seconds) from ``timings.json`` and every ``runs_dir/**/timing.json`` (sorted by path)."""
    stages: list[tuple[str, float]] = []
    if timings_path is not None and Path(timings_path).is_file():
        stages += list(_read_timing(Path(timings_path)).items())
    if runs_dir is not None and Path(runs_dir).is_dir():
        runs_dir = Path(runs_dir)
        for path in sorted(runs_dir.rglob("timing.json")):
            where = path.parent.relative_to(runs_dir).as_posix()
            stages += [(f"{stage} ({where})" if where != "." else stage, s)
                       for stage, s in _read_timing(path).items()]
    return stages


def collect_provenance(
    repo_root: str | os.PathLike = ".", dvc_lock: str | os.PathLike | None = None, device: str | None = None,
    timings_path: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Everything the report's provenance section prints, as a json-ready dict."""
    stages = load_stage_timings(timings_path, runs_dir)
    return {
        "git_commit": git_commit(repo_root),
        "dvc_lock": None if dvc_lock is None else str(dvc_lock),
        "dvc_lock_sha256": None if dvc_lock is None else sha256_file(dvc_lock),
        "torch": package_version("torch"),
        "vis_core": package_version("vis-core"),
        "python": sys.version.split()[0],
        "device": device or detect_device(),
        "stages": [{"stage": s, "seconds": t} for s, t in stages],
        "total_seconds": math.fsum(t for _, t in stages),
    }


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15.2 s"``; ``3725`` -> ``"1 h 02 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:.1f} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The provenance section body: one key/value table and one stage wall-time table."""
    def show(v: Any) -> str:
        return "unknown" if v is None else f"`{v}`"

    lock = "no dvc.lock" if prov["dvc_lock_sha256"] is None else f"`{prov['dvc_lock_sha256']}`"
    lines = [
        "| item | value |", "|---|---|",
        f"| git commit | {show(prov['git_commit'])} |",
        f"| dvc.lock sha256 | {lock} |",
        f"| torch | {show(prov['torch'])} |",
        f"| vis_core | {show(prov['vis_core'])} |",
        f"| python | {show(prov['python'])} |",
        f"| device | {prov['device']} |",
        "",
    ]
    if prov["stages"]:
        lines += ["| stage | wall time |", "|---|---:|"]
        lines += [f"| {s['stage']} | {format_seconds(s['seconds'])} |" for s in prov["stages"]]
        lines.append(f"| **total** | **{format_seconds(prov['total_seconds'])}** |")
    else:
        lines.append("No stage timings found (`timings.json`, `runs/**/timing.json`).")
    return "\n".join(lines) + "\n"
