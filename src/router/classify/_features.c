/* router.classify._features: the task classifier's feature scoring in C.
 *
 * An optional accelerator for router/classify/classifier.py. It computes exactly what the pure-Python
 * path computes (`features.text_keys` + the look-ups in `Classifier._sums`): the fixed-point weight
 * sums and feature counts of the last user turn and of the context, and the last user turn's shape
 * markers (`features.shape_features`, gathered in the same pass over its bytes) and their sums, so
 * the probabilities are the same floats either way. tests/test_classifier.py checks the two paths agree on every data text
 * and on random text in many scripts. When this module does not build (no compiler), the package
 * works unchanged, on the Python path.
 *
 * Features are identified by a 64-bit hash of a tagged byte string instead of a Python object:
 *   1 + bytes          a word or a run of ASCII symbols          (Python: bytes)
 *   2 + UTF-8 text     one symbol, CJK character or pair, marker  (Python: str)
 *   3 + a + " " + b    a pair of adjacent words                   (Python: tuple of two bytes)
 * and stems by the hash of their bytes, in a table of their own. The Python side builds both
 * tables from the model (see `canonical_name` in features.py); two distinct features sharing a
 * slot fingerprint are refused when the tables are built.
 *
 * Everything runs with the GIL held and allocates nothing on the Python heap but the result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

#define TAG_BYTES 1
#define TAG_STR 2
#define TAG_PAIR 3

#define PAIR_WORDS 80 /* word pairs come from the first 80 words (features.PAIR_WORDS) */
#define LATIN_CHARS 160 /* language evidence from the first 160 characters (language._LATIN_CHARS) */
#define MAX_WIDTH 31  /* weights per feature: classes - 1 (classifier.MAX_TASKS - 1) */
#define SHAPE_GROUPS 4 /* shape thresholds: length, numbers, numbers per word, lines (features.SHAPE_STEPS) */
#define SHAPE_FLAGS 3  /* then the markers endq, q, para */
#define MAX_STEPS 8    /* thresholds per group */
#define MAX_MARKERS (SHAPE_GROUPS * MAX_STEPS + SHAPE_FLAGS)

static inline uint64_t
fnv(uint64_t h, const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

static inline uint64_t
fnv_byte(uint64_t h, unsigned char c)
{
    return (h ^ c) * FNV_PRIME;
}

/* 0 marks an empty slot, so no key hashes to it. */
static inline uint64_t
finish(uint64_t h)
{
    return h ? h : 1;
}

/* Slot index: the high bits of a multiplicative mix (FNV's low bits alone cluster). */
static inline uint64_t
spread(uint64_t h)
{
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

/* ---------------------------------------------------------------------------------------------
 * Weight tables: open addressing, linear probing. A slot is a 32-bit fingerprint and the
 * feature's `width` 16-bit weights, padded to 4 bytes: 8 bytes for three classes.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *slots;
    uint64_t mask;
    Py_ssize_t stride; /* bytes per slot */
} table_t;

/* Slot index from the low bits of the mixed hash, fingerprint from the high 32: small slots keep
 * the model in a core's cache. A feature the model does not have matches a stored fingerprint on
 * its probe run with odds of about 1 in 500 million. */
static inline uint32_t
fingerprint(uint64_t mixed)
{
    uint32_t fp = (uint32_t)(mixed >> 32);
    return fp ? fp : 1;
}

static inline uint32_t
slot_fp(const unsigned char *slot)
{
    uint32_t fp;
    memcpy(&fp, slot, sizeof(fp));
    return fp;
}

/* The weights of `key`, or NULL when the table does not have it. */
static const int16_t *
table_find(const table_t *t, uint64_t key)
{
    uint64_t mixed = spread(key);
    uint32_t fp = fingerprint(mixed);
    uint64_t i = mixed & t->mask;
    for (;;) {
        const unsigned char *s = t->slots + i * t->stride;
        uint32_t found = slot_fp(s);
        if (found == fp)
            return (const int16_t *)(s + 4);
        if (found == 0)
            return NULL;
        i = (i + 1) & t->mask;
    }
}

/* Fill `t` from a sequence of (key bytes, w1, ..., w_width); 0 on success, -1 with an exception set. */
static int
table_build(table_t *t, PyObject *items, int width)
{
    PyObject *seq = PySequence_Fast(items, "weights must be a sequence of (bytes, int, ...)");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t cap = 16;
    while (cap * 4 < (uint64_t)n * 5) /* at most 80% full */
        cap <<= 1;
    t->stride = (4 + 2 * width + 3) / 4 * 4;
    t->slots = PyMem_Calloc(cap, t->stride);
    if (t->slots == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    t->mask = cap - 1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 1 + width || !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
            PyErr_Format(PyExc_TypeError, "each weight is a tuple (bytes, %d ints)", width);
            goto fail;
        }
        int16_t w[MAX_WIDTH];
        for (int j = 0; j < width; j++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(item, 1 + j));
            if (v == -1 && PyErr_Occurred())
                goto fail;
            if (v < INT16_MIN || v > INT16_MAX) {
                PyErr_SetString(PyExc_OverflowError, "weight out of the 16-bit fixed-point range");
                goto fail;
            }
            w[j] = (int16_t)v;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        uint64_t mixed = spread(finish(fnv(FNV_OFFSET, (const unsigned char *)PyBytes_AS_STRING(key),
                                           PyBytes_GET_SIZE(key))));
        uint32_t fp = fingerprint(mixed);
        uint64_t i = mixed & t->mask;
        while (slot_fp(t->slots + i * t->stride) != 0) {
            if (slot_fp(t->slots + i * t->stride) == fp) {
                PyErr_SetString(PyExc_ValueError, "two features share a slot fingerprint");
                goto fail;
            }
            i = (i + 1) & t->mask;
        }
        unsigned char *s = t->slots + i * t->stride;
        memcpy(s, &fp, sizeof(fp));
        memcpy(s + 4, w, sizeof(int16_t) * width);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    PyMem_Free(t->slots);
    t->slots = NULL;
    return -1;
}

/* The shape markers of the last user turn (features.shape_features): each group's thresholds,
 * ascending (a marker is set when the value reaches its threshold, as bisect_right counts them),
 * and each marker's `width` fixed-point weights, already scaled by SHAPE_VALUE. Markers are
 * numbered as features.SHAPE_NAMES: the groups' in order, then endq, q, para. */
typedef struct {
    int nsteps[SHAPE_GROUPS];
    double steps[SHAPE_GROUPS][MAX_STEPS]; /* integers but for numbers per word: exact as doubles */
    int nmarkers;
    int64_t weights[MAX_MARKERS][MAX_WIDTH];
} shape_spec_t;

typedef struct {
    PyObject_HEAD
    table_t weights;
    table_t stems;
    int width;
    Py_ssize_t cjk_head; /* features.CJK_HEAD */
    shape_spec_t *shape; /* NULL: the model has no shape weights */
} TableObject;

/* Read `spec` = (lengths, numbers, per_word, lines, weights) into a new shape_spec_t; NULL with an
 * exception set. */
static shape_spec_t *
shape_build(PyObject *spec, int width)
{
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != SHAPE_GROUPS + 1) {
        PyErr_SetString(PyExc_TypeError, "shape is (lengths, numbers, per_word, lines, weights) or None");
        return NULL;
    }
    shape_spec_t *sh = PyMem_Calloc(1, sizeof(shape_spec_t));
    if (sh == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    PyObject *seq = NULL;
    for (int g = 0; g < SHAPE_GROUPS; g++) {
        seq = PySequence_Fast(PyTuple_GET_ITEM(spec, g), "shape thresholds must be a sequence of numbers");
        if (seq == NULL)
            goto fail;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n > MAX_STEPS) {
            PyErr_Format(PyExc_ValueError, "at most %d shape thresholds a group", MAX_STEPS);
            goto fail;
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *v = PySequence_Fast_GET_ITEM(seq, k);
            double d;
            if (g == 2) {
                d = PyFloat_AsDouble(v);
            }
            else {
                long long i = PyLong_AsLongLong(v);
                if (i == -1 && PyErr_Occurred())
                    goto fail;
                if (i < 1 || i > (1LL << 52)) {
                    PyErr_SetString(PyExc_ValueError, "shape thresholds for counts are 1 to 2**52");
                    goto fail;
                }
                d = (double)i;
            }
            if (d == -1.0 && PyErr_Occurred())
                goto fail;
            if (!(d > 0) || (k > 0 && d < sh->steps[g][k - 1])) {
                PyErr_SetString(PyExc_ValueError, "shape thresholds must be positive and ascending");
                goto fail;
            }
            sh->steps[g][k] = d;
        }
        sh->nsteps[g] = (int)n;
        sh->nmarkers += (int)n;
        Py_CLEAR(seq);
    }
    sh->nmarkers += SHAPE_FLAGS;
    seq = PySequence_Fast(PyTuple_GET_ITEM(spec, SHAPE_GROUPS), "shape weights must be a sequence of tuples");
    if (seq == NULL)
        goto fail;
    if (PySequence_Fast_GET_SIZE(seq) != sh->nmarkers) {
        PyErr_Format(PyExc_ValueError, "%d shape markers need %d weight tuples", sh->nmarkers, sh->nmarkers);
        goto fail;
    }
    for (int m = 0; m < sh->nmarkers; m++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, m);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != width) {
            PyErr_Format(PyExc_TypeError, "each shape marker's weights are a tuple of %d ints", width);
            goto fail;
        }
        for (int j = 0; j < width; j++) {
            long long v = PyLong_AsLongLong(PyTuple_GET_ITEM(item, j));
            if (v == -1 && PyErr_Occurred())
                goto fail;
            if (v < -(1LL << 40) || v > (1LL << 40)) { /* the Python path's packed fields hold 2**39 */
                PyErr_SetString(PyExc_OverflowError, "shape weight out of range");
                goto fail;
            }
            sh->weights[m][j] = v;
        }
    }
    Py_DECREF(seq);
    return sh;
