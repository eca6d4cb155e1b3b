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
 *   request(trace, info, decision, error, extra: bytes, shared: dict, shared_miss, attempts: dict,
 *           attempt_miss) -> bytes | None
 *        all of a finished request's spans, joined: the bytes of `_SpanWriter.spans_py`, reading the
 *        same fields and using (and filling, through the two Python `*_miss` functions) the same
 *        caches. None for anything it leaves to Python (an int past 64 bits, a latency that is not
 *        finite, an unexpected type or an error on the way): `_SpanWriter.encode` then runs `spans_py`.
 *   Sender                                  the export queue and its thread, off the GIL (_otlp_sender.c)
 *
 * A value `kv` does not handle itself (an int outside 64 bits, another type) goes to the Python
 * function set with `set_fallback`, so the two paths cannot differ there either.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

static PyObject *fallback_kv = NULL;   /* router.metering.tracing._kv_py */

int otlp_add_sender(PyObject *module);   /* _otlp_sender.c: the Sender type, where it builds */

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

/* One Span as ScopeSpans.spans (field 2), appended to `b`: the bytes of `_span_py`. Its name is
 * `name` + (`name2` when given: " " + name2); its attributes `a1` then `a2`; `end` already at least `start`. */
static int
put_span(buf *b, const unsigned char *tid, Py_ssize_t tidlen, const unsigned char sid[8], const unsigned char *pid,
         const char *ts, Py_ssize_t tslen, const char *nm, Py_ssize_t nlen, const char *nm2, Py_ssize_t nlen2,
         unsigned char kind, uint64_t start, uint64_t end, const char *a1, Py_ssize_t n1, const char *a2,
         Py_ssize_t n2, unsigned char status, const char *msg, Py_ssize_t mlen, uint32_t flags)
{
    Py_ssize_t name_len = nlen + (nm2 != NULL ? 1 + nlen2 : 0);
    Py_ssize_t st_inner = status ? (mlen > 0 ? 1 + varint_len((uint64_t)mlen) + mlen : 0) + 2 : 0;
    Py_ssize_t inner = 2 + tidlen + 10 + (tslen > 0 ? 1 + varint_len((uint64_t)tslen) + tslen : 0) + (pid != NULL ? 10 : 0)
                       + 1 + varint_len((uint64_t)name_len) + name_len + 2 + 9 + 9 + n1 + n2
                       + (status ? 1 + varint_len((uint64_t)st_inner) + st_inner : 0) + 6;
    if (buf_reserve(b, 1 + varint_len((uint64_t)inner) + inner) < 0)
        return -1;
    /* the room is there: none of these can fail */
    buf_byte(b, 0x12);
    buf_varint(b, (uint64_t)inner);
    Py_ssize_t at = b->n;
    unsigned char *p = b->p + b->n;
    p[0] = 0x0a;
    p[1] = 0x10;   /* as `_span_py`: 16, whatever the length given (always 16 bytes) */
    memcpy(p + 2, tid, tidlen);
    p += 2 + tidlen;
    p[0] = 0x12;
    p[1] = 0x08;
    memcpy(p + 2, sid, 8);
    b->n += 2 + tidlen + 10;
    if (tslen > 0)
        buf_ld(b, 0x1a, ts, tslen);
    if (pid != NULL) {
        unsigned char t[2] = {0x22, 0x08};
        buf_put(b, t, 2);
        buf_put(b, pid, 8);
    }
    buf_byte(b, 0x2a);
    buf_varint(b, (uint64_t)name_len);
    buf_put(b, nm, nlen);
    if (nm2 != NULL) {
        buf_byte(b, ' ');
        buf_put(b, nm2, nlen2);
    }
    unsigned char k[2] = {0x30, kind};
    buf_put(b, k, 2);
    buf_byte(b, 0x39);
    buf_fixed64(b, start);
    buf_byte(b, 0x41);
    buf_fixed64(b, end);
    buf_put(b, a1, n1);
    buf_put(b, a2, n2);
    if (status) {
        /* Status: message (field 2) when there is one, code (field 3) */
        buf_byte(b, 0x7a);
        buf_varint(b, (uint64_t)st_inner);
        if (mlen > 0)
            buf_ld(b, 0x12, msg, mlen);
        unsigned char c[2] = {0x18, status};
        buf_put(b, c, 2);
    }
    unsigned char f[6] = {0x85, 0x01, (unsigned char)flags, (unsigned char)(flags >> 8), (unsigned char)(flags >> 16),
                          (unsigned char)(flags >> 24)};
    buf_put(b, f, 6);
    if (b->n - at != inner) {   /* cannot happen: the length above is what was written */
        PyErr_SetString(PyExc_SystemError, "_otlp: span length mismatch");
        return -1;
    }
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
    if (put_span(&b, (const unsigned char *)PyBytes_AS_STRING(trace_id), PyBytes_GET_SIZE(trace_id), sid, parent != Py_None ? pid : NULL, ts,
                 tslen, nm, nlen, NULL, 0, (unsigned char)k, s, e > s ? e : s, PyBytes_AS_STRING(attributes),
                 PyBytes_GET_SIZE(attributes), NULL, 0, (unsigned char)st, msg, mlen, (uint32_t)fl) < 0) {
        buf_free(&b);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)b.p, b.n);
    buf_free(&b);
    return out;
}


