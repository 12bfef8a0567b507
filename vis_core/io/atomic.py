"""The one atomic-write helper: nothing half-written is ever left at a path.

Every file vis_core writes (json, checkpoints, figures, submissions, reports) goes through
:func:`atomic_path`: the content is written to a temporary file in the destination's directory, flushed to
disk, then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows). A writer that
fails or is killed leaves the previous file intact and no temporary behind (on an exception; a SIGKILL can
leave a hidden ``.<name>.*.tmp``, never a truncated ``<name>``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is fsync'ed and renamed to ``path``, on an
    exception it is deleted. Parent directories are created.

    Example::

        with atomic_path("out/figure.png") as tmp:
            image.save(tmp, format="PNG")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))