fail:
    Py_XDECREF(seq);
    PyMem_Free(sh);
    return NULL;
}

static void
Table_dealloc(TableObject *self)
{
    PyMem_Free(self->weights.slots);
    PyMem_Free(self->stems.slots);
    PyMem_Free(self->shape);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Table_init(TableObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *weights, *stems, *shape = Py_None;
    int width;
    Py_ssize_t cjk_head;
    static char *kwlist[] = {"width", "weights", "stems", "cjk_head", "shape", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOn|O:Table", kwlist, &width, &weights, &stems, &cjk_head,
                                     &shape))
        return -1;
    if (cjk_head < 0) {
        PyErr_SetString(PyExc_ValueError, "cjk_head must be >= 0");
        return -1;
    }
    if (self->weights.slots != NULL || self->stems.slots != NULL) {
        PyErr_SetString(PyExc_TypeError, "Table is already built");
        return -1;
    }
    if (width < 1 || width > MAX_WIDTH) {
        PyErr_Format(PyExc_ValueError, "width must be 1 to %d (classes - 1)", MAX_WIDTH);
        return -1;
    }
    self->width = width;
    self->cjk_head = cjk_head;
    if (table_build(&self->weights, weights, width) < 0)
        return -1;
    if (table_build(&self->stems, stems, width) < 0)
        return -1;
    if (shape != Py_None && (self->shape = shape_build(shape, width)) == NULL)
        return -1;
    return 0;
}

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router.classify._features.Table",
    .tp_doc = PyDoc_STR("Table(width, weights, stems, cjk_head, shape=None): the model's fixed-point weights by\n"
                        "feature hash, how many CJK characters the features read, and the shape markers'\n"
                        "thresholds and weights: (lengths, numbers, per_word, lines, weights), weights one\n"
                        "tuple of `width` ints per marker in the order of features.SHAPE_NAMES."),
    .tp_basicsize = sizeof(TableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
};

/* ---------------------------------------------------------------------------------------------
 * One text: a set of the feature hashes seen so far, and the running sums.
 * ------------------------------------------------------------------------------------------- */

#define SEEN_STACK 1024

/* What the shape markers are made of, gathered in the tokenizer's pass over a text's bytes. The
 * lower-cased text has the same word and digit runs, lines, white space and question marks as
 * the text (tests/test_classifier_shape.py checks every code point); only its length may differ
 * (İ), so the caller gives the length. */
typedef struct {
    Py_ssize_t words;   /* runs of word bytes (as in words) */
    Py_ssize_t numbers; /* runs of ASCII digits */
    Py_ssize_t lines;   /* lines (split at \n) holding a character that is not white space */
    int q;              /* a ? or a full-width ？ */
    int endq;           /* the last character that is not white space is one */
    int para;           /* \n\n with a non-space character before it and after it (in text.strip()) */
    int in_line;        /* the current line has a non-space character */
    int pending;        /* \n\n seen after a non-space character: the next one makes `para` */
} shape_t;

typedef struct {
    const table_t *weights, *stems;
    int width;
    Py_ssize_t cjk_head;
    uint64_t *seen;
    uint64_t seen_mask;
    Py_ssize_t seen_count;
    uint64_t stack[SEEN_STACK];
    int64_t sum[MAX_WIDTH]; /* sums of the text being read */
    Py_ssize_t n;           /* its distinct features */
    int failed;             /* out of memory */
    shape_t shape;          /* of the text being read */
} state_t;

static void
state_reset(state_t *st)
{
    if (st->seen != st->stack)
        PyMem_Free(st->seen);
    memset(st->stack, 0, sizeof(st->stack));
    st->seen = st->stack;
    st->seen_mask = SEEN_STACK - 1;
    st->seen_count = 0;
    memset(st->sum, 0, sizeof(st->sum));
    st->n = 0;
    memset(&st->shape, 0, sizeof(st->shape));
}

/* A fresh scan state over `table`'s weights (the seen-set on the stack). */
static void
state_init(state_t *st, TableObject *table)
{
    st->weights = &table->weights;
    st->stems = &table->stems;
    st->width = table->width;
    st->cjk_head = table->cjk_head;
    st->seen = st->stack;
    st->failed = 0;
    state_reset(st);
}

static int
seen_grow(state_t *st)
{
    uint64_t cap = (st->seen_mask + 1) * 2;
    uint64_t *slots = PyMem_Calloc(cap, sizeof(uint64_t));
    if (slots == NULL) {
        st->failed = 1;
        return -1;
    }
    for (uint64_t i = 0; i <= st->seen_mask; i++) {
        uint64_t h = st->seen[i];
        if (h) {
            uint64_t j = spread(h) & (cap - 1);
            while (slots[j])
                j = (j + 1) & (cap - 1);
            slots[j] = h;
        }
    }
    if (st->seen != st->stack)
        PyMem_Free(st->seen);
    st->seen = slots;
    st->seen_mask = cap - 1;
    return 0;
}

/* True when `h` was not seen before (and records it). */
static inline int
seen_add(state_t *st, uint64_t h)
{
    uint64_t i = spread(h) & st->seen_mask;
    for (;;) {
        uint64_t k = st->seen[i];
        if (k == h)
            return 0;
        if (k == 0)
            break;
        i = (i + 1) & st->seen_mask;
    }
    st->seen[i] = h;
    if (++st->seen_count * 2 > (Py_ssize_t)st->seen_mask && seen_grow(st) < 0)
        return 0;
    return 1;
}

static inline void
add_weights(state_t *st, const int16_t *w)
{
    for (int j = 0; j < st->width; j++)
        st->sum[j] += w[j];
}

/* Count one feature (once per text) and add its weights. `word`/`len` are given for bytes
 * tokens: a long token the model does not know adds the weights of its stem instead. */