/* ------------------------------------------------------------------ request: all of a request's spans */

/* The attribute names `request` reads, interned once. */
#define NAMES(X) X(trace_id) X(span_id) X(parent) X(operation) X(request_model) X(start_ns) X(latency_s) \
    X(attempts) X(status) X(api) X(request_params) X(task) X(task_source) X(route) X(rule) X(tenant)        \
    X(residency) X(provider) X(model) X(upstream_model) X(region) X(usage_estimated) X(response_cache)     \
    X(hedge) X(pick) X(prompt_tokens) X(completion_tokens) X(finish_reasons) X(response_id) X(request_id)  \
    X(cost_usd) X(confidence) X(cache_saved_usd) X(resumed) X(remote) X(tracestate) X(streamed) X(outcome) \
    X(name) X(alias)
#define DECLARE(n) static PyObject *s_##n;
NAMES(DECLARE)
static PyObject *s_ok, *s_cancelled, *s_unfinished, *round_fn, *four;

/* the new references one call holds, released together */
typedef struct {
    PyObject **v;
    Py_ssize_t n, cap;
    PyObject *small[128];
} hold;

static void hold_init(hold *h) { h->v = h->small; h->n = 0; h->cap = 128; }

static void
hold_free(hold *h)
{
    for (Py_ssize_t i = 0; i < h->n; i++)
        Py_DECREF(h->v[i]);
    if (h->v != h->small)
        PyMem_Free(h->v);
}

/* keeps `o` (a new reference, or NULL on an error: passed through) */
static PyObject *
keep(hold *h, PyObject *o)
{
    if (o == NULL)
        return NULL;
    if (h->n == h->cap) {
        Py_ssize_t cap = h->cap * 2;
        PyObject **v = h->v == h->small ? PyMem_Malloc(cap * sizeof(PyObject *))
                                        : PyMem_Realloc(h->v, cap * sizeof(PyObject *));
        if (v == NULL) {
            Py_DECREF(o);
            PyErr_NoMemory();
            return NULL;
        }
        if (h->v == h->small)
            memcpy(v, h->small, h->n * sizeof(PyObject *));
        h->v = v;
        h->cap = cap;
    }
    h->v[h->n++] = o;
    return o;
}

