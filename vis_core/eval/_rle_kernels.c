/* Compiled kernels of the fast evaluator: COCO RLE masks -> runs, and exact pairwise intersections.
 *
 * Optional: vis_core/eval/runs.py falls back to its numpy implementation (same numbers, tests cross-check
 * both) when this module is not built or an input needs it. Only the plain Python C API is used (no numpy
 * headers): arrays travel as buffers (bytearrays out, any contiguous int64 buffer in).
 *
 * Layout (MaskRuns in runs.py): n masks of one frame size laid end to end on a virtual line, mask i covering
 * positions [i*h*w, (i+1)*h*w), column-major. pos[k] is the end of run k (int64); mask i owns tokens
 * tok_ptr[i] .. tok_ptr[i+1]; its foreground interval j is [pos[t + 2j], pos[t + 2j + 1]) with t = tok_ptr[i].
 *
 * Compressed counts follow pycocotools' rleFrString: 5-bit chunks, least significant first, one character
 * 48 + chunk each, 0x20 set on every chunk but a number's last, bit 0x10 of the last chunk its sign; from the
 * fourth count on (index > 2) the stored value is counts[i] - counts[i-2]. A string's final character ends
 * its number whatever its continuation bit (pycocotools would read past the string), as in runs.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* ------------------------------------------------------------------------------------------------ decoding */

typedef struct { /* one decoded mask */
    int64_t m;         /* runs */
    int64_t sum;       /* of all runs: h*w when well formed */
    int64_t area;      /* of the odd (foreground) runs */
    int64_t min_count; /* smallest run (0 when none is negative) */
    int64_t first, last;
} Mask;

static int64_t floor_div(int64_t a, int64_t b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

/* value of a number's final chunk c (character - 48), sign-extended from bit 4 as runs.py does */
static inline int64_t final_chunk(unsigned c) { return (int64_t)(int8_t)(uint8_t)(c ^ 16u) - 16; }

/* a number of several chunks starting at s[*pp]; returns 0, or -1 for a character outside the alphabet */
static int parse_number(const unsigned char *s, Py_ssize_t len, Py_ssize_t *pp, int64_t *value) {
    Py_ssize_t p = *pp;
    int64_t low = 0;
    int k = 0;
    for (;;) {
        unsigned c = (unsigned)s[p] - 48u;
        if (c >= 64u) return -1;
        p++;
        if (!(c & 0x20u) || p == len) { /* the number's last chunk (a string's final character always is) */
            int64_t v = final_chunk(c), x;
            if (k >= 12) { /* 60+ bits: beyond any frame, refused by the total check */
                x = v < 0 ? INT32_MIN : INT32_MAX;
            } else { /* exact in int64, then clipped to int32 as runs.py does */
                x = v * ((int64_t)1 << (5 * k)) + low;
                x = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : x);
            }
            *value = x;
            *pp = p;
            return 0;
        }
        if (k < 12) low |= (int64_t)(c & 31u) << (5 * k);
        k++;
    }
}

/* Adds run x (the m-th) of a mask: local variables of the two parsers below, kept in registers. */
#define ADD_RUN(x)                        \
    do {                                  \
        if (m == 0) first = (x);          \
        cum += (x);                       \
        out[m] = base + cum;              \
        if ((x) < min_count) min_count = (x); \
        if (m & 1) area += (x);           \
        last = (x);                       \
        m++;                              \
    } while (0)

#define STORE_MASK(mk)                                                                      \
    do {                                                                                    \
        (mk)->m = m; (mk)->sum = cum; (mk)->area = area; (mk)->min_count = min_count;       \
        (mk)->first = first; (mk)->last = last;                                             \
    } while (0)

/* runs of a compressed string -> run ends base + cumulative sums in out; 0, or -1 (alphabet) */
static int parse_compressed(const unsigned char *restrict s, Py_ssize_t len, int64_t base, int64_t *restrict out,
                            Mask *mk) {
    int64_t m = 0, cum = 0, area = 0, min_count = 0, first = 0, last = 0, prev1 = 0, prev2 = 0;
    Py_ssize_t p = 0;
    while (p < len) {
        int64_t x;
        unsigned c = (unsigned)s[p] - 48u;
        if (c < 32u) { /* a number of one chunk: nearly all of them */
            x = final_chunk(c);
            p++;
        } else if (parse_number(s, len, &p, &x) < 0) {
            return -1;
        }
        if (m > 2) x += prev2; /* stored as counts[i] - counts[i-2] from i = 3 on */
        prev2 = prev1;
        prev1 = x;
        ADD_RUN(x);
    }
    STORE_MASK(mk);
    return 0;
}

