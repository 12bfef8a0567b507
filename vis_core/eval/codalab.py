"""CodaLab submission packaging: a ``results.zip`` with ``results.json`` at the zip root.

The YouTube-VIS and OVIS servers unzip the submission and read ``results.json`` from the top level; a file
inside a folder, or under another name, scores nothing. The zip is written atomically (temp file, then
rename).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from vis_core.data.ytvis import YTVISAnnotations, load_annotations, load_json, validate_results
from vis_core.io.atomic import atomic_path


def write_codalab_zip(
    results: str | os.PathLike | list,
    out_path: str | os.PathLike = "results.zip",
    gt: str | os.PathLike | YTVISAnnotations | None = None,
) -> Path:
    """Write ``results`` (a results file path or a parsed list) as a zip with ``results.json`` at its root.

    With ``gt`` (annotations of the split, videos are enough) the results are validated first, so a submission
    with a wrong mask size or frame count is refused here instead of scoring silently wrong on the server.
    Entries whose category is not in ``gt`` are dropped with a warning, as the servers ignore them.
    """
    out_path = Path(out_path)
    name = str(results) if not isinstance(results, list) else "<results>"
    entries = results if isinstance(results, list) else load_json(results)
    if gt is not None:
        entries, _ = validate_results(entries, load_annotations(gt), name)
    payload = json.dumps(entries, separators=(",", ":"))
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("results.json", payload)
    return out_path