#define GET(var, obj, attr) \
    if ((var = keep(&h, PyObject_GetAttr((obj), s_##attr))) == NULL) goto bail;
#define TRUTH(var, obj) \
    if ((var = PyObject_IsTrue(obj)) < 0) goto bail;
#define EQ(var, a, b) \
    if ((var = PyObject_RichCompareBool((a), (b), Py_EQ)) < 0) goto bail;

/* an attribute (a KeyValue, Span field 9) as `_kv` writes it; 0: a value this module leaves to Python */
static int
put_kv(buf *b, const char *key, PyObject *value)
{
    buf v;
    buf_init(&v);
    int rc = any_value(&v, value, 0);
    if (rc == 1) {
        Py_ssize_t klen = (Py_ssize_t)strlen(key);
        Py_ssize_t payload = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)v.n) + v.n;
        if (buf_byte(b, 0x4a) < 0 || buf_varint(b, (uint64_t)payload) < 0 || buf_ld(b, 0x0a, key, klen) < 0
            || buf_ld(b, 0x12, v.p, v.n) < 0)
            rc = -1;
    }
    buf_free(&v);
    return rc;
}

/* a non-negative int below 2**63 */
static int
as_ns(PyObject *o, int64_t *out)
{
    if (!PyLong_Check(o))
        return -1;
    long long x = PyLong_AsLongLong(o);
    if ((x == -1 && PyErr_Occurred()) || x < 0)
        return -1;
    *out = x;
    return 0;
}

/* `start_ns + int(latency_s * 1e9)` */
static int
end_of(int64_t start, PyObject *latency, int64_t *out)
{
    double d = PyFloat_AsDouble(latency);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    d *= 1e9;
    if (!(d > -9.0e18 && d < 9.0e18))   /* NaN, infinities, out of int64: left to Python */
        return -1;
    if (__builtin_add_overflow(start, (int64_t)d, out))
        return -1;
    return 0;
}

static int
u64(PyObject *o, unsigned char out[8])
{
    if (!PyLong_Check(o))
        return -1;
    return be64(o, out);
}

/* `round(x, 4)` of a float, the same float: CPython rounds the exact binary value correctly (dtoa, then
 * strtod of the digits). When x * 10**4 is not within 1e-6 of a tie (its float error is below 1e-7
 * for |x| < 2**16), the nearest integer k is the correctly rounded one, and k / 10**4 (one IEEE
 * division, correctly rounded) is the float nearest k * 10**-4: strtod's answer. Ties, NaN, infinities
 * and large values go to the builtin. */
static PyObject *
round4(PyObject *f)
{
    double x = PyFloat_AS_DOUBLE(f);
    if (fabs(x) < 65536.0) {
        double d = x * 1e4, k = nearbyint(d);
        if (fabs(fabs(d - k) - 0.5) > 1e-6)
            return PyFloat_FromDouble(k / 1e4);
    }
    PyObject *rargs[2] = {f, four};
    return PyObject_Vectorcall(round_fn, rargs, 2, NULL);
}

static PyObject *
otlp_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "request() takes 9 arguments");
        return NULL;
    }
    PyObject *trace = args[0], *info = args[1], *decision = args[2], *error = args[3], *extra = args[4];
    PyObject *shared_cache = args[5], *shared_miss = args[6], *attempt_cache = args[7], *attempt_miss = args[8];
    if (!PyBytes_Check(extra) || !PyDict_Check(shared_cache) || !PyDict_Check(attempt_cache)) {
        PyErr_SetString(PyExc_TypeError, "request(trace, info, decision, error, extra: bytes, dict, f, dict, f)");
        return NULL;
    }
    hold h;
    hold_init(&h);
    buf out, attrs, ans, name;
    buf_init(&out);
    buf_init(&attrs);
    buf_init(&ans);
    buf_init(&name);
    /* a request's spans are 1-2 kB, its span's attributes about 700 bytes: one allocation each, not a
     * chain of reallocations */
    if (buf_reserve(&out, 4096) < 0 || buf_reserve(&attrs, 2048) < 0) {
        buf_free(&out);
        buf_free(&attrs);
        return NULL;
    }
    unsigned char *used = NULL;
    PyObject **matched = NULL, **ended_provider = NULL, **ended_model = NULL;
    PyObject *result = NULL;
    PyObject *o, *trace_id, *parent, *op, *body_model, *status_o, *ended, *reason = Py_None, *key;
    unsigned char tid[16], sid[8], pid[8];
    int t, ok_status;
    int64_t start, end;

    /* the trace id, 128 bits big-endian (`trace_id.to_bytes(16, "big")`) */
    GET(trace_id, trace, trace_id)
    if (!PyLong_Check(trace_id))
        goto bail;
    {
        uint64_t lo = PyLong_AsUnsignedLongLongMask(trace_id);
        if (lo == (uint64_t)-1 && PyErr_Occurred())
            goto bail;
        PyObject *sixty_four = keep(&h, PyLong_FromLong(64));
        PyObject *high = sixty_four == NULL ? NULL : keep(&h, PyNumber_Rshift(trace_id, sixty_four));
        if (high == NULL)
            goto bail;
        uint64_t hi = PyLong_AsUnsignedLongLong(high);   /* negative or 2**128 and above: left to Python */
        if (hi == (uint64_t)-1 && PyErr_Occurred())
            goto bail;
        for (int i = 0; i < 8; i++) {
            tid[i] = (unsigned char)(hi >> (8 * (7 - i)));
            tid[8 + i] = (unsigned char)(lo >> (8 * (7 - i)));
        }
    }
    GET(o, trace, span_id)
    if (u64(o, sid) < 0)
        goto bail;
    GET(parent, trace, parent)
    if (parent != Py_None) {
        GET(o, parent, span_id)
        if (u64(o, pid) < 0)
            goto bail;
    }
    GET(op, trace, operation)
    GET(body_model, trace, request_model)
    GET(o, trace, start_ns)
    if (as_ns(o, &start) < 0)
        goto bail;
    GET(o, info, latency_s)
    if (end_of(start, o, &end) < 0)
        goto bail;
    GET(status_o, info, status)
    EQ(ok_status, status_o, s_ok)
    GET(ended, info, attempts)
    if (!PyList_Check(ended))
        goto bail;
    Py_ssize_t n_ended = PyList_GET_SIZE(ended);
    if (n_ended > 1 && ok_status) {   /* `_fallback_reason`: the last failure before another model answered */
        PyObject *first_model, *last_model;
        GET(first_model, PyList_GET_ITEM(ended, 0), model)
        GET(last_model, PyList_GET_ITEM(ended, n_ended - 1), model)
        EQ(t, last_model, first_model)
        if (!t) {
            for (Py_ssize_t i = n_ended - 2; i >= 0; i--) {
                GET(o, PyList_GET_ITEM(ended, i), outcome)
                EQ(t, o, s_ok)
                if (!t) {
                    reason = o;
                    break;
                }
            }
        }
    }
    /* what many requests share: the key `_SpanWriter.spans_py` builds, its bytes cached */
    if ((key = keep(&h, PyTuple_New(22))) == NULL)
        goto bail;
    PyObject *f_task, *f_provider, *f_model, *f_upstream;
    {
        PyObject *v[22];
        v[0] = op;
        GET(v[1], info, api)
        v[2] = status_o;
        v[3] = body_model;
        GET(v[4], trace, request_params)
        GET(v[5], info, task)
        GET(v[6], info, task_source)
        GET(v[7], info, route)
        GET(v[8], info, rule)
        GET(v[9], info, tenant)
        if (decision != Py_None) {
            GET(v[10], decision, residency)
        } else {
            if ((v[10] = keep(&h, PyTuple_New(0))) == NULL)
                goto bail;
        }
        GET(v[11], info, provider)
        GET(v[12], info, model)
        GET(v[13], info, upstream_model)
        GET(v[14], info, region)
        GET(v[15], info, usage_estimated)
        GET(v[16], info, response_cache)
        GET(v[17], info, hedge)
        GET(v[18], info, pick)
        v[19] = reason;
        v[20] = error;
        if ((v[21] = keep(&h, PyLong_FromSsize_t(n_ended))) == NULL)
            goto bail;
        for (int i = 0; i < 22; i++)
            PyTuple_SET_ITEM(key, i, Py_NewRef(v[i]));
        f_task = v[5];
        f_provider = v[11];
        f_model = v[12];
        f_upstream = v[13];
    }
    PyObject *shared = PyDict_GetItemWithError(shared_cache, key);
    if (shared == NULL) {
        if (PyErr_Occurred())
            goto bail;
        shared = keep(&h, PyObject_CallOneArg(shared_miss, key));
        if (shared == NULL)
            goto bail;
    }
    if (!PyBytes_Check(shared))
        goto bail;
    /* usage and the answer's finish reasons and id: on the request's span and on the answering attempt's */
    int usage = ok_status;
    PyObject *prompt, *completion;
    GET(prompt, info, prompt_tokens)
    GET(completion, info, completion_tokens)
    if (!usage) {
        TRUTH(usage, prompt)
        if (!usage)
            TRUTH(usage, completion)
    }
    if (usage && (put_kv(&ans, "gen_ai.usage.input_tokens", prompt) != 1
                  || put_kv(&ans, "gen_ai.usage.output_tokens", completion) != 1))
        goto bail;
    GET(o, trace, finish_reasons)
    if (!PyList_Check(o) && !PyTuple_Check(o))
        goto bail;
    if (PySequence_Fast_GET_SIZE(o) > 0 && put_kv(&ans, "gen_ai.response.finish_reasons", o) != 1)
        goto bail;
    GET(o, trace, response_id)
    TRUTH(t, o)
    if (t && put_kv(&ans, "gen_ai.response.id", o) != 1)
        goto bail;
    /* the request span's attributes */
    if (buf_put(&attrs, PyBytes_AS_STRING(shared), PyBytes_GET_SIZE(shared)) < 0)
        goto bail;
    GET(o, info, request_id)
    if (put_kv(&attrs, "router.request_id", o) != 1 || buf_put(&attrs, ans.p, ans.n) < 0)
        goto bail;
    GET(o, info, cost_usd)
    if ((o = keep(&h, PyNumber_Float(o))) == NULL || put_kv(&attrs, "router.cost_usd", o) != 1)
        goto bail;
    TRUTH(t, f_task)
    if (t) {
        GET(o, info, confidence)
        if ((o = keep(&h, PyNumber_Float(o))) == NULL)
            goto bail;
        if ((o = keep(&h, round4(o))) == NULL || put_kv(&attrs, "router.confidence", o) != 1)
            goto bail;
    }
    GET(o, info, cache_saved_usd)
    TRUTH(t, o)
    if (t && ((o = keep(&h, PyNumber_Float(o))) == NULL || put_kv(&attrs, "router.cache_saved_usd", o) != 1))
        goto bail;
    GET(o, info, resumed)
    TRUTH(t, o)
    if (t && put_kv(&attrs, "router.resumed", o) != 1)
        goto bail;
    if (buf_put(&attrs, PyBytes_AS_STRING(extra), PyBytes_GET_SIZE(extra)) < 0)
        goto bail;
    /* the request's span */
    Py_ssize_t oplen, bmlen = 0, tslen = 0, mlen = 0;
    const char *opc, *bm = NULL, *ts = NULL, *msg = NULL;
    if (!PyUnicode_Check(op) || (opc = PyUnicode_AsUTF8AndSize(op, &oplen)) == NULL)
        goto bail;
    TRUTH(t, body_model)
    if (t && (!PyUnicode_Check(body_model) || (bm = PyUnicode_AsUTF8AndSize(body_model, &bmlen)) == NULL))
        goto bail;
    PyObject *tracestate;
    GET(tracestate, trace, tracestate)
    if (tracestate != Py_None) {
        if (!PyUnicode_Check(tracestate) || (ts = PyUnicode_AsUTF8AndSize(tracestate, &tslen)) == NULL)
            goto bail;
    }
    if (error != Py_None) {
        if (!PyUnicode_Check(error) || (msg = PyUnicode_AsUTF8AndSize(error, &mlen)) == NULL)
            goto bail;
    }
    int remote;
    GET(o, trace, remote)
    TRUTH(remote, o)
    if (put_span(&out, tid, 16, sid, parent != Py_None ? pid : NULL, ts, tslen, opc, oplen, bm, bmlen,
                 remote ? 2 : 1, (uint64_t)start, (uint64_t)(end > start ? end : start), (const char *)attrs.p,
                 attrs.n, NULL, 0, error != Py_None ? 2 : 0, msg, mlen,
                 0x101 | (remote && parent != Py_None ? 0x200 : 0)) < 0)
        goto bail;

    /* one CLIENT span per attempt sent, matched in order (per deployment) to how it ended */
    PyObject *sent;
    GET(sent, trace, attempts)
    if (!PyList_Check(sent))
        goto bail;
    Py_ssize_t n_sent = PyList_GET_SIZE(sent);
    if (n_sent > 0) {
        used = PyMem_Calloc(n_ended + 1, 1);
        matched = PyMem_Calloc(n_sent, sizeof(PyObject *));
        ended_provider = PyMem_Calloc(n_ended + 1, sizeof(PyObject *));
        ended_model = PyMem_Calloc(n_ended + 1, sizeof(PyObject *));
        if (used == NULL || matched == NULL || ended_provider == NULL || ended_model == NULL) {
            PyErr_NoMemory();
            goto bail;
        }
        for (Py_ssize_t j = 0; j < n_ended; j++) {
            PyObject *a = keep(&h, Py_NewRef(PyList_GET_ITEM(ended, j)));
            GET(ended_provider[j], a, provider)
            GET(ended_model[j], a, model)
        }
        PyObject *first_alias = NULL, *previous = NULL, *cancelled_or_not, *number, *answered, *why, *code;
        int streamed, cancelled;
        GET(o, trace, streamed)
        TRUTH(streamed, o)
        EQ(cancelled, status_o, s_cancelled)
        cancelled_or_not = cancelled ? s_cancelled : s_unfinished;
        /* hold the attempts: the calls below run Python code */
        PyObject *sent_items = keep(&h, PySequence_List(sent));
        PyObject *ended_items = keep(&h, PySequence_List(ended));
        if (sent_items == NULL || ended_items == NULL)
            goto bail;
        n_sent = PyList_GET_SIZE(sent_items);
        for (Py_ssize_t i = 0; i < n_sent; i++) {
            PyObject *at = PyList_GET_ITEM(sent_items, i), *provider, *model, *pname, *alias;
            if (!PyTuple_Check(at) || PyTuple_GET_SIZE(at) != 4)
                goto bail;
            provider = PyTuple_GET_ITEM(at, 2);
            model = PyTuple_GET_ITEM(at, 3);
            GET(pname, provider, name)
            GET(alias, model, alias)
            if (i == 0)
                first_alias = alias;
            for (Py_ssize_t j = 0; j < n_ended; j++) {
                if (used[j])
                    continue;
                EQ(t, ended_provider[j], pname)
                if (t)
                    EQ(t, ended_model[j], alias)
                if (t) {
                    used[j] = 1;
                    matched[i] = PyList_GET_ITEM(ended_items, j);
                    break;
                }
            }
            PyObject *a = matched[i], *outcome;
            if (a != NULL) {
                GET(outcome, a, outcome)
            } else {
                outcome = cancelled_or_not;
            }
            int ok;
            EQ(ok, outcome, s_ok)
            answered = Py_None;
            if (ok && a != NULL) {
                EQ(t, f_provider, pname)
                if (t)
                    EQ(t, f_model, alias)
                if (t) {
                    TRUTH(t, f_upstream)
                    if (t) {
                        answered = f_upstream;
                    } else {
                        GET(answered, model, model)
                    }
                }
            }
            why = Py_None;
            if (previous != NULL) {
                if ((t = PyObject_RichCompareBool(alias, first_alias, Py_NE)) < 0)
                    goto bail;
                if (t)
                    why = previous;
            }
            if (a != NULL) {
                GET(code, a, status)
            } else {
                code = Py_None;
            }
            if ((number = keep(&h, PyLong_FromSsize_t(i + 1))) == NULL)
                goto bail;
            /* the attempt's attributes but the answer's, and its name: `_attempt_attributes`, cached */
            PyObject *akey = keep(&h, PyTuple_New(8)), *ids[2];
            if (akey == NULL || (ids[0] = keep(&h, PyLong_FromVoidPtr(provider))) == NULL
                || (ids[1] = keep(&h, PyLong_FromVoidPtr(model))) == NULL)
                goto bail;
            PyObject *kv8[8] = {ids[0], ids[1], op, number, outcome, why, code, answered};
            for (int k = 0; k < 8; k++)
                PyTuple_SET_ITEM(akey, k, Py_NewRef(kv8[k]));
            PyObject *hit = PyDict_GetItemWithError(attempt_cache, akey), *a_attrs, *a_name;
            if (hit == NULL && PyErr_Occurred())
                goto bail;
            if (hit != NULL && PyTuple_Check(hit) && PyTuple_GET_SIZE(hit) == 4 && PyTuple_GET_ITEM(hit, 0) == provider
                && PyTuple_GET_ITEM(hit, 1) == model) {
                a_attrs = PyTuple_GET_ITEM(hit, 2);
                a_name = PyTuple_GET_ITEM(hit, 3);
                keep(&h, Py_NewRef(hit));
            } else {
                PyObject *margs[8] = {provider, model, op, number, outcome, why, code, answered};
                PyObject *r = keep(&h, PyObject_Vectorcall(attempt_miss, margs, 8, NULL));
                if (r == NULL || !PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2)
                    goto bail;
                a_attrs = PyTuple_GET_ITEM(r, 0);
                a_name = PyTuple_GET_ITEM(r, 1);
            }
            if (!PyBytes_Check(a_attrs) || !PyUnicode_Check(a_name))
                goto bail;
            unsigned char status = 0;
            if (answered == Py_None && !ok) {
                status = 2;
                previous = outcome;
            }
            int64_t a_start, a_end;
            unsigned char asid[8];
            if (u64(PyTuple_GET_ITEM(at, 0), asid) < 0 || as_ns(PyTuple_GET_ITEM(at, 1), &a_start) < 0)
                goto bail;
            if ((ok && streamed) || a == NULL) {
                a_end = end;
            } else {
                GET(o, a, latency_s)
                if (end_of(a_start, o, &a_end) < 0)
                    goto bail;
            }
            Py_ssize_t anlen, amlen = 0;
            const char *an = PyUnicode_AsUTF8AndSize(a_name, &anlen), *am = NULL;
            if (an == NULL)
                goto bail;
            if (status) {
                if (!PyUnicode_Check(outcome) || (am = PyUnicode_AsUTF8AndSize(outcome, &amlen)) == NULL)
                    goto bail;
            }
            if (put_span(&out, tid, 16, asid, sid, ts, tslen, an, anlen, NULL, 0, 3, (uint64_t)a_start,
                         (uint64_t)(a_end > a_start ? a_end : a_start), PyBytes_AS_STRING(a_attrs),
                         PyBytes_GET_SIZE(a_attrs), answered != Py_None ? (const char *)ans.p : NULL,
                         answered != Py_None ? ans.n : 0, status, am, amlen, 0x101) < 0)
                goto bail;
        }
    }
    result = PyBytes_FromStringAndSize((const char *)out.p, out.n);
    goto done;