static inline void
feature(state_t *st, uint64_t h, const unsigned char *word, Py_ssize_t len)
{
    h = finish(h);
    if (!seen_add(st, h))
        return;
    st->n++;
    const int16_t *w = table_find(st->weights, h);
    if (w != NULL) {
        add_weights(st, w);
    }
    else if (word != NULL && len > 6) {
        Py_ssize_t stem = word[0] < 128 ? 5 : (len < 10 ? len : 10);
        w = table_find(st->stems, finish(fnv(FNV_OFFSET, word, stem)));
        if (w != NULL)
            add_weights(st, w);
    }
}

static inline void
str_feature(state_t *st, const char *text)
{
    uint64_t h = fnv_byte(FNV_OFFSET, TAG_STR);
    feature(st, fnv(h, (const unsigned char *)text, (Py_ssize_t)strlen(text)), NULL, 0);
}

static inline int
is_ascii_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* str.isspace() for ASCII: the six C whitespace bytes and the separators 0x1c-0x1f. */
static inline int
is_py_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static inline int
is_cjk(Py_UCS4 c)
{
    return (c >= 0x0e00 && c <= 0x0e7f) /* Thai: no spaces between words either */
           || (c >= 0x3040 && c <= 0x30ff) || (c >= 0x3400 && c <= 0x9fff) || (c >= 0xac00 && c <= 0xd7af)
           || (c >= 0xf900 && c <= 0xfaff);
}

/* UTF-8 bytes of one code point, surrogates included (as Python's "surrogatepass"). */
static inline int
utf8(Py_UCS4 c, unsigned char *out)
{
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xc0 | (c >> 6));
        out[1] = (unsigned char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xe0 | (c >> 12));
        out[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (c & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | (c >> 18));
    out[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (c & 0x3f));
    return 4;
}

/* The code point whose UTF-8 (surrogatepass, as Python encodes) starts at p[0], `n` bytes
 * available; its length in *len. */
static inline Py_UCS4
decode_utf8(const unsigned char *p, Py_ssize_t n, int *len)
{
    unsigned char c = p[0];
    int need = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (need > n || (c >= 0x80 && c < 0xc0)) { /* not from Python's encoder: no white space */
        *len = 1;
        return 0xfffd;
    }
    *len = need;
    switch (need) {
    case 1:
        return c;
    case 2:
        return ((Py_UCS4)(c & 0x1f) << 6) | (p[1] & 0x3f);
    case 3:
        return ((Py_UCS4)(c & 0x0f) << 12) | ((Py_UCS4)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
    default:
        return ((Py_UCS4)(c & 0x07) << 18) | ((Py_UCS4)(p[1] & 0x3f) << 12) | ((Py_UCS4)(p[2] & 0x3f) << 6)
               | (p[3] & 0x3f);
    }
}

/* Whether UTF-8 text (whole characters) holds a character that is not white space (str.isspace). */
static int
has_non_space(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < n;) {
        int len;
        if (!Py_UNICODE_ISSPACE(decode_utf8(p + k, n - k, &len)))
            return 1;
        k += len;
    }
    return 0;
}

/* A character that is not white space: the line has one (and a blank line before it, after an
 * earlier one, makes `para`). */
static inline void
shape_non_space(shape_t *sh)
{
    if (!sh->in_line) {
        sh->in_line = 1;
        sh->lines++;
        sh->para |= sh->pending;
    }
}

/* Whether the last character of UTF-8 text that is not white space is ? or ？ (features:
 * text.strip()[-1:]). Reads backwards over the trailing white space only. */
static int
ends_with_question(const unsigned char *raw, Py_ssize_t size)
{
    Py_ssize_t j = size;
    while (j > 0) {
        unsigned char c = raw[j - 1];
        if (c < 128) {
            if (!is_py_space(c))
                return c == '?';
            j--;
            continue;
        }
        Py_ssize_t k = j - 1;
        while (k > 0 && (raw[k] & 0xc0) == 0x80) /* back to the character's first byte */
            k--;
        int len;
        Py_UCS4 cp = decode_utf8(raw + k, j - k, &len);
        if (!Py_UNICODE_ISSPACE(cp))
            return cp == 0xff1f;
        j = k;
    }
    return 0;
}

typedef struct {
    Py_ssize_t start, len;
} span_t;

static int
contains(const unsigned char *hay, Py_ssize_t size, const char *needle, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + n <= size; i++)
        if (hay[i] == (unsigned char)needle[0] && memcmp(hay + i, needle, n) == 0)
            return 1;
    return 0;
}

/* The features of one text, as classifier._text_keys reads them: `raw` is the UTF-8 encoding
 * (surrogatepass) of `lowered`, the lower-cased text. */
static int
read_text(state_t *st, PyObject *raw_obj, PyObject *lowered)
{
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(raw_obj);
    Py_ssize_t size = PyBytes_GET_SIZE(raw_obj);
    unsigned char *words = PyMem_Malloc(size ? size : 1); /* raw with the word translation */
    if (words == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    span_t pairs[PAIR_WORDS];
    int npairs = 0;
    const uint64_t tag_bytes = fnv_byte(FNV_OFFSET, TAG_BYTES);
    const uint64_t tag_str = fnv_byte(FNV_OFFSET, TAG_STR);
    shape_t *sh = &st->shape;

    /* Words: runs of ASCII letters and digits and non-ASCII bytes, digits 1-9 read as 0. Symbol
     * runs: runs of other ASCII bytes but whitespace; each of their bytes is also a feature. */
    Py_ssize_t i = 0;
    while (i < size) {
        unsigned char c = raw[i];
        if (c >= 128 || is_ascii_alnum(c)) {
            Py_ssize_t start = i;
            uint64_t h = tag_bytes;
            int ascii = 0, wide = 0, digit = 0;
            for (; i < size && (raw[i] >= 128 || is_ascii_alnum(raw[i])); i++) {
                unsigned char w = raw[i];
                int d = (unsigned char)(w - '0') < 10;
                sh->numbers += d & !digit; /* a run of digits starts */
                digit = d;
                if (d)
                    w = '0';
                words[i] = w;
                h = fnv_byte(h, w);
                ascii |= w < 128;
                /* a lead byte of three or four bytes, but not U+1E00-U+1EFF (Vietnamese letters
                 * such as "ậ" are Latin: "lập" is no Latin term glued to another script) */
                wide |= w >= 0xe0 && !(w == 0xe1 && i + 1 < size && raw[i + 1] >= 0xb8 && raw[i + 1] <= 0xbb);
            }
            sh->words++;
            /* ASCII bytes in a word are letters and digits; other bytes may be white space (U+3000) */
            if (!sh->in_line && (ascii || has_non_space(raw + start, i - start)))
                shape_non_space(sh);
            feature(st, h, words + start, i - start);
            if (ascii && wide) {
                /* A Latin term glued to a CJK (or other wide script's) particle, "vue에서": each
                 * of the word's ASCII runs is a word too (features.text_keys). */
                for (Py_ssize_t j = start; j < i;) {
                    if (words[j] >= 128) {
                        j++;
                        continue;
                    }
                    Py_ssize_t run = j;
                    uint64_t hr = tag_bytes;
                    for (; j < i && words[j] < 128; j++)
                        hr = fnv_byte(hr, words[j]);
                    feature(st, hr, words + run, j - run);
                }
            }
            if (npairs < PAIR_WORDS) {
                pairs[npairs].start = start;
                pairs[npairs].len = i - start;
                npairs++;
            }
        }
        else if (!is_py_space(c)) {
            Py_ssize_t start = i;
            uint64_t h = tag_bytes;
            for (; i < size && raw[i] < 128 && !is_ascii_alnum(raw[i]) && !is_py_space(raw[i]); i++) {
                h = fnv_byte(h, raw[i]);
                sh->q |= raw[i] == '?';
                feature(st, fnv_byte(tag_str, raw[i]), NULL, 0);
            }
            shape_non_space(sh);
            feature(st, h, raw + start, i - start);
        }
        else {
            if (c == '\n') {
                /* a blank line counts (para) once a non-space character came before it */
                sh->pending |= sh->lines && i + 1 < size && raw[i + 1] == '\n';
                sh->in_line = 0;
            }
            i++;
        }
    }
    sh->endq = ends_with_question(raw, size);
    for (int k = 0; k + 1 < npairs; k++) {
        uint64_t h = fnv(fnv_byte(FNV_OFFSET, TAG_PAIR), words + pairs[k].start, pairs[k].len);
        h = fnv(fnv_byte(h, ' '), words + pairs[k + 1].start, pairs[k + 1].len);
        feature(st, h, NULL, 0);
    }
    PyMem_Free(words);

#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(lowered) < 0)
        return -1;
#endif
    if (size != PyUnicode_GET_LENGTH(lowered)) {
        /* Not ASCII: symbols outside ASCII (not letters or digits: €, ×, 。) one by one, and the
         * first `cjk_head` CJK characters and their adjacent pairs, which stand in for words. */
        int kind = PyUnicode_KIND(lowered);
        const void *data = PyUnicode_DATA(lowered);
        Py_ssize_t length = PyUnicode_GET_LENGTH(lowered);
        Py_ssize_t budget = st->cjk_head;
        Py_UCS4 prev = 0;
        int have_prev = 0;
        unsigned char buf[8];
        for (Py_ssize_t k = 0; k < length; k++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, k);
            if (c < 128) {
                have_prev = 0;
                continue;
            }
            sh->q |= c == 0xff1f; /* a full-width question mark */
            if (!Py_UNICODE_ISALNUM(c) && c != '_')  /* (the CJK blocks hold a few such marks) */
                feature(st, fnv(tag_str, buf, utf8(c, buf)), NULL, 0);
            if (budget > 0 && is_cjk(c)) {
                int n = utf8(c, buf);
                feature(st, fnv(tag_str, buf, n), NULL, 0);
                if (have_prev) {
                    int m = utf8(prev, buf);
                    utf8(c, buf + m);
                    feature(st, fnv(tag_str, buf, m + n), NULL, 0);
                }
                prev = c;
                have_prev = 1;
                budget--;
            }
            else {
                have_prev = 0;
            }
        }
    }

    /* Shape markers: indented lines and error text. */
    if (contains(raw, size, "\n  ", 3) || contains(raw, size, "\n\t", 2))
        str_feature(st, "__tab");
    if (contains(raw, size, "error:", 6) || contains(raw, size, "exception", 9))
        str_feature(st, "__err");
    return 0;
}