/* runs of an uncompressed count list; 0, or 1 when an entry is not an int (the numpy path takes it) */
static int parse_list(PyObject *list, int64_t base, int64_t *restrict out, Mask *mk) {
    int64_t m = 0, cum = 0, area = 0, min_count = 0, first = 0, last = 0;
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *o = PyList_GET_ITEM(list, k);
        int overflow = 0;
        if (!PyLong_Check(o)) return 1;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow) return 1;
        /* as runs.py: clipped to int32, far beyond any frame and refused by the total check */
        int64_t x = v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int64_t)v);
        ADD_RUN(x);
    }
    STORE_MASK(mk);
    return 0;
}

/* NULL for a well-formed mask, else the reason (a new reference) */
static PyObject *malformed(const Mask *mk, int64_t hw) {
    if (mk->m == 0) return PyUnicode_FromString("no runs");
    if (mk->min_count < 0) return PyUnicode_FromFormat("negative run length %lld", (long long)mk->min_count);
    if (mk->sum != hw)
        return PyUnicode_FromFormat("runs add up to %lld, expected height*width = %lld", (long long)mk->sum,
                                    (long long)hw);
    return NULL;
}

/* column of a position 0 <= x < 2**40 (a reciprocal multiply, corrected by one step if rounding missed) */
static inline int64_t column_of(int64_t x, int64_t h, double inv_h) {
    int64_t q = (int64_t)((double)x * inv_h), r = x - q * h;
    return r < 0 ? q - 1 : (r >= h ? q + 1 : q);
}

/* first and last foreground row of a well-formed mask from its run ends (0 and -1 when empty) */
static void mask_rows(const int64_t *out, int64_t m, int64_t base, int64_t h, int64_t *y0, int64_t *y1) {
    double inv_h = 1.0 / (double)h;
    int64_t lo = h, hi = -1;
    for (int64_t j = 1; j < m; j += 2) {
        int64_t s = out[j - 1] - base, e = out[j] - base;
        if (e <= s) continue;
        int64_t c0 = column_of(s, h, inv_h), c1 = column_of(e - 1, h, inv_h);
        int64_t r0 = c0 == c1 ? s - c0 * h : 0, r1 = c0 == c1 ? e - 1 - c1 * h : h - 1; /* several columns: all */
        if (r0 < lo) lo = r0;
        if (r1 > hi) hi = r1;
    }
    *y0 = hi < 0 ? 0 : lo;
    *y1 = hi;
}

static PyObject *COUNTS_KEY;

/* size of one entry in tokens (an upper bound), or -1 when the numpy path must take it */
static Py_ssize_t entry_size(PyObject *e) {
    if (e == Py_None) return 1;
    if (!PyDict_Check(e)) return -1;
    PyObject *c = PyDict_GetItemWithError(e, COUNTS_KEY);
    if (c == NULL) {
        PyErr_Clear();
        return -1;
    }
    if (PyUnicode_Check(c)) return PyUnicode_IS_COMPACT_ASCII(c) ? PyUnicode_GET_LENGTH(c) : -1;
    if (PyBytes_Check(c)) return PyBytes_GET_SIZE(c);
    if (PyList_Check(c)) return PyList_GET_SIZE(c);
    return -1;
}

static PyObject *new_buffer(Py_ssize_t n_int64) {
    return PyByteArray_FromStringAndSize(NULL, (n_int64 > 0 ? n_int64 : 1) * (Py_ssize_t)sizeof(int64_t));
}

static int64_t *data_of(PyObject *bytearray) { return (int64_t *)PyByteArray_AS_STRING(bytearray); }

PyDoc_STRVAR(decode_tracks_doc,
             "decode_tracks(tracks, h, w, rows) -> (pos, tok_ptr, area, x0, x1, y0, y1) | (index, reason) | None\n\n"
             "tracks: a list of lists of per-frame segmentations (an RLE dict with compressed or list counts, or\n"
             "None for an empty frame). Returns bytearrays of int64 (see the module docstring; y0, y1: first and\n"
             "last foreground row, 0 and -1 when empty, filled when rows is true), (mask index, reason) for the\n"
             "first malformed mask, or\n"
             "None when an entry needs the numpy path (other types, non-ascii strings, non-int counts).");

