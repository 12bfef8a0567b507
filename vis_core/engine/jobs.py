"""Run independent jobs (one per seed) as concurrent processes, with one progress line and clear failures.

A reproduction trains and tests every ablation row with several seeds. On a small CPU machine one process per
seed, each with one torch thread, uses the cores far better than one multi-threaded process per seed in turn
(tiny models are dominated by per-operator overhead: two threads make a step 1.4x faster, two processes 2x).
Jobs write their output to their own log file; the parent prints a status line every ``interval`` seconds and,
when a job fails, waits for the others (their work is kept: every stage resumes) and raises naming the job,
its exit code, its log and the log's last lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Job", "JobError", "run_jobs"]


class JobError(RuntimeError):
    """One or more jobs failed; the message names each with its log."""


@dataclass
class Job:
    """``argv`` to run, its ``log`` file and a ``status()`` callable giving a short progress text."""

    label: str
    argv: list[str]
    log: Path
    status: Callable[[], str] = field(default=lambda: "")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def run_jobs(jobs: Sequence[Job], max_parallel: int, desc: str, interval: float = 15.0,
             threads_per_job: int = 1) -> None:
    """Run ``jobs`` with at most ``max_parallel`` at a time; raise :class:`JobError` if any exits non-zero.

    Each job's environment pins ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` to ``threads_per_job`` (0 leaves
    them alone) so that concurrent jobs do not oversubscribe the cores.
    """
    if not jobs:
        return
    env = dict(os.environ)
    if threads_per_job > 0:
        env.update(OMP_NUM_THREADS=str(threads_per_job), MKL_NUM_THREADS=str(threads_per_job))
    pending, running, failed = list(jobs), {}, []
    max_parallel = max(1, int(max_parallel))
    start = last = time.monotonic()
    print(f"{desc}: {len(jobs)} job(s), {min(max_parallel, len(jobs))} at a time; logs: "
          f"{', '.join(str(j.log) for j in jobs)}", flush=True)
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log, "w", encoding="utf-8")  # noqa: SIM115 (closed when the job ends)
                running[job.label] = (job, subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                                            env=env), log)
            time.sleep(0.5)
            for label in list(running):
                job, proc, log = running[label]
                if proc.poll() is None:
                    continue
                log.close()
                del running[label]
                if proc.returncode != 0:
                    failed.append((job, proc.returncode))
            now = time.monotonic()
            if now - last >= interval and running:
                last = now
                states = "; ".join(f"{j.label} {j.status()}".strip() for j, _, _ in running.values())
                print(f"{desc} [{now - start:.0f} s]: {states}", flush=True)
    except BaseException:
        for _, proc, log in running.values():
            proc.terminate()
            proc.wait()
            log.close()
        raise
    if failed:
        parts = [f"{job.label} exited {code} (log {job.log}):\n{_tail(job.log)}" for job, code in failed]
        raise JobError(f"{desc}: {len(failed)} of {len(jobs)} job(s) failed\n" + "\n\n".join(parts))
    print(f"{desc}: done in {time.monotonic() - start:.0f} s", flush=True)


def vis_command(*args: str) -> list[str]:
    """argv of ``vis <args>`` run by this interpreter (works in a venv without ``vis`` on PATH)."""
    return [sys.executable, "-m", "vis_core.cli", *args]