/* The shape markers of a text read by read_text, as bits numbered like features.SHAPE_NAMES
 * (features.shape_features, exactly): `length` is the text's length in characters before
 * lower-casing. */
static uint64_t
shape_mask(const shape_spec_t *spec, const shape_t *sh, Py_ssize_t length)
{
    if (length == 0)
        return 0;
    double value[SHAPE_GROUPS] = {(double)length, (double)sh->numbers, 0.0, (double)sh->lines};
    int have[SHAPE_GROUPS] = {1, sh->numbers > 0, sh->numbers > 0, 1};
    if (sh->numbers) /* a digit is a word byte: words >= 1; the same double division as Python's */
        value[2] = (double)sh->numbers / (double)sh->words;
    uint64_t mask = 0;
    int bit = 0;
    for (int g = 0; g < SHAPE_GROUPS; g++) {
        for (int k = 0; have[g] && k < spec->nsteps[g] && spec->steps[g][k] <= value[g]; k++)
            mask |= 1ULL << (bit + k); /* cumulative: every threshold reached (bisect_right) */
        bit += spec->nsteps[g];
    }
    if (sh->endq)
        mask |= 1ULL << bit;
    if (sh->q)
        mask |= 1ULL << (bit + 1);
    if (sh->para)
        mask |= 1ULL << (bit + 2);
    return mask;
}

/* The fixed-point sums of the markers in `mask`. */
static PyObject *
shape_sums(const shape_spec_t *spec, uint64_t mask, int width)
{
    int64_t sum[MAX_WIDTH] = {0};
    for (int m = 0; m < spec->nmarkers; m++)
        if (mask >> m & 1)
            for (int j = 0; j < width; j++)
                sum[j] += spec->weights[m][j];
    PyObject *t = PyTuple_New(width);
    if (t == NULL)
        return NULL;
    for (int j = 0; j < width; j++) {
        PyObject *v = PyLong_FromLongLong(sum[j]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, j, v);
    }
    return t;
}

PyDoc_STRVAR(score_doc,
"score(table, raw, lowered, ctx_raw, ctx_lowered, tools[, length]) -> (sums, n, ctx_sums, ctx_n[, shape])\n\n"
"Fixed-point weight sums (a tuple of `width` ints) and distinct-feature counts of the last user\n"
"turn and of the context (`ctx_raw`/`ctx_lowered` may both be None: then ctx_sums is None and\n"
"ctx_n 0; `tools` adds the tools marker to the context). Given `length`, the last user turn's\n"
"length in characters before lower-casing, also the sums of its shape markers' weights (None\n"
"when the table has no shape markers).");

static PyObject *
sums_tuple(const state_t *st)
{
    PyObject *t = PyTuple_New(st->width);
    if (t == NULL)
        return NULL;
    for (int j = 0; j < st->width; j++) {
        PyObject *v = PyLong_FromLongLong(st->sum[j]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, j, v);
    }
    return t;
}

static PyObject *
score(PyObject *module, PyObject *args)
{
    (void)module;
    TableObject *table;
    PyObject *raw, *lowered, *ctx_raw, *ctx_lowered;
    int tools;
    Py_ssize_t length = -1;
    if (!PyArg_ParseTuple(args, "O!SUOOp|n:score", &TableType, &table, &raw, &lowered, &ctx_raw, &ctx_lowered,
                          &tools, &length))
        return NULL;
    if (table->weights.slots == NULL || table->stems.slots == NULL) {
        PyErr_SetString(PyExc_ValueError, "Table is not built");
        return NULL;
    }
    int has_ctx = ctx_raw != Py_None;
    if (has_ctx ? (!PyBytes_Check(ctx_raw) || !PyUnicode_Check(ctx_lowered)) : ctx_lowered != Py_None) {
        PyErr_SetString(PyExc_TypeError, "ctx_raw must be bytes and ctx_lowered str, or both None");
        return NULL;
    }
    state_t st;
    state_init(&st, table);
    PyObject *main_sums = NULL, *ctx_sums = NULL, *shape = NULL;
    Py_ssize_t n = 0, ctx_n = 0;
    int rc = read_text(&st, raw, lowered);
    if (rc == 0 && !st.failed) {
        main_sums = sums_tuple(&st);
        n = st.n;
        rc = main_sums == NULL ? -1 : 0;
    }
    if (rc == 0 && !st.failed && length >= 0 && table->shape != NULL) {
        shape = shape_sums(table->shape, shape_mask(table->shape, &st.shape, length), st.width);
        rc = shape == NULL ? -1 : 0;
    }
    if (rc == 0 && !st.failed && has_ctx) {
        state_reset(&st); /* the context is read on its own: every feature it has counts */
        rc = read_text(&st, ctx_raw, ctx_lowered);
        if (rc == 0 && tools)
            str_feature(&st, "__tool");
        if (rc == 0 && !st.failed) {
            ctx_sums = sums_tuple(&st);
            ctx_n = st.n;
            rc = ctx_sums == NULL ? -1 : 0;
        }
    }
    if (st.seen != st.stack)
        PyMem_Free(st.seen);
    if (rc < 0 || st.failed) {
        Py_XDECREF(main_sums);
        Py_XDECREF(ctx_sums);
        Py_XDECREF(shape);
        return rc < 0 ? NULL : PyErr_NoMemory();
    }
    if (ctx_sums == NULL) {
        Py_INCREF(Py_None);
        ctx_sums = Py_None;
    }
    if (length < 0)
        return Py_BuildValue("(NnNn)", main_sums, n, ctx_sums, ctx_n);
    if (shape == NULL) {
        Py_INCREF(Py_None);
        shape = Py_None;
    }
    return Py_BuildValue("(NnNnN)", main_sums, n, ctx_sums, ctx_n, shape);
}

