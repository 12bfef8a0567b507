"""Masks as numpy runs: a vectorised COCO RLE decoder, mask areas and extents, exact pairwise intersections.

Used by the fast evaluator only (:mod:`vis_core.eval.fast`); the json layer (:mod:`vis_core.data.ytvis`) and the
reference evaluator keep using pycocotools. The reason is speed. Every pycocotools call parses its RLE strings
again (about 1 us per mask and call), computes boxes, and walks every box-overlapping pair run by run, with a
return to Python per (video, category, frame): ~1 s for a YouTube-VIS sized results file (430k masks, 440k
overlapping frame pairs). Here all prediction strings of a batch of videos are decoded by one set of array
operations (areas and column extents come out of the same passes), cheap bounds discard the frame pairs that
cannot matter, and the intersections of the remaining ones come from one more set of array operations.

Facts of the compressed format this decoder relies on (pycocotools ``maskApi.c``, ``rleToString`` /
``rleFrString``): counts are column-major run lengths starting with a background run; each count is written as
5-bit chunks, least significant first, one ascii character ``48 + chunk`` per chunk, with ``0x20`` set on every
chunk but the last, and ``0x10`` of the last chunk the sign bit (the value is sign-extended from it); from the
fourth count on (index i > 2) the stored value is ``counts[i] - counts[i - 2]``. Counts are read as pycocotools
reads them; a mask whose runs are negative or do not add up to h*w (on which pycocotools reads past the mask)
is refused with :class:`MalformedRLE`.

Representation (:class:`MaskRuns`): ``n`` masks of one frame size (h, w) laid end to end on one "virtual
line", mask ``i`` covering positions ``[i*h*w, (i+1)*h*w)`` (position = ``i*h*w + x*h + y``, column-major as
COCO). Run ends are stored once for all masks; "virtual" columns are ``position // h = i*w + x``.

Compiled kernels (``_rle_kernels.c``, built by ``setup.py``, optional): :func:`decode_tracks` and
:func:`intersections` use them when they are built, for the same numbers in a fraction of the time (the numpy
passes above are bound by memory bandwidth: ~15 passes over every run). Without them, or with the
environment variable ``VIS_EVAL_KERNELS=numpy``, everything runs on the numpy code of this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

try:  # optional: see the module docstring
    from vis_core.eval import _rle_kernels
except ImportError:
    _rle_kernels = None
if os.environ.get("VIS_EVAL_KERNELS", "").lower() == "numpy":
    _rle_kernels = None


def kernels_in_use() -> bool:
    """Whether the compiled kernels are built and enabled (else the numpy code runs)."""
    return _rle_kernels is not None


class MalformedRLE(ValueError):
    """A mask whose runs are negative or do not add up to height * width; ``index`` is its position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"mask {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class MaskRuns:
    """Runs of ``n`` masks of size (h, w) on one virtual line (see the module docstring).

    pos: (N,) int64 run ends, all masks concatenated: run k of mask i is ``pos[tok_ptr[i] + k - 1] ..
    pos[tok_ptr[i] + k]`` (its first run starts at ``i*h*w``). Foreground interval j of mask i is
    ``[pos[tok_ptr[i] + 2j], pos[tok_ptr[i] + 2j + 1])`` for ``j < (tok_ptr[i+1] - tok_ptr[i]) // 2``.
    area: (n,) int64 foreground pixels. x0, x1: (n,) first and last foreground column (0 and -1 when empty;
    zero-length runs, legal but never written by pycocotools, may widen them: they stay valid bounds).
    y0, y1: (n,) first and last foreground row, or None until :meth:`rows` derives them from the column table.
    """

    h: int
    w: int
    pos: np.ndarray
    tok_ptr: np.ndarray
    area: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray | None = None
    y1: np.ndarray | None = None
    _table: ColumnTable | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.area)

    def table(self) -> ColumnTable:
        """The per-column index of these masks (:func:`column_table`), built once."""
        if self._table is None:
            self._table = column_table(self)
        return self._table

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(y0, y1): first and last foreground row of each mask (0 and -1 when empty; a valid bound for
        zero-length runs)."""
        if self.y0 is None:
            self.y0, self.y1 = self.table().y0, self.table().y1
        return self.y0, self.y1

    def intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts (R,), ends (R,), ptr (n+1,)): all foreground intervals, mask i owning ``ptr[i]:ptr[i+1]``."""
        n_int = np.diff(self.tok_ptr) // 2
        ptr = np.concatenate(([0], np.cumsum(n_int)))
        t = 2 * np.arange(ptr[-1]) + np.repeat(self.tok_ptr[:-1] - 2 * ptr[:-1], n_int)
        return self.pos[t], self.pos[t + 1], ptr


