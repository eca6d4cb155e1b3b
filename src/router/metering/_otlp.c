/* router.metering._otlp: the OTLP protobuf pieces router writes, in C.
 *
 * An optional accelerator for router/metering/tracing.py: `kv` and `span` return exactly the bytes
 * of the pure-Python `_kv_py` and `_span_py` (tests/test_tracing.py compares both on every kind of
 * value and on whole exported requests). When this module does not build (no compiler), tracing
 * works unchanged on the Python path.
 *
 *   kv(key: str, value) -> bytes            a span attribute: Span.attributes (field 9), a KeyValue
 *   span(trace_id: bytes, span_id: int, parent: int | None, trace_state: str | None, name: str,
 *        kind: int, start_ns: int, end_ns: int, attributes: bytes, status: int,
 *        message: str | None, flags: int) -> bytes     ScopeSpans.spans (field 2), a Span
 *
 * A value `kv` does not handle itself (an int outside 64 bits, another type) goes to the Python
 * function set with `set_fallback`, so the two paths cannot differ there either.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *fallback_kv = NULL;   /* router.metering.tracing._kv_py */

/* ------------------------------------------------------------------ a growable buffer */

typedef struct {
    unsigned char *p;
    Py_ssize_t n, cap;
    unsigned char small[512];
} buf;

static void buf_init(buf *b) { b->p = b->small; b->n = 0; b->cap = sizeof(b->small); }
static void buf_free(buf *b) { if (b->p != b->small) PyMem_Free(b->p); }

static int
buf_reserve(buf *b, Py_ssize_t more)
{
    if (b->n + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->n + more)
        cap *= 2;
    unsigned char *p;
    if (b->p == b->small) {
        p = PyMem_Malloc(cap);
        if (p != NULL)
            memcpy(p, b->small, b->n);
    } else {
        p = PyMem_Realloc(b->p, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
buf_put(buf *b, const void *src, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static int
buf_byte(buf *b, unsigned char c)
{
    return buf_put(b, &c, 1);
}

static int
varint_len(uint64_t v)
{
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static int
buf_varint(buf *b, uint64_t v)
{
    unsigned char tmp[10];
    int n = 0;
    while (v > 0x7F) {
        tmp[n++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    tmp[n++] = (unsigned char)v;
    return buf_put(b, tmp, n);
}

static int
buf_fixed64(buf *b, uint64_t v)
{
    unsigned char tmp[8];
    for (int i = 0; i < 8; i++)
        tmp[i] = (unsigned char)(v >> (8 * i));
    return buf_put(b, tmp, 8);
}

/* a length-delimited field: key, length, payload */
static int
buf_ld(buf *b, unsigned char key, const void *src, Py_ssize_t n)
{
    if (buf_byte(b, key) < 0 || buf_varint(b, (uint64_t)n) < 0)
        return -1;
    return buf_put(b, src, n);
}

/* ------------------------------------------------------------------ AnyValue */

/* 1: encoded; 0: not handled here (use the Python fallback); -1: error */
static int
any_value(buf *b, PyObject *v, int depth)
{
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL)
            return -1;
        return buf_ld(b, 0x0a, s, n) < 0 ? -1 : 1;
    }
    if (PyBool_Check(v)) {
        unsigned char t[2] = {0x10, v == Py_True ? 1 : 0};
        return buf_put(b, t, 2) < 0 ? -1 : 1;
    }
    if (PyLong_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        uint64_t u;
        if (overflow > 0) {
            u = PyLong_AsUnsignedLongLong(v);
            if (u == (uint64_t)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
        } else if (overflow < 0) {
            return 0;
        } else {
            if (x == -1 && PyErr_Occurred())
                return -1;
            u = (uint64_t)x;   /* a negative value: two's complement, as _varint adds 1 << 64 */
        }
        if (buf_byte(b, 0x18) < 0 || buf_varint(b, u) < 0)
            return -1;
        return 1;
    }
    if (PyFloat_Check(v)) {
        unsigned char t[9];
        t[0] = 0x21;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), (char *)t + 1, 1) < 0)
            return -1;
        return buf_put(b, t, 9) < 0 ? -1 : 1;
    }
    if ((PyList_Check(v) || PyTuple_Check(v)) && depth < 8) {
        /* ArrayValue (field 5): each value an AnyValue in field 1 */
        PyObject *seq = PySequence_Fast(v, "a list");
        if (seq == NULL)
            return -1;
        buf inner;
        buf_init(&inner);
        int rc = 1;
        Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; i < count && rc == 1; i++) {
            buf one;
            buf_init(&one);
            rc = any_value(&one, PySequence_Fast_GET_ITEM(seq, i), depth + 1);
            if (rc == 1 && buf_ld(&inner, 0x0a, one.p, one.n) < 0)
                rc = -1;
            buf_free(&one);
        }
        Py_DECREF(seq);
        if (rc == 1 && buf_ld(b, 0x2a, inner.p, inner.n) < 0)
            rc = -1;
        buf_free(&inner);
        return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ kv */

static PyObject *
otlp_kv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "kv(key: str, value)");
        return NULL;
    }
    Py_ssize_t klen;
    const char *key = PyUnicode_AsUTF8AndSize(args[0], &klen);
    if (key == NULL)
        return NULL;
    buf v;
    buf_init(&v);
    int rc = any_value(&v, args[1], 0);
    if (rc <= 0) {
        buf_free(&v);
        if (rc < 0)
            return NULL;
        if (fallback_kv == NULL) {
            PyErr_SetString(PyExc_TypeError, "no fallback for this value");
            return NULL;
        }
        return PyObject_Vectorcall(fallback_kv, args, 2, NULL);
    }
    /* KeyValue: key (field 1), value (field 2); as attribute field 9 */
    Py_ssize_t payload = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)v.n) + v.n;
    Py_ssize_t total = 1 + varint_len((uint64_t)payload) + payload;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        buf_free(&v);
        return NULL;
    }
    buf o = {(unsigned char *)PyBytes_AS_STRING(out), 0, total, {0}};
    /* `o` never grows: exactly `total` bytes are written */
    buf_byte(&o, 0x4a);
    buf_varint(&o, (uint64_t)payload);
    buf_ld(&o, 0x0a, key, klen);
    buf_ld(&o, 0x12, v.p, v.n);
    buf_free(&v);
    return out;
}

