"""``paper.yaml``: every table of a challenge report, verbatim, plus the recipe facts the report states.

Schema (unknown keys are errors, so that a typo never silently drops a number)::

    report:
      title: str                    # the report's title
      seed_file: str                # file name under shared/seeds/ the numbers were copied from
      dataset: str                  # what the paper evaluated on, e.g. "OVIS 2022"
      split: str                    # e.g. "test"
    recipe:                         # free-form facts: key -> scalar | list of scalars | mapping of those
      backbone: str                 # required; everything else is optional and rendered as-is
      ...
    tables:
      - id: str                     # [a-z0-9_]+, unique; names reports/<name>/tables/<id>.csv
        title: str                  # the caption, verbatim
        kind: leaderboard | ablation
        row_header: str             # optional (default "Method"): the header of the row-name column
        columns: [str, ...]         # column headers as printed, e.g. [mAP, AP50, AP75, AR1, AR10]
        metric_keys: [str | null]   # evaluator json key per column (AP, AP50, ...); null = not reproducible
        note: str                   # optional, printed under the table
        rows:
          - name: str               # row label as printed, unique within the table
            values: [number | null] # one per column, percent, as printed (null for a "-" cell)
            variant: str            # optional: the reproduction variant whose metrics fill this row
            ours: bool              # optional (default false): the team's own row of a leaderboard

A leaderboard has exactly one ``ours: true`` row and that row names a ``variant`` (the reproduced row added to
the leaderboard is that variant). Ablation rows name a variant each, or none when the row is not reproduced.

YAML turns ``49.90`` into ``49.9``; the loader keeps each number's source text (``PaperRow.printed``) so
that the report shows the digits exactly as the paper printed them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vis_core.report import ReportInputError

TABLE_KINDS = ("leaderboard", "ablation")
_ID_RE = re.compile(r"^[a-z0-9_]+$")
_VARIANT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOP_KEYS = {"report", "recipe", "tables"}
_REPORT_KEYS = {"title", "seed_file", "dataset", "split"}
_TABLE_KEYS = {"id", "title", "kind", "columns", "metric_keys", "rows", "note", "row_header"}
_ROW_KEYS = {"name", "values", "variant", "ours"}


class PaperFormatError(ReportInputError):
    """``paper.yaml`` is malformed; the message names the file, the table, the row and the field."""


@dataclass(frozen=True)
class PaperRow:
    name: str
    values: tuple[float | None, ...]  # percent; None for a "-" cell
    printed: tuple[str, ...]  # the values' text as printed in the paper ("-" for None)
    variant: str | None = None
    ours: bool = False


@dataclass(frozen=True)
class PaperTable:
    id: str
    title: str
    kind: str
    columns: tuple[str, ...]
    metric_keys: tuple[str | None, ...]
    rows: tuple[PaperRow, ...]
    note: str | None = None
    row_header: str = "Method"

    @property
    def ours_row(self) -> PaperRow | None:
        return next((r for r in self.rows if r.ours), None)

    @property
    def variants(self) -> list[str]:
        """Variants named by the rows, in row order, without duplicates."""
        return list(dict.fromkeys(r.variant for r in self.rows if r.variant))


@dataclass(frozen=True)
class Paper:
    path: Path
    title: str
    seed_file: str
    dataset: str
    split: str
    recipe: dict[str, Any]
    tables: tuple[PaperTable, ...]

    def table(self, table_id: str) -> PaperTable:
        for t in self.tables:
            if t.id == table_id:
                return t
        raise KeyError(f"{self.path}: no table {table_id!r} (have {[t.id for t in self.tables]})")

    @property
    def variants(self) -> list[str]:
        """Every variant the tables name: ablation rows first (their order is the story), then the rest."""
        ordered = sorted(self.tables, key=lambda t: t.kind != "ablation")  # stable sort: file order otherwise
        return list(dict.fromkeys(v for t in ordered for v in t.variants))

    @property
    def final_variant(self) -> str | None:
        """The variant that heads the report: the leaderboard's own row, else the last ablation row."""
        for t in self.tables:
            if t.kind == "leaderboard" and t.ours_row is not None:
                return t.ours_row.variant
        for t in reversed(self.tables):
            if t.variants:
                return t.variants[-1]
        return None

    @property
    def headline_metric(self) -> tuple[str, str] | None:
        """(column as printed, evaluator key) of the first reproducible column of the first table."""
        for t in self.tables:
            for col, key in zip(t.columns, t.metric_keys, strict=True):
                if key is not None:
                    return col, key
        return None