# ------------------------------------------------------------------------------------------------- decoding
def _token_values(c: np.ndarray, last: np.ndarray, cont: np.ndarray, number: np.ndarray) -> np.ndarray:
    """Characters (minus 48) -> the encoded numbers (N,) int32.

    ``last`` (chars,) marks each number's final chunk; ``cont`` are the positions of the other (continuation)
    chunks, in order, and ``number`` the index of the number each belongs to.
    """
    # a number's last chunk holds its sign in bit 4: (u ^ 16) - 16 sign-extends 5 bits
    u = c[last]
    u ^= 16
    values = np.subtract(u.view(np.int8), 16, dtype=np.int32)
    if not len(cont):
        return values
    low = (c[cont] & 31).astype(np.int32)
    if len(cont) == 1 or np.diff(cont).min() > 1:  # two chunks at most (runs below 2**9): exact in int32
        values[number] = (values[number] << 5) + low
        return values
    # numbers of three or more chunks: low chunks first, 5 bits each
    first = np.ones(len(cont), dtype=bool)
    first[1:] = number[1:] != number[:-1]
    heads = np.flatnonzero(first)
    n_low = np.diff(np.append(heads, len(cont)))
    k = np.arange(len(cont)) - np.repeat(heads, n_low)  # chunk position inside its number
    low = np.add.reduceat(low.astype(np.int64) << (5 * k), heads)
    idx = number[heads]
    big = (values[idx].astype(np.int64) << (5 * n_low)) + low
    # no run is longer than a frame: anything beyond int32 is garbage, kept so for the total check
    values[idx] = np.clip(big, -(2**31), 2**31 - 1)
    return values


def _undelta(values: np.ndarray, tok_ptr: np.ndarray) -> np.ndarray:
    """Stored numbers -> run lengths: ``counts[i] = v[i] + counts[i-2]`` for i > 2 inside every mask.

    Inside a mask the two chains (odd and even indices) sit in the two global parity classes, each as one
    contiguous segment, so each class is one segmented cumulative sum: subtracting the previous segment's total
    at each segment start makes a plain cumulative sum restart there. Index 0 is no chain member: it is set
    aside and zeroed, which makes the even chain start at index 2 as the format says. Sums are int32 and may
    wrap around over many masks; inside one mask they are exact. ``values`` is overwritten.
    """
    counts = np.empty_like(values)
    heads = tok_ptr[:-1][np.diff(tok_ptr) > 0]
    first = values[heads]
    values[heads] = 0
    for parity in (0, 1):
        z = values[parity::2]
        bounds = (tok_ptr - parity + 1) // 2
        starts = bounds[:-1][bounds[1:] > bounds[:-1]]
        if len(starts):
            totals = np.add.reduceat(z, starts, dtype=np.int32)
            z[starts[1:]] -= totals[:-1]
        np.cumsum(z, dtype=np.int32, out=counts[parity::2])
    counts[heads] = first
    return counts