PyDoc_STRVAR(shape_doc,
"shape(table, raw, lowered, length) -> int\n\n"
"The shape markers of a text as bits numbered like features.SHAPE_NAMES (what `score` sums for\n"
"the last user turn): `raw` is the UTF-8 (surrogatepass) of `lowered`, the lower-cased text, and\n"
"`length` the text's length in characters before lower-casing.");

static PyObject *
shape(PyObject *module, PyObject *args)
{
    (void)module;
    TableObject *table;
    PyObject *raw, *lowered;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "O!SUn:shape", &TableType, &table, &raw, &lowered, &length))
        return NULL;
    if (table->weights.slots == NULL || table->shape == NULL) {
        PyErr_SetString(PyExc_ValueError, "Table is not built with shape markers");
        return NULL;
    }
    state_t st;
    state_init(&st, table);
    int rc = read_text(&st, raw, lowered);
    if (st.seen != st.stack)
        PyMem_Free(st.seen);
    if (rc < 0)
        return NULL;
    if (st.failed)
        return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(shape_mask(table->shape, &st.shape, length));
}

/* ---------------------------------------------------------------------------------------------
 * Language detection after noise stripping: router/language.py's `_detect_clean`, exactly.
 * ------------------------------------------------------------------------------------------- */

/* Scripts, in the order of language.py's _BLOCKS names. */
enum { S_GREEK, S_CYRILLIC, S_ARMENIAN, S_HEBREW, S_ARABIC, S_OTHER, S_DEVANAGARI, S_THAI, S_HANGUL, S_CJK, N_SCRIPTS };
/* The language codes a script decides (language.py's _SCRIPT_LANG), then those it takes a letter
 * check or kana count to tell apart: indexed by script, then by CODE_*. */
enum { CODE_JA = N_SCRIPTS, CODE_ZH, CODE_UK, CODE_FA, N_CODES };
static const char *script_codes[N_CODES] = {"el", "ru", "hy", "he", "ar", NULL, "hi", "th", "ko", NULL,
                                            "ja", "zh", "uk", "fa"};

typedef struct {
    Py_UCS4 start;
    int script;
    double weight;
} block_t;

/* language.py's _BLOCKS: (first code point, script, Latin letters one character is worth). */
static const block_t blocks[] = {
    {0x0370, S_GREEK, 1.0},  {0x0400, S_CYRILLIC, 1.0}, {0x0530, S_ARMENIAN, 1.0}, {0x0590, S_HEBREW, 1.0},
    {0x0600, S_ARABIC, 1.0}, {0x0700, S_OTHER, 1.0},    {0x0750, S_ARABIC, 1.0},   {0x0780, S_OTHER, 1.0},
    {0x0900, S_DEVANAGARI, 1.0}, {0x0980, S_OTHER, 1.0}, {0x0E00, S_THAI, 1.0},    {0x0E80, S_OTHER, 1.0},
    {0x1100, S_HANGUL, 3.0}, {0x1200, S_OTHER, 1.0},    {0x3040, S_CJK, 3.0},      {0x3100, S_OTHER, 1.0},
    {0x3130, S_HANGUL, 3.0}, {0x3190, S_OTHER, 1.0},    {0x31F0, S_CJK, 3.0},      {0x3200, S_OTHER, 1.0},
    {0x3400, S_CJK, 3.0},    {0xA000, S_OTHER, 1.0},    {0xAC00, S_HANGUL, 3.0},   {0xD7B0, S_OTHER, 1.0},
    {0xF900, S_CJK, 3.0},    {0xFB00, S_OTHER, 1.0},    {0xFB50, S_ARABIC, 1.0},   {0xFE00, S_OTHER, 1.0},
    {0xFE70, S_ARABIC, 1.0}, {0xFF00, S_OTHER, 1.0},    {0xFF66, S_CJK, 3.0},      {0xFFA0, S_OTHER, 1.0},
};
#define N_BLOCKS ((int)(sizeof(blocks) / sizeof(blocks[0])))

/* language.py's _NON_LATIN_RUN character class. */
static inline int
is_non_latin(Py_UCS4 c)
{
    return (c >= 0x0370 && c <= 0x06ff) || (c >= 0x0750 && c <= 0x077f) || (c >= 0x0900 && c <= 0x097f)
           || (c >= 0x0e00 && c <= 0x0e7f) || (c >= 0x1100 && c <= 0x11ff) || (c >= 0x3040 && c <= 0x30ff)
           || (c >= 0x3130 && c <= 0x318f) || (c >= 0x31f0 && c <= 0x31ff) || (c >= 0x3400 && c <= 0x4dbf)
           || (c >= 0x4e00 && c <= 0x9fff) || (c >= 0xac00 && c <= 0xd7af) || (c >= 0xf900 && c <= 0xfaff)
           || (c >= 0xfb50 && c <= 0xfdff) || (c >= 0xfe70 && c <= 0xfeff) || (c >= 0xff66 && c <= 0xff9f);
}

static inline int
is_kana(Py_UCS4 c)
{
    return (c >= 0x3040 && c <= 0x30ff) || (c >= 0x31f0 && c <= 0x31ff) || (c >= 0xff66 && c <= 0xff9f);
}

static inline const block_t *
block_of(Py_UCS4 c)
{
    int lo = 0, hi = N_BLOCKS; /* the last block starting at or before c */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (blocks[mid].start <= c)
            lo = mid;
        else
            hi = mid;
    }
    return &blocks[lo];
}

/* A letter as language.py's _WORD reads one: [^\W\d_]. */
static inline int
is_word_letter(Py_UCS4 c)
{
    return c != '_' && Py_UNICODE_ISALNUM(c) && !Py_UNICODE_ISDECIMAL(c);
}

#define MAX_LANGS 32
#define MAX_SUFFIX 8

typedef struct {
    Py_UCS4 chars[MAX_SUFFIX];
    int len, lang, units;
} suffix_t;

typedef struct {
    Py_UCS4 ch;
    int lang;
    double weight;
} hint_t;

typedef struct {
    uint64_t key; /* hash of the word's UTF-8 (0: empty) */
    int32_t row;
} stop_slot_t;

typedef struct {
    PyObject_HEAD
    PyObject *langs;  /* tuple of str, the packed fields' order */
    PyObject *script_codes[N_CODES]; /* script_codes, interned */
    int nlangs, default_lang, unit;
    stop_slot_t *stop; /* word hash -> row */
    uint64_t stop_mask;
    int32_t *rows;    /* nlangs weights per stop word, in 1/unit */
    suffix_t *suffixes;
    int nsuffixes;
    hint_t *hints;    /* sorted by code point */
    int nhints;
} LexiconObject;