bail:
    /* anything unexpected (a type, a range, an error): None, and the Python path encodes this request */
    PyErr_Clear();
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(used);
    PyMem_Free(matched);
    PyMem_Free(ended_provider);
    PyMem_Free(ended_model);
    buf_free(&out);
    buf_free(&attrs);
    buf_free(&ans);
    buf_free(&name);
    hold_free(&h);
    return result;
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
    {"request", (PyCFunction)(void (*)(void))otlp_request, METH_FASTCALL,
     "All of a finished request's spans (`_SpanWriter.spans_py`'s bytes, joined), or None: the Python path."},
    {"set_fallback", otlp_set_fallback, METH_O, "The Python kv for values this module does not encode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "router.metering._otlp", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__otlp(void)
{
#define INTERN(n) if ((s_##n = PyUnicode_InternFromString(#n)) == NULL) return NULL;
    NAMES(INTERN)
    if ((s_ok = PyUnicode_InternFromString("ok")) == NULL
        || (s_cancelled = PyUnicode_InternFromString("cancelled")) == NULL
        || (s_unfinished = PyUnicode_InternFromString("unfinished")) == NULL || (four = PyLong_FromLong(4)) == NULL)
        return NULL;
    PyObject *builtins = PyEval_GetBuiltins();   /* borrowed */
    if (builtins == NULL || (round_fn = PyDict_GetItemString(builtins, "round")) == NULL) {
        PyErr_SetString(PyExc_ImportError, "_otlp: no builtin round");
        return NULL;
    }
    Py_INCREF(round_fn);
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && otlp_add_sender(m) < 0)   /* _otlp_sender.c: the export queue and thread */
        Py_CLEAR(m);
    return m;
}