def _mask_stats(counts: np.ndarray, tok_ptr: np.ndarray, h: int, w: int, first_mask: int):
    """Per mask of a block: (area, x0, x1), after checking its runs (none negative, adding up to h*w).

    Each parity class of ``counts`` holds one contiguous segment per mask (its odd runs or its even runs), so
    one ``reduceat`` per class gives every mask's foreground and background totals. The first foreground
    pixel is where the first (background) run ends; the last is before the final run when that is background.
    """
    hw = h * w
    n = len(tok_ptr) - 1
    m = np.diff(tok_ptr)
    sums = np.zeros((2, n), dtype=np.int64)
    for parity in (0, 1):
        bounds = (tok_ptr - parity + 1) // 2
        nonempty = np.flatnonzero(bounds[1:] > bounds[:-1])
        if len(nonempty):
            sums[parity, nonempty] = np.add.reduceat(counts[parity::2], bounds[:-1][nonempty])
    area = sums[(tok_ptr[:-1] + 1) % 2, np.arange(n)]
    bad = (m == 0) | (sums[0] + sums[1] != hw)
    if bad.any() or (len(counts) and counts.min() < 0):
        for i in range(n):  # the first bad mask (a slow scan, only on bad input)
            seg = counts[tok_ptr[i] : tok_ptr[i + 1]].astype(np.int64)
            if len(seg) == 0:
                raise MalformedRLE(first_mask + i, "no runs")
            if seg.min() < 0:
                raise MalformedRLE(first_mask + i, f"negative run length {int(seg.min())}")
            if seg.sum() != hw:
                raise MalformedRLE(first_mask + i, f"runs add up to {int(seg.sum())}, expected height*width = {hw}")
    fg = m >= 2
    x0 = np.where(fg, counts[tok_ptr[:-1]] // h, 0)
    last_end = hw - np.where(m % 2 == 1, counts[tok_ptr[1:] - 1], 0)
    x1 = np.where(fg, (last_end - 1) // h, -1)
    return area, x0.astype(np.int64), x1.astype(np.int64)


# run ends are int32 (half the memory traffic) while the virtual line is shorter than this
_INT32_LINE = 2**31

# characters (or runs) per block of masks decoded together: bounds the temporaries of a huge video
_BLOCK = 1 << 20


def _blocks(sizes: np.ndarray) -> np.ndarray:
    """Mask boundaries of blocks of about ``_BLOCK`` units, given each mask's size in units."""
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, np.arange(_BLOCK, cum[-1] if len(cum) else 0, _BLOCK), side="right")
    return np.unique(np.concatenate(([0], cuts, [len(sizes)])))


def _assemble(h: int, w: int, counts: np.ndarray, tok_ptr: np.ndarray, stats: list) -> MaskRuns:
    """Run lengths + per-block stats -> :class:`MaskRuns` (run ends in int32 when the line is short enough)."""
    n = len(tok_ptr) - 1
    if n * h * w < _INT32_LINE:
        pos = np.cumsum(counts, dtype=np.int32)  # (cumsum with a dtype other than the input's is slow)
    else:
        pos = np.cumsum(counts.astype(np.int64))
    area, x0, x1 = (np.concatenate([s[k] for s in stats]) if stats else np.zeros(0, np.int64) for k in range(3))
    return MaskRuns(h, w, pos, tok_ptr, area, x0, x1)


# the strings of a batch are joined by this character: outside the RLE alphabet, so never inside a valid string
_SEP = "~"
_SEP_CODE = ord(_SEP) - 48  # as it reads after subtracting 48
_ALPHABET_ERROR = "character outside the RLE alphabet (ascii 48-111)"


def _joined(strings: list) -> bytes:
    """The strings (str or bytes) joined by ``_SEP``, as ascii bytes."""
    try:
        return _SEP.join(strings).encode("ascii")
    except (TypeError, UnicodeEncodeError):  # bytes, or stray non-ascii characters: go one by one
        parts = []
        for i, s in enumerate(strings):
            try:
                parts.append(s.encode("ascii") if isinstance(s, str) else bytes(s))
            except UnicodeEncodeError:
                raise MalformedRLE(i, "non-ascii character in the counts string") from None
        return _SEP.encode().join(parts)


def decode_strings(strings: list, h: int, w: int) -> MaskRuns:
    """COCO compressed RLE count strings (str or bytes) of n masks of size (h, w) -> :class:`MaskRuns`.

    Raises :class:`MalformedRLE` (with the index of the first bad mask) for characters outside the format or
    runs that are negative or do not add up to h*w.
    """
    n = len(strings)
    if n == 0:
        return _assemble(h, w, np.zeros(0, np.int32), np.zeros(1, np.int64), [])
    buf = _joined(strings)
    try:
        return _decode_joined(buf, n, h, w)
    except MalformedRLE as e:
        # a string holding the separator shifts every string after it: an error found there names the wrong
        # string; errors before it stand
        sep = _SEP if isinstance(strings[0], str) else _SEP.encode()
        first = next((i for i, s in enumerate(strings) if sep in s), None)
        if first is not None and first <= e.index:
            raise MalformedRLE(first, _ALPHABET_ERROR) from None
        raise


def _decode_joined(buf: bytes, n: int, h: int, w: int) -> MaskRuns:
    """:func:`decode_strings` of ``n`` strings joined by ``_SEP``, block by block of about ``_BLOCK`` characters.

    Every character is either the final chunk of a number (a token) or not (a continuation chunk, a
    separator, or a character outside the alphabet); string boundaries come from the separators.
    """
    c = np.frombuffer(buf, dtype=np.uint8) - np.uint8(48)
    sep_byte = _SEP.encode()
    blocks, stats, tok_ptr = [], [], np.zeros(n + 1, dtype=np.int64)
    n_done = n_runs = start = 0
    while True:
        end = buf.find(sep_byte, start + _BLOCK) if start + _BLOCK < len(buf) else -1
        end = len(buf) if end < 0 else end
        cb = c[start:end]
        last = cb < 32
        skip = np.flatnonzero(~last)
        sep = skip[cb[skip] == _SEP_CODE]
        k = len(sep) + 1  # strings in this block
        if n_done + k > n:
            raise MalformedRLE(n, "more strings than masks")  # (a separator inside a string: see the caller)
        cp, ce = np.concatenate(([0], sep + 1)), np.append(sep, len(cb))  # string i: characters [cp[i], ce[i])
        ends = ce[ce > cp] - 1
        last[ends] = True  # a string's final character ends a number: no bleeding over
        nontok = skip[~last[skip]]  # continuation chunks, separators, characters outside the alphabet
        before = nontok - np.arange(len(nontok))  # tokens before each
        is_cont = cb[nontok] != _SEP_CODE
        cont = nontok[is_cont]
        # a character outside 48-111 is a continuation chunk or ends its string: only those need a look
        suspects = np.concatenate((cont, ends))
        if len(suspects) and cb[suspects].max() >= 64:
            bad = suspects[cb[suspects] >= 64].min()
            raise MalformedRLE(int(n_done + np.searchsorted(cp, bad, side="right") - 1), _ALPHABET_ERROR)
        values = _token_values(cb, last, cont, before[is_cont])
        tp = np.concatenate(([0], before[~is_cont], [len(values)]))
        blocks.append(_undelta(values, tp))
        stats.append(_mask_stats(blocks[-1], tp, h, w, n_done))
        tok_ptr[n_done + 1 : n_done + k + 1] = tp[1:] + n_runs
        n_done, n_runs = n_done + k, n_runs + len(values)
        if end == len(buf):
            break
        start = end + 1
    counts = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return _assemble(h, w, counts, tok_ptr, stats)


def runs_from_count_lists(count_lists: list, h: int, w: int) -> MaskRuns:
    """Uncompressed COCO counts (lists of numbers, as YouTube-VIS GT stores them) of n masks -> :class:`MaskRuns`.

    Numbers are read as pycocotools reads them (``np.array(counts, dtype=np.uint32)``): truncated to integers.
    """
    n = len(count_lists)
    lens = np.fromiter(map(len, count_lists), dtype=np.int64, count=n)
    counts = np.fromiter(chain.from_iterable(count_lists), dtype=np.int64, count=int(lens.sum()))
    if len(counts) and (counts.max() >= 2**31 or counts.min() < -(2**31)):
        counts = np.clip(counts, -(2**31), 2**31 - 1)  # far beyond any frame: the total check reports it
    counts = counts.astype(np.int32)
    tok_ptr = np.concatenate(([0], np.cumsum(lens)))
    cuts = _blocks(lens)
    stats = [
        _mask_stats(counts[tok_ptr[a] : tok_ptr[b]], tok_ptr[a : b + 1] - tok_ptr[a], h, w, a)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    return _assemble(h, w, counts, tok_ptr, stats)


def decode_tracks(tracks: list, h: int, w: int, rows: bool = False) -> MaskRuns | None:
    """All masks of ``tracks`` (lists of per-frame segmentations: RLE dicts with compressed or list counts, or
    None for an empty frame), track after track, by the compiled kernel; ``rows``: fill ``y0, y1`` too.

    Returns None when the kernel is not in use or an entry needs the numpy path (polygons, non-ascii strings,
    non-int counts, anything but a list of lists); raises :class:`MalformedRLE` like :func:`decode_strings`.
    """
    if _rle_kernels is None:
        return None
    out = _rle_kernels.decode_tracks(tracks, h, w, rows)
    if out is None:
        return None
    if len(out) == 2:
        raise MalformedRLE(*out)
    pos, tok_ptr, area, x0, x1, y0, y1 = (np.frombuffer(b, dtype=np.int64) for b in out)
    n = len(tok_ptr) - 1
    runs = MaskRuns(h, w, pos[: tok_ptr[-1]], tok_ptr, area[:n], x0[:n], x1[:n])
    if rows:
        runs.y0, runs.y1 = y0[:n], y1[:n]
    return runs


# -------------------------------------------------------------------------------------------- intersections
@dataclass
class ColumnTable:
    """GT runs cut at column boundaries, indexed per mask and column of its extent.

    Column x of mask i sits at slot ``offset[i] + x - x0[i]``: ``r0, r1`` are the rows [r0, r1) of the first
    run piece in that column (0, 0 when there is none), ``count`` the number of pieces. All pieces, in order:
    ``slot_of_piece``, rows ``p0, p1``. ``y0, y1`` (n,): first and last foreground row of each mask (0 and -1
    when empty).
    """

    offset: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    count: np.ndarray
    slot_of_piece: np.ndarray
    p0: np.ndarray
    p1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray


def _cut_at_columns(s: np.ndarray, e: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intervals [s, e) -> (virtual column, first row, end row, source interval) of each piece in one column."""
    col = s // h
    n = (e - 1) // h - col + 1  # columns an interval touches (0 for an empty interval on a column edge)
    if (n == 1).all():
        return col, s - col * h, e - col * h, np.arange(len(s))
    which = np.repeat(np.arange(len(s)), n)
    k = np.arange(len(which)) - np.repeat(np.cumsum(n) - n, n)
    pcol = col[which] + k
    r0 = np.where(k == 0, s[which] - pcol * h, 0)
    r1 = np.where(k == n[which] - 1, e[which] - pcol * h, h)
    return pcol, r0, r1, which


def column_table(runs: MaskRuns) -> ColumnTable:
    """The per-column index of ``runs`` (built for the GT side of :func:`pair_intersections`)."""
    s, e, _ = runs.intervals()
    col, p0, p1, _ = _cut_at_columns(s, e, runs.h)
    width = np.maximum(runs.x1 - runs.x0 + 1, 0)
    offset = np.concatenate(([0], np.cumsum(width)))
    per_mask = np.diff(np.searchsorted(col, np.arange(runs.n + 1) * runs.w))
    slot = col + np.repeat(offset[:-1] - runs.x0 - np.arange(runs.n) * runs.w, per_mask)
    count = np.bincount(slot, minlength=offset[-1])
    first = np.cumsum(count) - count
    r0, r1 = np.zeros(offset[-1], dtype=np.int32), np.zeros(offset[-1], dtype=np.int32)
    has = count > 0
    r0[has], r1[has] = p0[first[has]], p1[first[has]]
    y0, y1 = np.zeros(runs.n, dtype=np.int64), np.full(runs.n, -1, dtype=np.int64)
    nonempty = np.flatnonzero(per_mask > 0)
    if len(nonempty):
        starts = (np.cumsum(per_mask) - per_mask)[nonempty]
        y0[nonempty] = np.minimum.reduceat(p0, starts)
        y1[nonempty] = np.maximum.reduceat(p1, starts) - 1
    return ColumnTable(offset, r0, r1, count, slot, p0, p1, y0, y1)


def intersections(dt: MaskRuns, gt: MaskRuns, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(P,) int64 pixel counts ``|dt mask d[k]  AND  gt mask g[k]|`` (masks of one frame size).

    The compiled kernel merges the two masks' intervals; the numpy path is :func:`pair_intersections`.
    """
    if _rle_kernels is None:
        return pair_intersections(dt, gt, gt.table(), d, g)
    out = np.empty(len(d), dtype=np.int64)
    as64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (dt.pos, dt.tok_ptr, gt.pos, gt.tok_ptr, d, g))
    _rle_kernels.intersections(*as64, dt.h * dt.w, out)
    return out


def pair_intersections(dt: MaskRuns, gt: MaskRuns, table: ColumnTable, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(P,) int64 pixel counts ``|dt mask d[k]  AND  gt mask g[k]|`` (same frame size; ``table`` of ``gt``).

    Every foreground interval of the prediction inside the GT's column extent is compared with the GT's runs
    of its column: one interval overlap where the GT column holds one run (nearly always), a sum over its runs
    otherwise. Intervals running over several columns are cut into pieces first.
    """
    if len(d) == 0:
        return np.zeros(0, dtype=np.int64)
    h, w, hw = dt.h, dt.w, dt.h * dt.w
    pos = dt.pos
    # the prediction's intervals that meet the GT's columns, positions [d*hw + x0*h, d*hw + (x1+1)*h);
    # searching in sorted key order is several times faster than in pair order
    key_lo = d * hw + gt.x0[g] * h
    order = np.argsort(key_lo, kind="stable")
    d, g, key_lo = d[order], g[order], key_lo[order]
    key_hi = d * hw + (gt.x1[g] + 1) * h
    first = dt.tok_ptr[d]
    n_int = (dt.tok_ptr[d + 1] - first) // 2
    # (keys of the haystack's dtype: numpy would otherwise convert the whole haystack on every call)
    lo = (np.searchsorted(pos, key_lo.astype(pos.dtype), side="right") - first) // 2
    hi = (np.searchsorted(pos, key_hi.astype(pos.dtype), side="left") - first + 1) // 2
    hi = np.minimum(hi, n_int)
    cnt = np.maximum(hi - lo, 0)
    ptr = np.concatenate(([0], np.cumsum(cnt)))
    # interval start tokens, pair after pair: steps of 2 inside a pair, a jump to the next pair's first one
    t = _ranges(first + 2 * lo, cnt, ptr, step=2)
    s, e = np.take(pos, t), np.take(pos[1:], t)
    col = s // h
    base = col * h
    r0, r1 = s - base, e - base
    slot = col + np.repeat(table.offset[g] - gt.x0[g] - d * w, cnt)  # prediction column -> GT table slot
    spans = np.flatnonzero(r1 > h) if r1.max(initial=0) > h else np.zeros(0, np.int64)
    # (clip: a span's start column may lie outside the GT's extent; spans are replaced below)
    g1 = np.take(table.r1, slot, mode="clip").astype(r1.dtype, copy=False)
    g0 = np.take(table.r0, slot, mode="clip").astype(r1.dtype, copy=False)
    overlap = np.minimum(r1, g1, out=g1)
    overlap -= np.maximum(r0, g0, out=g0)
    np.maximum(overlap, 0, out=overlap)
    if (table.count > 1).any():
        multi = np.flatnonzero(np.take(table.count, slot, mode="clip") > 1)
        if len(spans):
            multi = np.setdiff1d(multi, spans, assume_unique=True)
        if len(multi):  # GT columns with several runs: sum the overlaps with all of them
            overlap[multi] = _overlap_all(r0[multi], r1[multi], slot[multi], table, h)
    if len(spans):
        pair = np.repeat(np.arange(len(d)), cnt)[spans]
        overlap[spans] = _overlap_spanning(s[spans], e[spans], d[pair], g[pair], gt, table)
    # sums in the overlaps' dtype may wrap around over a batch; per pair they are exact (below h*w)
    cs = np.empty(len(overlap) + 1, dtype=overlap.dtype)
    cs[0] = 0
    np.cumsum(overlap, out=cs[1:])
    out = np.empty(len(d), dtype=np.int64)
    out[order] = cs[ptr[1:]] - cs[ptr[:-1]]
    return out


def _ranges(starts: np.ndarray, cnt: np.ndarray, ptr: np.ndarray, step: int) -> np.ndarray:
    """Concatenated ranges ``starts[k] + step * arange(cnt[k])`` (``ptr``: cumulative counts with a leading 0)."""
    out = np.full(ptr[-1], step, dtype=np.int64)
    nonempty = np.flatnonzero(cnt)
    if len(nonempty):
        s = starts[nonempty]
        prev_last = np.concatenate(([0], (s + step * (cnt[nonempty] - 1))[:-1]))
        out[ptr[nonempty]] = s - prev_last
    return np.cumsum(out, out=out)


def _overlap_all(r0: np.ndarray, r1: np.ndarray, slot: np.ndarray, table: ColumnTable, h: int) -> np.ndarray:
    """Overlap of row intervals [r0, r1) with all GT pieces of their column slots, however many.

    With pieces keyed ``slot * (h + 1) + row`` in one sorted line, ``C(key)`` = GT pixels before ``key`` is a
    prefix sum plus a part of the piece found by binary search; the overlap is ``C(end) - C(start)``.
    """
    key = table.slot_of_piece * (h + 1) + table.p0
    length = (table.p1 - table.p0).astype(np.int64)
    before = np.concatenate(([0], np.cumsum(length)))

    def covered(q: np.ndarray) -> np.ndarray:
        k = np.searchsorted(key, q, side="right") - 1
        inside = np.clip(q - key[np.maximum(k, 0)], 0, length[np.maximum(k, 0)])
        return np.where(k >= 0, before[np.maximum(k, 0)] + inside, 0)

    base = slot.astype(np.int64) * (h + 1)
    return covered(base + r1) - covered(base + r0)


def _overlap_spanning(s, e, d, g, gt: MaskRuns, table: ColumnTable) -> np.ndarray:
    """Overlap of prediction intervals [s, e) running over several columns with GT masks g (one per interval)."""
    col, r0, r1, owner = _cut_at_columns(s, e, gt.h)
    x = col - d[owner] * gt.w  # column inside the frame
    gx0, gx1 = gt.x0[g[owner]], gt.x1[g[owner]]
    inside = (x >= gx0) & (x <= gx1)
    slot = np.where(inside, table.offset[g[owner]] + x - gx0, 0)
    ov = _overlap_all(r0, r1, slot, table, gt.h) * inside
    return np.bincount(owner, weights=ov, minlength=len(s)).astype(np.int64)