static void
Lexicon_dealloc(LexiconObject *self)
{
    Py_XDECREF(self->langs);
    for (int i = 0; i < N_CODES; i++)
        Py_XDECREF(self->script_codes[i]);
    PyMem_Free(self->stop);
    PyMem_Free(self->rows);
    PyMem_Free(self->suffixes);
    PyMem_Free(self->hints);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint64_t
hash_utf8_str(PyObject *word)
{
    Py_ssize_t len;
    const char *utf = PyUnicode_AsUTF8AndSize(word, &len);
    if (utf == NULL)
        return 0;
    return finish(fnv(FNV_OFFSET, (const unsigned char *)utf, len));
}

/* Lexicon(langs, default, unit, stopwords: {word: (units per lang)}, suffixes: [(suffix, lang
 * index, units)], hints: [(letter, lang index, weight)]) */
static int
Lexicon_init(LexiconObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *langs, *stopwords, *suffixes, *hints;
    int default_lang, unit;
    (void)kwds;
    if (self->langs != NULL) {
        PyErr_SetString(PyExc_TypeError, "Lexicon is already built");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!iiO!O!O!:Lexicon", &PyTuple_Type, &langs, &default_lang, &unit, &PyDict_Type,
                          &stopwords, &PyList_Type, &suffixes, &PyList_Type, &hints))
        return -1;
    int nlangs = (int)PyTuple_GET_SIZE(langs);
    if (nlangs < 1 || nlangs > MAX_LANGS || default_lang < 0 || default_lang >= nlangs || unit <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad language list");
        return -1;
    }
    Py_INCREF(langs);
    self->langs = langs;
    self->nlangs = nlangs;
    self->default_lang = default_lang;
    self->unit = unit;
    for (int i = 0; i < N_CODES; i++) {
        if (script_codes[i] != NULL && (self->script_codes[i] = PyUnicode_InternFromString(script_codes[i])) == NULL)
            return -1;
    }

    Py_ssize_t n = PyDict_Size(stopwords);
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2 + 2)
        cap <<= 1;
    self->stop = PyMem_Calloc(cap, sizeof(stop_slot_t));
    self->rows = PyMem_Calloc(n ? n * nlangs : 1, sizeof(int32_t));
    if (self->stop == NULL || self->rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->stop_mask = cap - 1;
    PyObject *word, *weights;
    Py_ssize_t pos = 0, row = 0;
    while (PyDict_Next(stopwords, &pos, &word, &weights)) {
        if (!PyUnicode_Check(word) || !PyTuple_Check(weights) || PyTuple_GET_SIZE(weights) != nlangs) {
            PyErr_SetString(PyExc_TypeError, "stopwords: {str: tuple of one int per language}");
            return -1;
        }
        for (int i = 0; i < nlangs; i++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(weights, i));
            if (v == -1 && PyErr_Occurred())
                return -1;
            self->rows[row * nlangs + i] = (int32_t)v;
        }
        uint64_t h = hash_utf8_str(word);
        if (h == 0)
            return -1;
        uint64_t j = spread(h) & self->stop_mask;
        while (self->stop[j].key != 0) {
            if (self->stop[j].key == h) {
                PyErr_SetString(PyExc_ValueError, "two stop words share a 64-bit hash");
                return -1;
            }
            j = (j + 1) & self->stop_mask;
        }
        self->stop[j].key = h;
        self->stop[j].row = (int32_t)row;
        row++;
    }

    self->nsuffixes = (int)PyList_GET_SIZE(suffixes);
    self->suffixes = PyMem_Calloc(self->nsuffixes ? self->nsuffixes : 1, sizeof(suffix_t));
    if (self->suffixes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int k = 0; k < self->nsuffixes; k++) {
        PyObject *text;
        suffix_t *sx = &self->suffixes[k];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(suffixes, k), "Uii", &text, &sx->lang, &sx->units))
            return -1;
        sx->len = (int)PyUnicode_GET_LENGTH(text);
        if (sx->len < 1 || sx->len > MAX_SUFFIX || sx->lang < 0 || sx->lang >= nlangs) {
            PyErr_SetString(PyExc_ValueError, "bad suffix");
            return -1;
        }
        for (int i = 0; i < sx->len; i++)
            sx->chars[i] = PyUnicode_READ_CHAR(text, i);
    }

    self->nhints = (int)PyList_GET_SIZE(hints);
    self->hints = PyMem_Calloc(self->nhints ? self->nhints : 1, sizeof(hint_t));
    if (self->hints == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int k = 0; k < self->nhints; k++) {
        PyObject *letter;
        hint_t *ht = &self->hints[k];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(hints, k), "Uid", &letter, &ht->lang, &ht->weight))
            return -1;
        if (PyUnicode_GET_LENGTH(letter) != 1 || ht->lang < 0 || ht->lang >= nlangs
            || (k > 0 && PyUnicode_READ_CHAR(letter, 0) <= self->hints[k - 1].ch)) {
            PyErr_SetString(PyExc_ValueError, "hints: single letters, sorted, each once");
            return -1;
        }
        ht->ch = PyUnicode_READ_CHAR(letter, 0);
    }
    return 0;
}

static PyTypeObject LexiconType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router.classify._features.Lexicon",
    .tp_doc = PyDoc_STR("Lexicon(langs, default, unit, stopwords, suffixes, hints): language evidence."),
    .tp_basicsize = sizeof(LexiconObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lexicon_init,
    .tp_dealloc = (destructor)Lexicon_dealloc,
};

static PyObject *
code(LexiconObject *lx, int index)
{
    PyObject *c = lx->script_codes[index];
    Py_INCREF(c);
    return c;
}

/* language.py's _latin_language: `lowered` is the lower-cased head of the cleaned text. */
static PyObject *
latin_language(LexiconObject *lx, PyObject *lowered)
{
    int kind = PyUnicode_KIND(lowered);
    const void *data = PyUnicode_DATA(lowered);
    Py_ssize_t len = PyUnicode_GET_LENGTH(lowered);
    int64_t units[MAX_LANGS] = {0};
    unsigned char buf[4 * 64];
    Py_ssize_t i = 0;
    while (i < len) {
        if (!is_word_letter(PyUnicode_READ(kind, data, i))) {
            i++;
            continue;
        }
        /* A word: letters, then at most one apostrophe joining more letters. */
        Py_ssize_t start = i;
        while (i < len && is_word_letter(PyUnicode_READ(kind, data, i)))
            i++;
        if (i + 1 < len) {
            Py_UCS4 a = PyUnicode_READ(kind, data, i);
            if ((a == '\'' || a == 0x2019) && is_word_letter(PyUnicode_READ(kind, data, i + 1))) {
                i++;
                while (i < len && is_word_letter(PyUnicode_READ(kind, data, i)))
                    i++;
            }
        }
        Py_ssize_t wlen = i - start;
        uint64_t h = FNV_OFFSET;
        Py_ssize_t nbytes = 0;
        for (Py_ssize_t k = start; k < i; k++) {
            if (nbytes + 4 > (Py_ssize_t)sizeof(buf)) {
                h = fnv(h, buf, nbytes);
                nbytes = 0;
            }
            nbytes += utf8(PyUnicode_READ(kind, data, k), buf + nbytes);
        }
        h = finish(fnv(h, buf, nbytes));
        uint64_t j = spread(h) & lx->stop_mask;
        while (lx->stop[j].key != 0 && lx->stop[j].key != h)
            j = (j + 1) & lx->stop_mask;
        if (lx->stop[j].key == h) {
            const int32_t *row = lx->rows + (Py_ssize_t)lx->stop[j].row * lx->nlangs;
            for (int l = 0; l < lx->nlangs; l++)
                units[l] += row[l];
        }
        else if (wlen > 4) {
            for (int k = 0; k < lx->nsuffixes; k++) {
                const suffix_t *sx = &lx->suffixes[k];
                if (sx->len > wlen)
                    continue;
                int match = 1;
                for (int c = 0; c < sx->len && match; c++)
                    match = PyUnicode_READ(kind, data, i - sx->len + c) == sx->chars[c];
                if (match) {
                    units[sx->lang] += sx->units;
                    break;
                }
            }
        }
    }
    /* Scores in language.py's order: languages with word evidence, then hint letters' languages
     * as they first appear in code point order. */
    int order[MAX_LANGS];
    double score[MAX_LANGS];
    int present[MAX_LANGS] = {0};
    int n = 0;
    for (int l = 0; l < lx->nlangs; l++) {
        if (units[l]) {
            order[n++] = l;
            score[l] = (double)units[l] / lx->unit;
            present[l] = 1;
        }
    }
    if (!PyUnicode_IS_ASCII(lowered)) {
        for (int k = 0; k < lx->nhints; k++) {
            const hint_t *ht = &lx->hints[k];
            Py_ssize_t count = 0;
            for (Py_ssize_t j = 0; j < len && count < 5; j++)
                count += PyUnicode_READ(kind, data, j) == ht->ch;
            if (!count)
                continue;
            if (!present[ht->lang]) {
                present[ht->lang] = 1;
                score[ht->lang] = 0.0;
                order[n++] = ht->lang;
            }
            score[ht->lang] = score[ht->lang] + ht->weight * (double)count;
        }
    }
    int best = lx->default_lang;
    if (n) {
        best = order[0];
        for (int k = 1; k < n; k++) {
            int l = order[k];
            if (score[l] > score[best] || (score[l] == score[best] && l == lx->default_lang && best != l))
                best = l;
        }
    }
    PyObject *result = PyTuple_GET_ITEM(lx->langs, best);
    Py_INCREF(result);
    return result;
}