/* ------------------------------------------------------------------ span */

static int
be64(PyObject *v, unsigned char out[8])
{
    uint64_t x = PyLong_AsUnsignedLongLong(v);
    if (x == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(x >> (8 * (7 - i)));
    return 0;
}

static PyObject *
otlp_span(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "span() takes 12 arguments");
        return NULL;
    }
    PyObject *trace_id = args[0], *span_id = args[1], *parent = args[2], *trace_state = args[3];
    PyObject *name = args[4], *kind = args[5], *start = args[6], *end = args[7], *attributes = args[8];
    PyObject *status = args[9], *message = args[10], *flags = args[11];
    if (!PyBytes_Check(trace_id) || !PyBytes_Check(attributes) || !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "span(trace_id: bytes, ..., name: str, ..., attributes: bytes, ...)");
        return NULL;
    }
    unsigned char sid[8], pid[8];
    if (be64(span_id, sid) < 0)
        return NULL;
    if (parent != Py_None && be64(parent, pid) < 0)
        return NULL;
    long k = PyLong_AsLong(kind);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    if (k < 0 || k > 255) {
        PyErr_SetString(PyExc_ValueError, "kind must be in range(0, 256)");
        return NULL;
    }
    uint64_t s = PyLong_AsUnsignedLongLong(start);
    if (s == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t e = PyLong_AsUnsignedLongLong(end);
    if (e == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    long st = PyLong_AsLong(status);
    if (st == -1 && PyErr_Occurred())
        return NULL;
    unsigned long fl = PyLong_AsUnsignedLong(flags);
    if (fl == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (st < 0 || st > 255 || fl > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "status or flags out of range");
        return NULL;
    }
    Py_ssize_t nlen, tslen = 0, mlen = 0;
    const char *nm = PyUnicode_AsUTF8AndSize(name, &nlen), *ts = NULL, *msg = NULL;
    if (nm == NULL)
        return NULL;
    if (trace_state != Py_None) {   /* `if trace_state:` - an empty string writes nothing */
        if (!PyUnicode_Check(trace_state)) {
            PyErr_SetString(PyExc_TypeError, "trace_state: str or None");
            return NULL;
        }
        ts = PyUnicode_AsUTF8AndSize(trace_state, &tslen);
        if (ts == NULL)
            return NULL;
    }
    if (st && message != Py_None) {
        if (!PyUnicode_Check(message)) {
            PyErr_SetString(PyExc_TypeError, "message: str or None");
            return NULL;
        }
        msg = PyUnicode_AsUTF8AndSize(message, &mlen);
        if (msg == NULL)
            return NULL;
    }
    buf b;
    buf_init(&b);
    unsigned char head[2] = {0x0a, 0x10};
    int bad = buf_put(&b, head, 2) < 0 || buf_put(&b, PyBytes_AS_STRING(trace_id), PyBytes_GET_SIZE(trace_id)) < 0
              || buf_byte(&b, 0x12) < 0 || buf_byte(&b, 0x08) < 0 || buf_put(&b, sid, 8) < 0;
    if (!bad && tslen > 0)
        bad = buf_ld(&b, 0x1a, ts, tslen) < 0;
    if (!bad && parent != Py_None)
        bad = buf_byte(&b, 0x22) < 0 || buf_byte(&b, 0x08) < 0 || buf_put(&b, pid, 8) < 0;
    if (!bad)
        bad = buf_ld(&b, 0x2a, nm, nlen) < 0 || buf_byte(&b, 0x30) < 0 || buf_byte(&b, (unsigned char)k) < 0
              || buf_byte(&b, 0x39) < 0 || buf_fixed64(&b, s) < 0 || buf_byte(&b, 0x41) < 0
              || buf_fixed64(&b, e > s ? e : s) < 0
              || buf_put(&b, PyBytes_AS_STRING(attributes), PyBytes_GET_SIZE(attributes)) < 0;
    if (!bad && st) {
        /* Status: message (field 2) when there is one, code (field 3) */
        Py_ssize_t inner = (mlen > 0 ? 1 + varint_len((uint64_t)mlen) + mlen : 0) + 2;
        bad = buf_byte(&b, 0x7a) < 0 || buf_varint(&b, (uint64_t)inner) < 0;
        if (!bad && mlen > 0)
            bad = buf_ld(&b, 0x12, msg, mlen) < 0;
        if (!bad)
            bad = buf_byte(&b, 0x18) < 0 || buf_byte(&b, (unsigned char)st) < 0;
    }
    if (!bad) {
        unsigned char f[6] = {0x85, 0x01, (unsigned char)fl, (unsigned char)(fl >> 8), (unsigned char)(fl >> 16),
                              (unsigned char)(fl >> 24)};
        bad = buf_put(&b, f, 6) < 0;
    }
    if (bad) {
        buf_free(&b);
        return NULL;
    }
    Py_ssize_t total = 1 + varint_len((uint64_t)b.n) + b.n;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out != NULL) {
        buf o = {(unsigned char *)PyBytes_AS_STRING(out), 0, total, {0}};
        buf_ld(&o, 0x12, b.p, b.n);
    }
    buf_free(&b);
    return out;
}

static PyObject *
otlp_set_fallback(PyObject *self, PyObject *fn)
{
    Py_XSETREF(fallback_kv, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"kv", (PyCFunction)(void (*)(void))otlp_kv, METH_FASTCALL, "A span attribute (a KeyValue in Span field 9)."},
    {"span", (PyCFunction)(void (*)(void))otlp_span, METH_FASTCALL, "A Span in ScopeSpans field 2."},
    {"set_fallback", otlp_set_fallback, METH_O, "The Python kv for values this module does not encode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "router.metering._otlp", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__otlp(void)
{
    return PyModule_Create(&module);
}