static PyObject *decode_tracks(PyObject *self, PyObject *args) {
    PyObject *tracks;
    long long h, w;
    int rows;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!LLp", &PyList_Type, &tracks, &h, &w, &rows)) return NULL;
    if (h <= 0 || w <= 0) {
        PyErr_SetString(PyExc_ValueError, "frame size must be positive");
        return NULL;
    }
    Py_ssize_t n_tracks = PyList_GET_SIZE(tracks), n_masks = 0, cap = 0;
    for (Py_ssize_t t = 0; t < n_tracks; t++) {
        PyObject *track = PyList_GET_ITEM(tracks, t);
        if (!PyList_Check(track)) Py_RETURN_NONE;
        Py_ssize_t n = PyList_GET_SIZE(track);
        for (Py_ssize_t f = 0; f < n; f++) {
            Py_ssize_t size = entry_size(PyList_GET_ITEM(track, f));
            if (size < 0) Py_RETURN_NONE;
            cap += size;
        }
        n_masks += n;
    }
    PyObject *out[7] = {new_buffer(cap), new_buffer(n_masks + 1), NULL, NULL, NULL, NULL, NULL};
    for (int k = 2; k < 7; k++) out[k] = new_buffer(n_masks);
    for (int k = 0; k < 7; k++)
        if (out[k] == NULL) goto fail;
    int64_t *pos = data_of(out[0]), *tok_ptr = data_of(out[1]), *area = data_of(out[2]), *x0 = data_of(out[3]),
            *x1 = data_of(out[4]), *y0 = data_of(out[5]), *y1 = data_of(out[6]);
    const int64_t hw = h * w;
    int64_t n_tok = 0, i = 0;
    tok_ptr[0] = 0;
    for (Py_ssize_t t = 0; t < n_tracks; t++) {
        PyObject *track = PyList_GET_ITEM(tracks, t);
        Py_ssize_t n = PyList_GET_SIZE(track);
        for (Py_ssize_t f = 0; f < n; f++, i++) {
            PyObject *e = PyList_GET_ITEM(track, f), *reason = NULL;
            int64_t base = i * hw, *run_ends = pos + n_tok;
            Mask mk = {1, hw, 0, 0, hw, hw}; /* null: the empty mask, one background run */
            int status = 0;
            if (e == Py_None) {
                run_ends[0] = base + hw;
            } else {
                PyObject *c = PyDict_GetItemWithError(e, COUNTS_KEY);
                if (PyUnicode_Check(c))
                    status = parse_compressed((const unsigned char *)PyUnicode_DATA(c), PyUnicode_GET_LENGTH(c),
                                              base, run_ends, &mk);
                else if (PyBytes_Check(c))
                    status = parse_compressed((const unsigned char *)PyBytes_AS_STRING(c), PyBytes_GET_SIZE(c),
                                              base, run_ends, &mk);
                else
                    status = parse_list(c, base, run_ends, &mk) == 0 ? 0 : 1;
                if (status < 0) reason = PyUnicode_FromString("character outside the RLE alphabet (ascii 48-111)");
            }
            if (status == 0) reason = malformed(&mk, hw);
            if (status == 1 || reason != NULL || PyErr_Occurred()) {
                for (int k = 0; k < 7; k++) Py_DECREF(out[k]);
                if (status == 1) Py_RETURN_NONE;
                if (reason == NULL) return NULL;
                return Py_BuildValue("(nN)", (Py_ssize_t)i, reason);
            }
            area[i] = mk.area;
            x0[i] = mk.m >= 2 ? floor_div(mk.first, h) : 0;
            x1[i] = mk.m >= 2 ? floor_div(hw - ((mk.m & 1) ? mk.last : 0) - 1, h) : -1;
            if (rows) mask_rows(run_ends, mk.m, base, h, &y0[i], &y1[i]);
            n_tok += mk.m;
            tok_ptr[i + 1] = n_tok;
        }
    }
    if (PyByteArray_Resize(out[0], (n_tok > 0 ? n_tok : 1) * (Py_ssize_t)sizeof(int64_t)) < 0) goto fail;
    return Py_BuildValue("(NNNNNNN)", out[0], out[1], out[2], out[3], out[4], out[5], out[6]);
fail:
    for (int k = 0; k < 7; k++) Py_XDECREF(out[k]);
    return NULL;
}