PyDoc_STRVAR(language_doc,
"language(lexicon, cleaned) -> str\n\n"
"The language code of text already stripped of code and markup (router/language.py's\n"
"_detect_clean).");

static PyObject *
language(PyObject *module, PyObject *args)
{
    LexiconObject *lx;
    PyObject *cleaned;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!U:language", &LexiconType, &lx, &cleaned))
        return NULL;
    if (lx->langs == NULL) {
        PyErr_SetString(PyExc_ValueError, "Lexicon is not built");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(cleaned) < 0)
        return NULL;
#endif
    if (!PyUnicode_IS_ASCII(cleaned)) {
        int kind = PyUnicode_KIND(cleaned);
        const void *data = PyUnicode_DATA(cleaned);
        Py_ssize_t len = PyUnicode_GET_LENGTH(cleaned);
        double counts[N_SCRIPTS] = {0};
        int seen[N_SCRIPTS] = {0}, order[N_SCRIPTS], nscripts = 0;
        Py_ssize_t latin = 0, run_chars = 0, kana = 0, run_len = 0;
        const block_t *run_block = NULL;
        int ukrainian = 0, persian = 0;
        for (Py_ssize_t i = 0; i <= len; i++) {
            Py_UCS4 c = i < len ? PyUnicode_READ(kind, data, i) : 0;
            if (i < len && is_non_latin(c)) {
                if (run_block == NULL) {
                    run_block = block_of(c);
                    run_len = 0;
                }
                run_len++;
                run_chars++;
                kana += is_kana(c);
            }
            else if (run_block != NULL) {
                int sc = run_block->script;
                if (!seen[sc]) {
                    seen[sc] = 1;
                    order[nscripts++] = sc;
                }
                counts[sc] = counts[sc] + (double)run_len * run_block->weight;
                run_block = NULL;
            }
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= 0xc0 && c <= 0x24f))
                latin++;
            ukrainian |= c == 0x456 || c == 0x457 || c == 0x454 || c == 0x491 || c == 0x406 || c == 0x407
                         || c == 0x404 || c == 0x490;
            persian |= c == 0x67e || c == 0x686 || c == 0x698 || c == 0x6af;
        }
        if (nscripts) {
            int best = order[0];
            for (int k = 1; k < nscripts; k++)
                if (counts[order[k]] > counts[best])
                    best = order[k];
            if (best != S_OTHER && (counts[best] * 6 >= (double)latin || counts[best] >= 20)) {
                if (best == S_CJK)
                    return code(lx, kana >= 2 || kana * 10 >= run_chars ? CODE_JA : CODE_ZH);
                if (best == S_CYRILLIC && ukrainian)
                    return code(lx, CODE_UK);
                if (best == S_ARABIC && persian)
                    return code(lx, CODE_FA);
                return code(lx, best);
            }
        }
    }
    PyObject *head = PyUnicode_Substring(cleaned, 0, LATIN_CHARS);
    if (head == NULL)
        return NULL;
    PyObject *lowered = PyObject_CallMethod(head, "lower", NULL);
    Py_DECREF(head);
    if (lowered == NULL)
        return NULL;
    PyObject *result = latin_language(lx, lowered);
    Py_DECREF(lowered);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * Noise stripping before language detection: router/language.py's `_strip_noise`, exactly.
 *
 * Eight regex substitutions, each run only when a trigger substring is in the text as it stands,
 * in order, each replacing its matches with one space. Each is written here as the scan the regex
 * engine's leftmost-first search amounts to; tests compare the two on data and random text.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    Py_UCS4 *buf;
    Py_ssize_t len;
} ubuf_t;

static inline int
is_word(Py_UCS4 c) /* re's \w */
{
    return c == '_' || Py_UNICODE_ISALNUM(c);
}

static int
has(const ubuf_t *t, const char *needle)
{
    Py_ssize_t m = (Py_ssize_t)strlen(needle);
    for (Py_ssize_t i = 0; i + m <= t->len; i++) {
        Py_ssize_t k = 0;
        while (k < m && t->buf[i + k] == (Py_UCS4)(unsigned char)needle[k])
            k++;
        if (k == m)
            return 1;
    }
    return 0;
}

static inline int
starts(const ubuf_t *t, Py_ssize_t i, const char *lit)
{
    for (Py_ssize_t k = 0; lit[k]; k++)
        if (i + k >= t->len || t->buf[i + k] != (Py_UCS4)(unsigned char)lit[k])
            return 0;
    return 1;
}

/* A pattern: the end of its match at `i`, or -1 when it does not match there. */
typedef Py_ssize_t (*match_fn)(const ubuf_t *t, Py_ssize_t i);

/* ```.*?(?:```|\Z)  (DOTALL) */
static Py_ssize_t
m_fence(const ubuf_t *t, Py_ssize_t i)
{
    if (!starts(t, i, "```"))
        return -1;
    for (Py_ssize_t j = i + 3; j + 3 <= t->len; j++)
        if (starts(t, j, "```"))
            return j + 3;
    return t->len;
}

/* `[^`\n]*` */
static Py_ssize_t
m_inline(const ubuf_t *t, Py_ssize_t i)
{
    if (t->buf[i] != '`')
        return -1;
    for (Py_ssize_t j = i + 1; j < t->len; j++) {
        if (t->buf[j] == '`')
            return j + 1;
        if (t->buf[j] == '\n')
            return -1;
    }
    return -1;
}

/* https?://\S+ */
static Py_ssize_t
m_url(const ubuf_t *t, Py_ssize_t i)
{
    if (!starts(t, i, "http"))
        return -1;
    Py_ssize_t k = i + 4;
    if (starts(t, k, "s://"))
        k += 4;
    else if (starts(t, k, "://"))
        k += 3;
    else
        return -1;
    if (k >= t->len || Py_UNICODE_ISSPACE(t->buf[k]))
        return -1;
    while (k < t->len && !Py_UNICODE_ISSPACE(t->buf[k]))
        k++;
    return k;
}

/* (?<!\S)[^\s/\\]*[/\\]\S*  -- a whitespace-delimited token holding a slash or backslash */
static Py_ssize_t
m_path(const ubuf_t *t, Py_ssize_t i)
{
    if (i > 0 && !Py_UNICODE_ISSPACE(t->buf[i - 1]))
        return -1;
    Py_ssize_t k = i;
    while (k < t->len && !Py_UNICODE_ISSPACE(t->buf[k]) && t->buf[k] != '/' && t->buf[k] != '\\')
        k++;
    if (k >= t->len || (t->buf[k] != '/' && t->buf[k] != '\\'))
        return -1;
    while (k < t->len && !Py_UNICODE_ISSPACE(t->buf[k]))
        k++;
    return k;
}

static inline Py_ssize_t
line_end(const ubuf_t *t, Py_ssize_t i)
{
    while (i < t->len && t->buf[i] != '\n')
        i++;
    return i;
}

/* ^[ \t]+\S[^\n]*$  (MULTILINE)  -- an indented line */
static Py_ssize_t
m_indented(const ubuf_t *t, Py_ssize_t i)
{
    if (i > 0 && t->buf[i - 1] != '\n')
        return -1;
    Py_ssize_t k = i;
    while (k < t->len && (t->buf[k] == ' ' || t->buf[k] == '\t'))
        k++;
    if (k == i || k >= t->len || Py_UNICODE_ISSPACE(t->buf[k]))
        return -1;
    return line_end(t, k);
}