# ------------------------------------------------------------------------------------------------ loading
class _Printed(float):
    """A float that remembers the text it was written as (``49.90`` stays ``"49.90"``)."""

    text: str

    def __new__(cls, value: float, text: str):
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats keep their source text (ints print as written anyway)."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    return _Printed(yaml.SafeLoader.construct_yaml_float(loader, node), node.value)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _printed(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, _Printed):
        return value.text
    return str(value)


def load_paper(path: str | os.PathLike) -> Paper:
    """Read and validate ``paper.yaml``; problems raise :class:`PaperFormatError` (file/table/row/field)."""
    path = Path(path)
    if not path.is_file():
        raise PaperFormatError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass
    except yaml.YAMLError as e:
        raise PaperFormatError(f"{path}: malformed YAML: {e}") from None
    return parse_paper(doc, path)


def parse_paper(doc: Any, path: str | os.PathLike = "<paper.yaml>") -> Paper:
    """Validate an already-parsed ``paper.yaml`` document (see the module docstring for the schema)."""
    path = Path(path)

    def fail(where: str, msg: str) -> PaperFormatError:
        return PaperFormatError(f"{path}: {where}: {msg}")

    if not isinstance(doc, dict):
        raise fail("top level", f"expected a mapping with keys {sorted(_TOP_KEYS)}, got {type(doc).__name__}")
    _check_keys(doc, _TOP_KEYS, _TOP_KEYS, "top level", fail)

    report = doc["report"]
    if not isinstance(report, dict):
        raise fail("report", "expected a mapping")
    _check_keys(report, _REPORT_KEYS, _REPORT_KEYS, "report", fail)
    for key in sorted(_REPORT_KEYS):
        _require_str(report[key], f"report, field '{key}'", fail)

    recipe = doc["recipe"]
    if not isinstance(recipe, dict) or not recipe:
        raise fail("recipe", "expected a non-empty mapping")
    if "backbone" not in recipe:
        raise fail("recipe", "missing field 'backbone'")
    _check_recipe(recipe, "recipe", fail)

    tables_doc = doc["tables"]
    if not isinstance(tables_doc, list) or not tables_doc:
        raise fail("tables", "expected a non-empty list")
    tables, seen = [], set()
    for i, t in enumerate(tables_doc):
        table = _parse_table(t, i, fail)
        if table.id in seen:
            raise fail(f"table {i} (id {table.id!r})", "field 'id': duplicate table id")
        seen.add(table.id)
        tables.append(table)

    return Paper(
        path=path, title=report["title"], seed_file=report["seed_file"], dataset=report["dataset"],
        split=report["split"], recipe=_plain(recipe), tables=tuple(tables),
    )


def _parse_table(t: Any, index: int, fail) -> PaperTable:
    where = f"table {index}"
    if not isinstance(t, dict):
        raise fail(where, "expected a mapping")
    if isinstance(t.get("id"), str):
        where = f"table {index} (id {t['id']!r})"
    _check_keys(t, _TABLE_KEYS, _TABLE_KEYS - {"note", "row_header"}, where, fail)
    table_id = _require_str(t["id"], f"{where}, field 'id'", fail)
    if not _ID_RE.match(table_id):
        raise fail(where, f"field 'id': {table_id!r} must match [a-z0-9_]+ (it names a file)")
    title = _require_str(t["title"], f"{where}, field 'title'", fail)
    if t["kind"] not in TABLE_KINDS:
        raise fail(where, f"field 'kind': {t['kind']!r} is not one of {list(TABLE_KINDS)}")
    note = None if t.get("note") is None else _require_str(t["note"], f"{where}, field 'note'", fail)
    row_header = _require_str(t.get("row_header", "Method"), f"{where}, field 'row_header'", fail)

    columns = t["columns"]
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise fail(where, "field 'columns': expected a non-empty list of strings")
    keys = t["metric_keys"]
    if not isinstance(keys, list) or not all(k is None or (isinstance(k, str) and k) for k in keys):
        raise fail(where, "field 'metric_keys': expected a list of evaluator keys (strings) or nulls")
    if len(keys) != len(columns):
        raise fail(where, f"field 'metric_keys': {len(keys)} keys for {len(columns)} columns")

    rows_doc = t["rows"]
    if not isinstance(rows_doc, list) or not rows_doc:
        raise fail(where, "field 'rows': expected a non-empty list")
    rows, names = [], set()
    for j, r in enumerate(rows_doc):
        row = _parse_row(r, j, len(columns), where, fail)
        if row.name in names:
            raise fail(f"{where}, row {j} ({row.name!r})", "field 'name': duplicate row name")
        names.add(row.name)
        rows.append(row)

    ours = [r for r in rows if r.ours]
    if t["kind"] == "leaderboard":
        if len(ours) != 1:
            raise fail(where, f"a leaderboard needs exactly one row with 'ours: true', found {len(ours)}")
        if ours[0].variant is None:
            raise fail(f"{where}, row {rows.index(ours[0])} ({ours[0].name!r})",
                       "field 'variant': the leaderboard's own row must name the variant it reproduces")
    elif ours:
        raise fail(where, "'ours: true' is only meaningful in a leaderboard")
    return PaperTable(id=table_id, title=title, kind=t["kind"], columns=tuple(columns),
                      metric_keys=tuple(keys), rows=tuple(rows), note=note, row_header=row_header)