/* ------------------------------------------------------------------------------------------- intersections */

PyDoc_STRVAR(intersections_doc,
             "intersections(dt_pos, dt_tok_ptr, gt_pos, gt_tok_ptr, d, g, hw, out) -> None\n\n"
             "out[k] = pixels of dt mask d[k] AND gt mask g[k] (masks of one frame size hw); every argument but\n"
             "hw a contiguous int64 buffer, out writable. Foreground intervals are merged, starting at the first\n"
             "prediction interval that can reach the GT's first one.");

static int get_buffer(PyObject *o, Py_buffer *b, int writable) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (b->len % (Py_ssize_t)sizeof(int64_t) != 0) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_ValueError, "int64 buffers expected");
        return -1;
    }
    return 0;
}

static PyObject *intersections(PyObject *self, PyObject *args) {
    PyObject *objs[7];
    long long hw;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOLO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &hw,
                          &objs[6]))
        return NULL;
    Py_buffer b[7];
    int got = 0;
    for (; got < 7; got++)
        if (get_buffer(objs[got], &b[got], got == 6) < 0) goto done;
    {
        const int64_t *dpos = b[0].buf, *dtok = b[1].buf, *gpos = b[2].buf, *gtok = b[3].buf;
        const int64_t *d = b[4].buf, *g = b[5].buf;
        int64_t *out = b[6].buf;
        Py_ssize_t n = b[4].len / 8, n_dt = b[1].len / 8 - 1, n_gt = b[3].len / 8 - 1;
        if (b[5].len / 8 != n || b[6].len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "d, g and out must have the same length");
            goto done;
        }
        if (n_dt < 0 || n_gt < 0 || dtok[n_dt] > b[0].len / 8 || gtok[n_gt] > b[2].len / 8) {
            PyErr_SetString(PyExc_ValueError, "tok_ptr points past the run ends");
            goto done;
        }
        for (Py_ssize_t k = 0; k < n; k++)
            if (d[k] < 0 || d[k] >= n_dt || g[k] < 0 || g[k] >= n_gt) {
                PyErr_SetString(PyExc_IndexError, "mask index out of range");
                goto done;
            }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < n; k++) {
            const int64_t *a = dpos + dtok[d[k]], *c = gpos + gtok[g[k]];
            int64_t na = (dtok[d[k] + 1] - dtok[d[k]]) / 2, nc = (gtok[g[k] + 1] - gtok[g[k]]) / 2;
            int64_t base_a = d[k] * hw, base_c = g[k] * hw, sum = 0, i = 0, j = 0;
            if (na > 0 && nc > 0) {
                /* skip prediction intervals ending before the GT's first interval starts (binary search) */
                int64_t first = c[0] - base_c + base_a, lo = 0, hi = na;
                while (lo < hi) {
                    int64_t mid = (lo + hi) / 2;
                    if (a[2 * mid + 1] <= first) lo = mid + 1; else hi = mid;
                }
                i = lo;
            }
            while (i < na && j < nc) {
                int64_t s1 = a[2 * i] - base_a, e1 = a[2 * i + 1] - base_a;
                int64_t s2 = c[2 * j] - base_c, e2 = c[2 * j + 1] - base_c;
                int64_t lo = s1 > s2 ? s1 : s2, hi = e1 < e2 ? e1 : e2;
                if (hi > lo) sum += hi - lo;
                if (e1 < e2) i++; else j++;
            }
            out[k] = sum;
        }
        Py_END_ALLOW_THREADS
    }
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&b[k]);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_tracks", decode_tracks, METH_VARARGS, decode_tracks_doc},
    {"intersections", intersections, METH_VARARGS, intersections_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rle_kernels",
                                    "Compiled kernels of the fast evaluator (see vis_core/eval/runs.py).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rle_kernels(void) {
    COUNTS_KEY = PyUnicode_InternFromString("counts");
    if (COUNTS_KEY == NULL) return NULL;
    return PyModule_Create(&module);
}