/* ^[^\n]*(?:[;{}]|\):)[ \t]*$  (MULTILINE)  -- a line ending like code */
static Py_ssize_t
m_codeline(const ubuf_t *t, Py_ssize_t i)
{
    if (i > 0 && t->buf[i - 1] != '\n')
        return -1;
    Py_ssize_t end = line_end(t, i), e = end;
    while (e > i && (t->buf[e - 1] == ' ' || t->buf[e - 1] == '\t'))
        e--;
    if (e > i && (t->buf[e - 1] == ';' || t->buf[e - 1] == '{' || t->buf[e - 1] == '}'))
        return end;
    if (e - 1 > i && t->buf[e - 1] == ':' && t->buf[e - 2] == ')')
        return end;
    return -1;
}

/* (?<!\w)[^\W_]*_\w*  -- a run of word characters holding an underscore */
static Py_ssize_t
m_snake(const ubuf_t *t, Py_ssize_t i)
{
    if (i > 0 && is_word(t->buf[i - 1]))
        return -1;
    Py_ssize_t k = i;
    while (k < t->len && t->buf[k] != '_' && Py_UNICODE_ISALNUM(t->buf[k]))
        k++;
    if (k >= t->len || t->buf[k] != '_')
        return -1;
    while (k < t->len && is_word(t->buf[k]))
        k++;
    return k;
}

static int
ends_with(const ubuf_t *t, Py_ssize_t start, Py_ssize_t end, const char *suffix)
{
    Py_ssize_t m = (Py_ssize_t)strlen(suffix);
    return end - start >= m && starts(t, end - m, suffix);
}

/* \b[A-Z]\w*(?:Error|Exception|Warning)\b(?::[^.?!\n]*)?  -- an exception name and its message */
static Py_ssize_t
m_error(const ubuf_t *t, Py_ssize_t i)
{
    Py_UCS4 c = t->buf[i];
    if (c < 'A' || c > 'Z' || (i > 0 && is_word(t->buf[i - 1])))
        return -1;
    Py_ssize_t end = i + 1;
    while (end < t->len && is_word(t->buf[end]))
        end++;
    /* the name must end the run, after at least one character ([A-Z]) */
    if (!ends_with(t, i + 1, end, "Error") && !ends_with(t, i + 1, end, "Exception")
        && !ends_with(t, i + 1, end, "Warning"))
        return -1;
    if (end < t->len && t->buf[end] == ':') {
        end++;
        while (end < t->len && t->buf[end] != '.' && t->buf[end] != '?' && t->buf[end] != '!' && t->buf[end] != '\n')
            end++;
    }
    return end;
}

/* Replace every leftmost-first match of `match` with one space; 0 or -1 (out of memory). */
static int
substitute(ubuf_t *t, match_fn match)
{
    Py_UCS4 *out = PyMem_Malloc((t->len ? t->len : 1) * sizeof(Py_UCS4));
    if (out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t n = 0, i = 0;
    while (i < t->len) {
        Py_ssize_t end = match(t, i);
        if (end > i) {
            out[n++] = ' ';
            i = end;
        }
        else {
            out[n++] = t->buf[i++];
        }
    }
    PyMem_Free(t->buf);
    t->buf = out;
    t->len = n;
    return 0;
}

typedef struct {
    const char *triggers[5];
    match_fn match;
} noise_t;

/* language.py's _NOISE, in its order. */
static const noise_t noise[] = {
    {{"```", NULL}, m_fence},
    {{"`", NULL}, m_inline},
    {{"http", NULL}, m_url},
    {{"/", "\\", NULL}, m_path},
    {{"\n ", "\n\t", NULL}, m_indented},
    {{";\n", "{\n", "}\n", "):\n", NULL}, m_codeline},
    {{"_", NULL}, m_snake},
    {{"Error", "Exception", "Warning", NULL}, m_error},
};

PyDoc_STRVAR(strip_noise_doc,
"strip_noise(text) -> str\n\n"
"`text` without code fences, inline code, URLs, paths, indented and code-like lines, snake_case\n"
"identifiers and exception names with their messages (router/language.py's _strip_noise).");

static PyObject *
strip_noise(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "strip_noise() takes a str");
        return NULL;
    }
    ubuf_t t;
    t.len = PyUnicode_GET_LENGTH(arg);
    t.buf = PyUnicode_AsUCS4Copy(arg);
    if (t.buf == NULL)
        return NULL;
    for (size_t k = 0; k < sizeof(noise) / sizeof(noise[0]); k++) {
        for (int j = 0; noise[k].triggers[j] != NULL; j++) {
            if (has(&t, noise[k].triggers[j])) {
                if (substitute(&t, noise[k].match) < 0) {
                    PyMem_Free(t.buf);
                    return NULL;
                }
                break;
            }
        }
    }
    PyObject *result = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, t.buf, t.len);
    PyMem_Free(t.buf);
    return result;
}

PyDoc_STRVAR(grams_doc,
"grams(table, lowered, n) -> (sums, count)\n\n"
"The weight sums (each class against class 0) and the number of distinct character n-grams of\n"
"`lowered`, as features.char_grams reads it: its words (split at white space, as str.split) joined\n"
"by one space, a space before and after, ASCII digits 1-9 read as 0; every run of `n` characters is\n"
"looked up by the hash of its UTF-8 (surrogatepass) bytes in `table`.");

static PyObject *
grams(PyObject *module, PyObject *args)
{
    (void)module;
    TableObject *table;
    PyObject *text;
    int n;
    if (!PyArg_ParseTuple(args, "O!Ui:grams", &TableType, &table, &text, &n))
        return NULL;
    if (table->weights.slots == NULL) {
        PyErr_SetString(PyExc_ValueError, "Table is not built");
        return NULL;
    }
    if (n < 1 || n > 16) {
        PyErr_SetString(PyExc_ValueError, "n must be 1 to 16");
        return NULL;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    /* the normalised text: at most len + 2 characters of at most 4 bytes; off[k] is where the
     * k-th character starts, off[m] the end */
    unsigned char *buf = PyMem_Malloc((size_t)(len + 2) * 4);
    Py_ssize_t *off = PyMem_Malloc((size_t)(len + 3) * sizeof(Py_ssize_t));
    if (buf == NULL || off == NULL) {
        PyMem_Free(buf);
        PyMem_Free(off);
        return PyErr_NoMemory();
    }
    Py_ssize_t m = 0, b = 0;
    int pending = 0;
    off[m++] = b;
    buf[b++] = ' ';
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (Py_UNICODE_ISSPACE(c)) {
            pending = 1;
            continue;
        }
        if (pending && m > 1) {
            off[m++] = b;
            buf[b++] = ' ';
        }
        pending = 0;
        if (c >= '1' && c <= '9')
            c = '0';
        off[m++] = b;
        b += utf8(c, buf + b);
    }
    off[m++] = b;
    buf[b++] = ' ';
    off[m] = b;
    state_t st;
    state_init(&st, table);
    for (Py_ssize_t k = 0; k + n <= m && !st.failed; k++)
        feature(&st, fnv(FNV_OFFSET, buf + off[k], off[k + n] - off[k]), NULL, 0);
    PyMem_Free(buf);
    PyMem_Free(off);
    if (st.seen != st.stack)
        PyMem_Free(st.seen);
    if (st.failed)
        return PyErr_NoMemory();
    PyObject *sums = sums_tuple(&st);
    return sums == NULL ? NULL : Py_BuildValue("(Nn)", sums, st.n);
}

static PyMethodDef methods[] = {
    {"score", score, METH_VARARGS, score_doc},
    {"shape", shape, METH_VARARGS, shape_doc},
    {"grams", grams, METH_VARARGS, grams_doc},
    {"language", language, METH_VARARGS, language_doc},
    {"strip_noise", strip_noise, METH_O, strip_noise_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "router.classify._features",
    .m_doc = "The task classifier's feature scoring in C (an optional accelerator).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__features(void)
{
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&LexiconType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LexiconType);
    if (PyModule_AddObject(m, "Lexicon", (PyObject *)&LexiconType) < 0) {
        Py_DECREF(&LexiconType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