def _parse_row(r: Any, index: int, n_columns: int, table_where: str, fail) -> PaperRow:
    where = f"{table_where}, row {index}"
    if not isinstance(r, dict):
        raise fail(where, "expected a mapping")
    if isinstance(r.get("name"), str):
        where = f"{table_where}, row {index} ({r['name']!r})"
    _check_keys(r, _ROW_KEYS, {"name", "values"}, where, fail)
    name = _require_str(r["name"], f"{where}, field 'name'", fail)
    values = r["values"]
    if not isinstance(values, list):
        raise fail(where, "field 'values': expected a list")
    if len(values) != n_columns:
        raise fail(where, f"field 'values': {len(values)} values for {n_columns} columns")
    for k, v in enumerate(values):
        ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            raise fail(where, f"field 'values[{k}]': expected a finite number or null, got {v!r}")
        if v is not None and not 0 <= v <= 100:
            raise fail(where, f"field 'values[{k}]': {v} is not a percentage in [0, 100]")
    variant = r.get("variant")
    if variant is not None and not (isinstance(variant, str) and _VARIANT_RE.match(variant)):
        raise fail(where, f"field 'variant': {variant!r} must match [A-Za-z0-9_.-]+")
    ours = r.get("ours", False)
    if not isinstance(ours, bool):
        raise fail(where, f"field 'ours': expected true or false, got {ours!r}")
    return PaperRow(
        name=name, values=tuple(None if v is None else float(v) for v in values),
        printed=tuple(_printed(v) for v in values), variant=variant, ours=ours,
    )


# ------------------------------------------------------------------------------------------------ helpers
def _check_keys(obj: dict, allowed: set, required: set, where: str, fail) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise fail(where, f"missing field '{missing[0]}'")
    unknown = sorted(str(k) for k in obj.keys() - allowed)
    if unknown:
        raise fail(where, f"unknown field '{unknown[0]}' (allowed: {sorted(allowed)})")


def _require_str(value: Any, where: str, fail) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _check_recipe(obj: dict, where: str, fail, depth: int = 0) -> None:
    for key, value in obj.items():
        if not isinstance(key, str):
            raise fail(where, f"key {key!r} is not a string")
        if _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(x) for x in value)):
            continue
        if isinstance(value, dict) and depth == 0:
            _check_recipe(value, f"{where}.{key}", fail, depth + 1)
            continue
        raise fail(where, f"field '{key}': expected a scalar, a list of scalars or (one level) a mapping")


def _plain(value: Any) -> Any:
    """Drop the source-text float subclass so the recipe is plain data (json-serializable, comparable)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, _Printed):
        return float(value)
    return value


def format_recipe_value(value: Any) -> str:
    """Human-readable recipe value: lists in brackets, floats in their shortest ``%g`` form."""
    if isinstance(value, list):
        return "[" + ", ".join(format_recipe_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flatten_recipe(recipe: dict[str, Any]) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs in file order: ``{"idol": {"iters": 1}}`` -> ``[("idol.iters", 1)]``."""
    out = []
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            out.append((key, value))
    return out
