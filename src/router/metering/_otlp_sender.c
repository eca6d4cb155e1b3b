/* router.metering._otlp.Sender: the trace export queue and its thread, in C, off the GIL.
 *
 * Part of the optional extension router.metering._otlp (setup.py builds both C files into it).
 * tracing.py uses it for a plain http:// endpoint without compression (else, or with
 * ROUTER_OTLP_SENDER=python, the Python `_Batcher` + `OtlpHttpExporter`): the same queue
 * semantics (OTEL_BSP_* settings, a full queue drops and counts), the same request body (an
 * ExportTraceServiceRequest of the queued requests' encoded spans) and the same retries.
 *
 * Why: a Python export thread needs the GIL many times per POST, and while the event loop keeps the
 * GIL busy, every wait for it costs the loop a futex wake and a context switch at each of its many
 * GIL releases (docs/observability.md#overhead). This thread never takes the GIL:
 *
 *   add(spans: bytes)   copies one request's spans into the open batch under a mutex: no syscall (the
 *                       condition variable is signalled once per full batch), the GIL held throughout
 *   the thread          waits for a full batch or the schedule delay, writes the envelope in front of
 *                       the batch's bytes (room is reserved: no copy), and POSTs it over HTTP/1.1 on a
 *                       kept-alive blocking-with-timeout socket; getaddrinfo runs here too
 *   flush(timeout_s)    asks the thread to export everything queued and waits, the GIL released
 *   shutdown(timeout_s) exports what is left within the timeout, then stops and joins the thread
 *   after_fork()        in a forked child: a new queue, mutex and thread (the parent's are unusable)
 *
 * Warnings (a full queue, an export that failed) go to the Python `warn` callable, at most one a
 * minute for each kind, always from a thread that holds the GIL: a full queue from `add`; a failed
 * export is noted by the thread and logged by the next `add`, `flush` or `shutdown`. The counters
 * (dropped, failed, exported, connections, last_error) are readable at any time.
 *
 * Response parsing is strict and bounded: a status line, at most 128 header lines of 8 KiB and
 * 64 KiB in all, then Content-Length, chunked, or read-to-close framing, a body of at most 16 MiB
 * (read and discarded). Anything else closes the connection and counts as a connection error.
 *
 * Linux only (it uses MSG_NOSIGNAL, SOCK_CLOEXEC and a monotonic condition-variable clock); elsewhere
 * the module has no Sender and tracing.py uses its Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int otlp_add_sender(PyObject *module);

#if !defined(__linux__)
int
otlp_add_sender(PyObject *module)
{
    (void)module;
    return 0;
}
#else

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX (64 * 1024)          /* a response's status line and headers, in all */
#define LINE_MAX_ 8192                /* one line of them (and a chunk-size line) */
#define HEADERS_MAX 128
#define BODY_MAX (16 * 1024 * 1024)   /* a response body: read and discarded */
#define INTERIM_MAX 8                 /* 1xx responses before the final one */
#define RBUF 16384
#define MSG 400
#define SPARE_MAX 2                   /* batch buffers kept for reuse */
#define SPARE_BYTES (16u * 1024 * 1024)
#define NS 1000000000LL
#define WARN_EVERY_NS (60 * NS)

enum { POST_OK, POST_REFUSED, POST_FAILED };

typedef struct batch {
    struct batch *next;
    unsigned char *p;   /* [room for the envelope][the requests' spans, as added] */
    size_t n, cap, count;
} batch;

typedef struct core {
    /* settings: written before the thread starts, read-only after */
    char *host, *port, *display;
    char *head;                 /* request line and headers, without Content-Length and the blank line */
    size_t head_n;
    unsigned char *envelope;    /* ResourceSpans.resource (field 1, with its key), then ScopeSpans.scope */
    size_t res_n, scope_n, room;
    size_t max_queue, batch_size;
    int64_t delay_ns, timeout_ns, backoff_ns;

    /* shared: under mu */
    pthread_mutex_t mu;
    pthread_cond_t wake;        /* to the thread: a full batch, a flush, a stop */
    pthread_cond_t done;        /* from the thread: a flush done, the thread ended */
    batch *first, *last;
    int open;                   /* `last` still takes requests */
    size_t queued, closed, hint;
    batch *spare;
    int nspare;
    int stop;
    uint64_t flush_req, flush_done;
    int flush_ok, running;
    unsigned long long dropped, failed, exported, posts, connections;
    char last_error[MSG];
    char report[MSG + 64];      /* a failure to log, for the next caller holding the GIL */
    int has_report;
    int64_t reported_at, drop_warned_at;   /* 0: never */

    /* read by the thread without the mutex */
    atomic_llong stop_at;       /* monotonic ns: the deadline of the shutdown's export; 0 before */
    atomic_int refs;            /* the Python object and the thread: the last one frees */

    /* the thread's own */
    pthread_t thread;
    int fd;
    char *rbuf;
    size_t rlen, rpos;
    char *reqhead;
    char err[MSG];
} core;

typedef struct {
    PyObject_HEAD
    core *c;
    PyObject *warn;
    PyObject *weakrefs;
    int thread_live;            /* a thread to join or detach */
    int stopping;
} Sender;

static int64_t
mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * NS + t.tv_nsec;
}

static void
abs_time(struct timespec *t, int64_t ns)
{
    t->tv_sec = (time_t)(ns / NS);
    t->tv_nsec = (long)(ns % NS);
}

static int
varint_size(uint64_t v)
{
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned char *
put_varint(unsigned char *q, uint64_t v)
{
    while (v > 0x7F) {
        *q++ = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *q++ = (unsigned char)v;
    return q;
}

/* ------------------------------------------------------------------ the core's life */

static void
batch_free(batch *b)
{
    if (b != NULL) {
        free(b->p);
        free(b);
    }
}

static void
core_free(core *c)
{
    batch *b = c->first;
    while (b != NULL) {
        batch *next = b->next;
        batch_free(b);
        b = next;
    }
    b = c->spare;
    while (b != NULL) {
        batch *next = b->next;
        batch_free(b);
        b = next;
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->wake);
    pthread_cond_destroy(&c->done);
    free(c->host);
    free(c->port);
    free(c->display);
    free(c->head);
    free(c->envelope);
    free(c->rbuf);
    free(c->reqhead);
    free(c);
}

static void
core_release(core *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        core_free(c);
}

static char *
dup_bytes(const void *p, size_t n)
{
    char *out = malloc(n + 1);
    if (out != NULL) {
        memcpy(out, p, n);
        out[n] = 0;
    }
    return out;
}

/* a core with `src`'s settings (or none yet) and fresh state: the constructor's, and a forked child's */
static core *
core_new(const core *src)
{
    core *c = calloc(1, sizeof(core));
    if (c == NULL)
        return NULL;
    c->fd = -1;
    atomic_init(&c->stop_at, 0);
    atomic_init(&c->refs, 1);
    pthread_condattr_t ca;
    int ok = pthread_mutex_init(&c->mu, NULL) == 0;
    if (ok && pthread_condattr_init(&ca) == 0) {
        ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&c->wake, &ca) == 0
             && pthread_cond_init(&c->done, &ca) == 0;
        pthread_condattr_destroy(&ca);
    } else {
        ok = 0;
    }
    c->rbuf = malloc(RBUF);
    if (!ok || c->rbuf == NULL) {
        free(c->rbuf);
        free(c);
        return NULL;
    }
    if (src != NULL) {
        c->host = dup_bytes(src->host, strlen(src->host));
        c->port = dup_bytes(src->port, strlen(src->port));
        c->display = dup_bytes(src->display, strlen(src->display));
        c->head = dup_bytes(src->head, src->head_n);
        c->envelope = (unsigned char *)dup_bytes(src->envelope, src->res_n + src->scope_n);
        c->reqhead = malloc(src->head_n + 64);
        c->head_n = src->head_n;
        c->res_n = src->res_n;
        c->scope_n = src->scope_n;
        c->room = src->room;
        c->max_queue = src->max_queue;
        c->batch_size = src->batch_size;
        c->delay_ns = src->delay_ns;
        c->timeout_ns = src->timeout_ns;
        c->backoff_ns = src->backoff_ns;
        c->dropped = src->dropped;
        c->failed = src->failed;
        c->exported = src->exported;
        c->posts = src->posts;
        c->connections = src->connections;
        if (c->host == NULL || c->port == NULL || c->display == NULL || c->head == NULL || c->envelope == NULL
            || c->reqhead == NULL) {
            core_free(c);
            return NULL;
        }
    }
    return c;
}

/* ------------------------------------------------------------------ the thread: I/O */

static void
close_conn(core *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->rlen = c->rpos = 0;
}

/* the wait allowed for one socket operation, in ms: the exporter's timeout, and never past a
 * shutdown's deadline; 0 when that deadline has passed */
static int
op_wait_ms(core *c)
{
    int64_t now = mono_ns(), until = now + c->timeout_ns, stop_at = atomic_load(&c->stop_at);
    if (stop_at != 0 && stop_at < until)
        until = stop_at;
    if (until <= now)
        return 0;
    int64_t ms = (until - now + 999999) / 1000000;
    return ms > 3600000 ? 3600000 : (int)ms;
}

static int
wait_fd(core *c, short events)
{
    int ms = op_wait_ms(c);
    if (ms == 0) {
        snprintf(c->err, MSG, "timed out");
        return -1;
    }
    struct pollfd p = {c->fd, events, 0};
    for (;;) {
        int rc = poll(&p, 1, ms);
        if (rc > 0)
            return 0;
        if (rc == 0) {
            snprintf(c->err, MSG, "timed out");
            return -1;
        }
        if (errno != EINTR) {
            snprintf(c->err, MSG, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static int
open_conn(core *c)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(c->host, c->port, &hints, &res);
    if (rc != 0) {
        snprintf(c->err, MSG, "could not resolve %s: %s", c->host, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    snprintf(c->err, MSG, "no address for %s", c->host);
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        c->fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (c->fd < 0) {
            snprintf(c->err, MSG, "socket: %s", strerror(errno));
            continue;
        }
        if (connect(c->fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINTR || errno == EINPROGRESS) {
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            if (wait_fd(c, POLLOUT) == 0) {
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0) {
                    int one = 1;
                    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    freeaddrinfo(res);
                    pthread_mutex_lock(&c->mu);
                    c->connections++;
                    pthread_mutex_unlock(&c->mu);
                    return 0;
                }
                snprintf(c->err, MSG, "connect: %s", strerror(soerr ? soerr : errno));
            } else {
                snprintf(c->err, MSG, "connect: timed out");
            }
        } else {
            snprintf(c->err, MSG, "connect: %s", strerror(errno));
        }
        close_conn(c);
    }
    freeaddrinfo(res);
    return -1;
}

static int
send_all(core *c, const char *head, size_t hn, const unsigned char *body, size_t bn)
{
    struct iovec iov[2] = {{(void *)head, hn}, {(void *)body, bn}};
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    while (iov[0].iov_len + iov[1].iov_len > 0) {
        ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (wait_fd(c, POLLOUT) < 0)
                    return -1;
                continue;
            }
            snprintf(c->err, MSG, "send: %s", strerror(errno));
            return -1;
        }
        size_t sent = (size_t)n;
        for (int i = 0; i < 2 && sent > 0; i++) {
            size_t take = sent < iov[i].iov_len ? sent : iov[i].iov_len;
            iov[i].iov_base = (char *)iov[i].iov_base + take;
            iov[i].iov_len -= take;
            sent -= take;
        }
        if (iov[0].iov_len == 0) {   /* the head is out: the body alone */
            m.msg_iov = iov + 1;
            m.msg_iovlen = 1;
        }
    }
    return 0;
}

/* more bytes into the receive buffer (the consumed ones moved out first): 1, 0 at the end of the stream, -1 */
static int
fill(core *c)
{
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen == RBUF) {
        snprintf(c->err, MSG, "malformed response: a line too long");
        return -1;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            return 1;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(c, POLLIN) < 0)
                return -1;
            continue;
        }
        snprintf(c->err, MSG, "recv: %s", strerror(errno));
        return -1;
    }
}

/* one line, without its CRLF (or bare LF); *used counts it against the head's limit */
static int
read_line(core *c, char **line, size_t *len, size_t *used)
{
    for (;;) {
        char *start = c->rbuf + c->rpos, *nl = memchr(start, '\n', c->rlen - c->rpos);
        if (nl != NULL) {
            size_t n = (size_t)(nl - start);
            *used += n + 1;
            if (n + 1 > LINE_MAX_ || *used > HEAD_MAX) {
                snprintf(c->err, MSG, "malformed response: headers too long");
                return -1;
            }
            c->rpos += n + 1;
            if (n > 0 && start[n - 1] == '\r')
                n--;
            *line = start;
            *len = n;
            return 0;
        }
        if (c->rlen - c->rpos >= LINE_MAX_) {
            snprintf(c->err, MSG, "malformed response: a line too long");
            return -1;
        }
        int rc = fill(c);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            snprintf(c->err, MSG, "the connection closed before a full response");
            return -1;
        }
    }
}

/* read and drop `n` bytes of body (n < 0: until the end of the stream) */
static int
discard(core *c, long long n)
{
    long long total = 0;
    for (;;) {
        size_t have = c->rlen - c->rpos;
        size_t take = (n >= 0 && (long long)have > n - total) ? (size_t)(n - total) : have;
        c->rpos += take;
        total += (long long)take;
        if (n >= 0 && total == n)
            return 0;
        if (total > BODY_MAX) {
            snprintf(c->err, MSG, "malformed response: a body over %d bytes", BODY_MAX);
            return -1;
        }
        c->rpos = c->rlen = 0;
        int rc = fill(c);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            if (n < 0)
                return 0;
            snprintf(c->err, MSG, "the connection closed in the middle of a response body");
            return -1;
        }
    }
}

static int
is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
           || (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int
ieq(const char *a, size_t n, const char *b)
{
    return strlen(b) == n && strncasecmp(a, b, n) == 0;
}

/* the last comma-separated token of a header value, trimmed */
static void
last_token(const char *v, size_t n, const char **t, size_t *tn)
{
    size_t end = n;
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    size_t start = end;
    while (start > 0 && v[start - 1] != ',')
        start--;
    while (start < end && (v[start] == ' ' || v[start] == '\t'))
        start++;
    *t = v + start;
    *tn = end - start;
}

static int
has_token(const char *v, size_t n, const char *want)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (ieq(v + s, e - s, want))
            return 1;
    }
    return 0;
}

static int
read_chunked(core *c, size_t *used)
{
    long long total = 0;
    for (;;) {
        char *line;
        size_t n, i = 0;
        size_t line_used = 0;   /* chunk-size lines are bounded one by one, not against the head */
        if (read_line(c, &line, &n, &line_used) < 0)
            return -1;
        long long size = 0;
        while (i < n && isxdigit((unsigned char)line[i]) && size <= BODY_MAX) {
            char ch = line[i++];
            size = size * 16 + (ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
        }
        while (i < n && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (size > BODY_MAX) {
            snprintf(c->err, MSG, "malformed response: a body over %d bytes", BODY_MAX);
            return -1;
        }
        if (i == 0 || (i < n && line[i] != ';')) {
            snprintf(c->err, MSG, "malformed response: a bad chunk size");
            return -1;
        }
        total += size;
        if (total > BODY_MAX) {
            snprintf(c->err, MSG, "malformed response: a body over %d bytes", BODY_MAX);
            return -1;
        }
        if (size == 0) {   /* the trailers, to the blank line */
            for (;;) {
                if (read_line(c, &line, &n, used) < 0)
                    return -1;
                if (n == 0)
                    return 0;
            }
        }
        if (discard(c, size) < 0 || read_line(c, &line, &n, &line_used) < 0)
            return -1;
        if (n != 0) {
            snprintf(c->err, MSG, "malformed response: no CRLF after a chunk");
            return -1;
        }
    }
}

/* the response to the request just sent: its status, or -1 (c->err says why); *will_close when the
 * connection cannot be used again */
static int
read_response(core *c, int *will_close)
{
    for (int interim = 0;; interim++) {
        char *line;
        size_t n, used = 0;
        if (read_line(c, &line, &n, &used) < 0)
            return -1;
        /* HTTP/1.x SP 3DIGIT [SP reason] */
        if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') || line[8] != ' '
            || !isdigit((unsigned char)line[9]) || !isdigit((unsigned char)line[10])
            || !isdigit((unsigned char)line[11]) || (n > 12 && line[12] != ' ')) {
            snprintf(c->err, MSG, "malformed response: a bad status line");
            return -1;
        }
        int minor = line[7] - '0';
        int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
        long long length = -1;
        int te = 0, chunked = 0, close_it = 0, keep = 0, count = 0;
        for (;;) {
            if (read_line(c, &line, &n, &used) < 0)
                return -1;
            if (n == 0)
                break;
            if (++count > HEADERS_MAX) {
                snprintf(c->err, MSG, "malformed response: too many headers");
                return -1;
            }
            char *colon = memchr(line, ':', n);
            size_t nn = colon != NULL ? (size_t)(colon - line) : 0;
            for (size_t i = 0; i < nn; i++) {
                if (!is_tchar((unsigned char)line[i])) {
                    nn = 0;
                    break;
                }
            }
            if (nn == 0) {   /* no name, a bad name, or a folded line */
                snprintf(c->err, MSG, "malformed response: a bad header line");
                return -1;
            }
            const char *v = colon + 1;
            size_t vn = n - nn - 1;
            while (vn > 0 && (*v == ' ' || *v == '\t')) {
                v++;
                vn--;
            }
            while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
                vn--;
            if (ieq(line, nn, "content-length")) {
                long long x = 0;
                if (vn == 0 || vn > 15) {
                    snprintf(c->err, MSG, "malformed response: a bad Content-Length");
                    return -1;
                }
                for (size_t i = 0; i < vn; i++) {
                    if (!isdigit((unsigned char)v[i])) {
                        snprintf(c->err, MSG, "malformed response: a bad Content-Length");
                        return -1;
                    }
                    x = x * 10 + (v[i] - '0');
                }
                if (length >= 0 && length != x) {
                    snprintf(c->err, MSG, "malformed response: two Content-Lengths");
                    return -1;
                }
                length = x;
            } else if (ieq(line, nn, "transfer-encoding")) {
                const char *t;
                size_t tn;
                last_token(v, vn, &t, &tn);
                te = 1;
                chunked = ieq(t, tn, "chunked");
            } else if (ieq(line, nn, "connection")) {
                close_it |= has_token(v, vn, "close");
                keep |= has_token(v, vn, "keep-alive");
            }
        }
        if (status >= 100 && status < 200) {
            if (status == 101 || interim >= INTERIM_MAX) {
                snprintf(c->err, MSG, "malformed response: HTTP %d", status);
                return -1;
            }
            continue;   /* an interim response (100 Continue): no body, the final one follows */
        }
        *will_close = close_it || (minor == 0 && !keep);
        if (status == 204 || status == 304) {
            /* no body */
        } else if (te) {
            *will_close |= length >= 0;   /* both framings: this connection is not to be trusted further */
            if (chunked) {
                if (read_chunked(c, &used) < 0)
                    return -1;
            } else {
                if (discard(c, -1) < 0)
                    return -1;
                *will_close = 1;
            }
        } else if (length >= 0) {
            if (length > BODY_MAX) {
                snprintf(c->err, MSG, "malformed response: a body over %d bytes", BODY_MAX);
                return -1;
            }
            if (discard(c, length) < 0)
                return -1;
        } else {
            if (discard(c, -1) < 0)
                return -1;
            *will_close = 1;
        }
        if (c->rpos < c->rlen)   /* bytes nobody asked for: do not read the next response from them */
            *will_close = 1;
        return status;
    }
}

/* the connection is still there to reuse: nothing to read (a readable idle connection was closed by
 * the endpoint, or carries bytes nobody asked for) */
static int
idle_ok(core *c)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    int rc;
    do {
        rc = poll(&p, 1, 0);
    } while (rc < 0 && errno == EINTR);
    return rc == 0;
}

/* the wait between attempts: cut short only by a shutdown's deadline */
static void
backoff(core *c, int64_t ns)
{
    int64_t until = mono_ns() + ns;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int64_t stop_at = atomic_load(&c->stop_at), end = until;
        if (stop_at != 0 && stop_at < end)
            end = stop_at;
        if (mono_ns() >= end)
            break;
        struct timespec t;
        abs_time(&t, end);
        pthread_cond_timedwait(&c->wake, &c->mu, &t);
    }
    pthread_mutex_unlock(&c->mu);
}

/* POST one batch as an ExportTraceServiceRequest, as OtlpHttpExporter.post does: 429, 502, 503, 504
 * and connection errors tried three times (backoff_s, then twice that, apart: 0.5 s and 1 s from
 * tracing.py), a reused connection that fails
 * tried again at once. c->err: why it failed. */
static int
post_batch(core *c, batch *b)
{
    /* the envelope, written into the room in front of the spans */
    size_t spans_n = b->n - c->room;
    uint64_t scope_len = c->scope_n + spans_n;
    uint64_t res_len = c->res_n + 1 + varint_size(scope_len) + scope_len;
    size_t pre = 1 + varint_size(res_len) + c->res_n + 1 + varint_size(scope_len) + c->scope_n;
    unsigned char *body = b->p + c->room - pre, *q = body;
    *q++ = 0x0a;   /* ExportTraceServiceRequest.resource_spans */
    q = put_varint(q, res_len);
    memcpy(q, c->envelope, c->res_n);
    q += c->res_n;
    *q++ = 0x12;   /* ResourceSpans.scope_spans */
    q = put_varint(q, scope_len);
    memcpy(q, c->envelope + c->res_n, c->scope_n);
    size_t body_n = b->n - (c->room - pre);
    memcpy(c->reqhead, c->head, c->head_n);
    size_t hn = c->head_n + (size_t)snprintf(c->reqhead + c->head_n, 64, "Content-Length: %zu\r\n\r\n", body_n);

    char why[MSG] = "";
    for (int attempt = 0; attempt < 3; attempt++) {
        if (c->fd >= 0 && !idle_ok(c))
            close_conn(c);
        int reused = c->fd >= 0, will_close = 0, status = -1;
        if (op_wait_ms(c) == 0) {
            snprintf(c->err, MSG, "could not export traces to %s: no time left to shut down", c->display);
            return POST_FAILED;
        }
        if (c->fd >= 0 || open_conn(c) == 0) {
            pthread_mutex_lock(&c->mu);
            c->posts++;
            pthread_mutex_unlock(&c->mu);
            if (send_all(c, c->reqhead, hn, body, body_n) == 0)
                status = read_response(c, &will_close);
        }
        if (status >= 0) {
            if (will_close)
                close_conn(c);
            if (status >= 200 && status < 300)
                return POST_OK;
            if (status != 429 && status != 502 && status != 503 && status != 504) {
                snprintf(c->err, MSG, "the OTLP endpoint refused a batch of %zu bytes: HTTP %d", body_n, status);
                return POST_REFUSED;
            }
            snprintf(why, MSG, "HTTP %d", status);
        } else {
            close_conn(c);
            memcpy(why, c->err, MSG);
            if (reused && attempt == 0)   /* the endpoint closed the idle kept-alive connection: again, at once */
                continue;
        }
        if (attempt < 2)
            backoff(c, c->backoff_ns << attempt);
    }
    snprintf(c->err, MSG, "could not export traces to %s: %s", c->display, why);
    return POST_FAILED;
}

/* ------------------------------------------------------------------ the thread: the queue */

/* the open batch takes no more requests */
static void
close_open(core *c)
{
    if (c->last != NULL && c->open) {
        c->open = 0;
        c->closed++;
    }
}

static void
recycle(core *c, batch *b)
{
    if (c->nspare < SPARE_MAX && b->cap <= SPARE_BYTES) {
        b->next = c->spare;
        c->spare = b;
        c->nspare++;
    } else {
        batch_free(b);
    }
}

/* take the first (closed) batch, POST it without the mutex, count the outcome; under the mutex */
static int
export_first(core *c)
{
    batch *b = c->first;
    c->first = b->next;
    if (c->first == NULL)
        c->last = NULL;
    c->closed--;
    c->queued -= b->count;
    pthread_mutex_unlock(&c->mu);
    int rc = post_batch(c, b);
    pthread_mutex_lock(&c->mu);
    if (rc == POST_OK) {
        c->exported += b->count;
    } else {
        c->failed += b->count;
        snprintf(c->last_error, MSG, "%s", c->err);
        int64_t now = mono_ns();
        if (c->reported_at == 0 || now - c->reported_at >= WARN_EVERY_NS) {
            snprintf(c->report, sizeof(c->report), "%s (%llu requests' spans not exported so far)", c->err, c->failed);
            c->has_report = 1;
            c->reported_at = now;
        }
    }
    recycle(c, b);
    return rc == POST_OK;
}

static void *
run(void *arg)
{
    core *c = arg;
    pthread_mutex_lock(&c->mu);
    int64_t next = mono_ns() + c->delay_ns;
    while (!c->stop) {
        if (c->flush_req != c->flush_done) {   /* everything queued now; what comes meanwhile waits */
            uint64_t target = c->flush_req;
            close_open(c);
            int ok = 1;
            for (size_t n = c->closed; n > 0 && c->first != NULL && !c->stop; n--)
                ok &= export_first(c);
            if (c->stop)
                break;   /* the shutdown's export takes the rest, and ends the flush */
            c->flush_done = target;
            c->flush_ok = ok;
            pthread_cond_broadcast(&c->done);
            next = mono_ns() + c->delay_ns;
            continue;
        }
        int64_t now = mono_ns();
        if (c->closed > 0 || (now >= next && c->first != NULL)) {
            /* as _Batcher: the first batch, full or not (on the timer), then every full one */
            if (c->closed == 0)
                close_open(c);
            while (c->closed > 0 && !c->stop && c->flush_req == c->flush_done)
                export_first(c);
            next = mono_ns() + c->delay_ns;
            continue;
        }
        if (now >= next) {
            next = now + c->delay_ns;
            continue;
        }
        struct timespec t;
        abs_time(&t, next);
        pthread_cond_timedwait(&c->wake, &c->mu, &t);
    }
    /* stopped: export what is left until the deadline, then count the rest as failed */
    close_open(c);
    int ok = 1;
    while (c->first != NULL) {
        if (mono_ns() >= atomic_load(&c->stop_at)) {
            while (c->first != NULL) {
                batch *b = c->first;
                c->first = b->next;
                c->failed += b->count;
                c->queued -= b->count;
                batch_free(b);
            }
            c->last = NULL;
            c->closed = 0;
            snprintf(c->last_error, MSG, "could not export traces to %s: the shutdown's time ran out", c->display);
            ok = 0;
            break;
        }
        ok &= export_first(c);
    }
    if (c->flush_req != c->flush_done) {
        c->flush_done = c->flush_req;
        c->flush_ok = ok;
    }
    close_conn(c);
    c->running = 0;
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->mu);
    core_release(c);
    return NULL;
}

/* start the thread (with every signal blocked: they are the main thread's); 0, or an errno */
static int
start(core *c)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_fetch_add(&c->refs, 1);
    c->running = 1;
    int rc = pthread_create(&c->thread, NULL, run, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        c->running = 0;
        atomic_fetch_sub(&c->refs, 1);
    }
    return rc;
}

/* ------------------------------------------------------------------ the Python type */

static int
call_warn(Sender *self, const char *msg)
{
    if (self->warn == Py_None)
        return 0;
    PyObject *r = PyObject_CallFunction(self->warn, "s", msg);
    if (r == NULL) {
        PyErr_WriteUnraisable(self->warn);
        return 0;
    }
    Py_DECREF(r);
    return 0;
}

/* log a failure the thread noted (the GIL held, the mutex not) */
static void
report(Sender *self)
{
    core *c = self->c;
    char msg[sizeof(c->report)];
    int has;
    pthread_mutex_lock(&c->mu);
    has = c->has_report;
    if (has) {
        memcpy(msg, c->report, sizeof(msg));
        c->has_report = 0;
    }
    pthread_mutex_unlock(&c->mu);
    if (has)
        call_warn(self, msg);
}

static int
bad_text(const char *s, Py_ssize_t n, int allow_space)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 ? !(allow_space && ch == '\t') : (ch == 0x7f || (!allow_space && ch == ' ')))
            return 1;
    }
    return 0;
}

static int
append(char **p, size_t *n, size_t *cap, const char *s, size_t k)
{
    if (*n + k + 1 > *cap) {
        size_t nc = (*cap + k + 1) * 2;
        char *q = realloc(*p, nc);
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *p = q;
        *cap = nc;
    }
    memcpy(*p + *n, s, k);
    *n += k;
    (*p)[*n] = 0;
    return 0;
}

#define APPEND(s, k) if (append(&head, &hn, &hcap, (s), (k)) < 0) goto fail;

static int
Sender_init(Sender *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"host", "port", "path", "headers", "resource", "scope", "max_queue", "batch",
                             "delay_s", "timeout_s", "warn", "backoff_s", NULL};
    const char *host, *path;
    Py_ssize_t host_n, path_n, res_n, scope_n, max_queue = 2048, batch_size = 512;   /* the SDK's defaults */
    const char *res, *scope;
    int port;
    double delay_s = 5.0, timeout_s = 10.0, backoff_s = 0.5;
    PyObject *headers, *warn = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s#is#Oy#y#|$nnddOd:Sender", kwlist, &host, &host_n, &port, &path,
                                     &path_n, &headers, &res, &res_n, &scope, &scope_n, &max_queue, &batch_size,
                                     &delay_s, &timeout_s, &warn, &backoff_s))
        return -1;
    if (self->c != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sender is already initialised");
        return -1;
    }
    if (host_n == 0 || bad_text(host, host_n, 0) || memchr(host, '/', host_n) != NULL) {
        PyErr_SetString(PyExc_ValueError, "Sender: not a host name");
        return -1;
    }
    if (port < 1 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "Sender: port must be in 1-65535");
        return -1;
    }
    if (path_n == 0 || path[0] != '/' || bad_text(path, path_n, 0)) {
        PyErr_SetString(PyExc_ValueError, "Sender: the path must start with / and hold no space or control character");
        return -1;
    }
    if (max_queue < 1 || batch_size < 1 || !(delay_s >= 0 && delay_s < 1e6) || !(timeout_s > 0 && timeout_s < 1e6)
        || !(backoff_s >= 0 && backoff_s < 1e3)) {
        PyErr_SetString(PyExc_ValueError,
                        "Sender: max_queue and batch must be positive, delay_s, timeout_s and backoff_s in range");
        return -1;
    }
    if (warn != Py_None && !PyCallable_Check(warn)) {
        PyErr_SetString(PyExc_TypeError, "Sender: warn must be callable or None");
        return -1;
    }
    char *head = NULL;
    size_t hn = 0, hcap = 0;
    char num[32];
    core *c = NULL;
    PyObject *seq = PySequence_Fast(headers, "Sender: headers must be a sequence of (name, value) pairs");
    if (seq == NULL)
        return -1;
    APPEND("POST ", 5)
    APPEND(path, (size_t)path_n)
    APPEND(" HTTP/1.1\r\n", 11)
    int own_host = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "Sender: headers must be (str, str) pairs");
            goto fail;
        }
        Py_ssize_t nn, vn;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &nn);
        if (name == NULL)
            goto fail;
        const char *value = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 1), &vn);
        if (value == NULL)
            goto fail;
        int ok = nn > 0;
        for (Py_ssize_t k = 0; k < nn && ok; k++)
            ok = is_tchar((unsigned char)name[k]);
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "OTLP header %R: not a valid header name", PyTuple_GET_ITEM(pair, 0));
            goto fail;
        }
        if (bad_text(value, vn, 1)) {   /* the value may be a secret: never in the message */
            PyErr_Format(PyExc_ValueError, "OTLP header %R: its value holds CR, LF or another control character",
                         PyTuple_GET_ITEM(pair, 0));
            goto fail;
        }
        if (ieq(name, (size_t)nn, "content-length") || ieq(name, (size_t)nn, "transfer-encoding"))
            continue;   /* the framing is this sender's */
        own_host |= ieq(name, (size_t)nn, "host");
        APPEND(name, (size_t)nn)
        APPEND(": ", 2)
        APPEND(value, (size_t)vn)
        APPEND("\r\n", 2)
    }
    if (!own_host) {   /* as http.client writes it: the port only when not 80, an IPv6 address in brackets */
        int v6 = memchr(host, ':', host_n) != NULL;
        APPEND("Host: ", 6)
        if (v6)
            APPEND("[", 1)
        APPEND(host, (size_t)host_n)
        if (v6)
            APPEND("]", 1)
        if (port != 80) {
            int k = snprintf(num, sizeof(num), ":%d", port);
            APPEND(num, (size_t)k)
        }
        APPEND("\r\n", 2)
    }
    c = core_new(NULL);
    if (c == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    snprintf(num, sizeof(num), "%d", port);
    const char *q = memchr(path, '?', path_n);   /* never the query in a message: it may hold a token */
    size_t shown = q != NULL ? (size_t)(q - path) : (size_t)path_n;
    size_t dn = host_n + shown + 48;
    c->display = malloc(dn);
    c->host = dup_bytes(host, (size_t)host_n);
    c->port = dup_bytes(num, strlen(num));
    c->envelope = malloc((size_t)(res_n + scope_n) + 1);
    c->reqhead = malloc(hn + 64);
    if (c->display == NULL || c->host == NULL || c->port == NULL || c->envelope == NULL || c->reqhead == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    int v6 = memchr(host, ':', host_n) != NULL;
    snprintf(c->display, dn, "http://%s%.*s%s:%d%.*s", v6 ? "[" : "", (int)host_n, host, v6 ? "]" : "", port,
             (int)shown, path);
    memcpy(c->envelope, res, (size_t)res_n);
    memcpy(c->envelope + res_n, scope, (size_t)scope_n);
    c->res_n = (size_t)res_n;
    c->scope_n = (size_t)scope_n;
    c->room = 1 + 10 + c->res_n + 1 + 10 + c->scope_n;
    c->head = head;
    c->head_n = hn;
    head = NULL;
    c->max_queue = (size_t)max_queue;
    c->batch_size = (size_t)(batch_size < max_queue ? batch_size : max_queue);
    c->delay_ns = delay_s > 0.001 ? (int64_t)(delay_s * NS) : NS / 1000;   /* never a busy loop */
    c->timeout_ns = (int64_t)(timeout_s * NS);
    c->backoff_ns = (int64_t)(backoff_s * NS);
    int rc = start(c);
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "Sender: could not start the export thread: %s", strerror(rc));
        goto fail;
    }
    Py_DECREF(seq);
    self->c = c;
    self->thread_live = 1;
    Py_INCREF(warn);
    Py_XSETREF(self->warn, warn);
    return 0;
fail:
    Py_DECREF(seq);
    free(head);
    if (c != NULL)
        core_free(c);
    return -1;
}

static PyObject *
Sender_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->warn = Py_NewRef(Py_None);
    }
    return (PyObject *)self;
}

/* add(spans: bytes): queue one request's encoded spans; never blocks, never releases the GIL */
static PyObject *
Sender_add(Sender *self, PyObject *spans)
{
    core *c = self->c;
    if (c == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sender is not initialised");
        return NULL;
    }
    if (!PyBytes_Check(spans)) {
        PyErr_SetString(PyExc_TypeError, "add(spans: bytes)");
        return NULL;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(spans);
    char msg[MSG];
    int warn = 0, has_report;
    pthread_mutex_lock(&c->mu);
    if (c->stop || c->queued >= c->max_queue || !c->running) {
        c->dropped++;
        if (!c->stop && c->running) {
            int64_t now = mono_ns();
            if (c->drop_warned_at == 0 || now - c->drop_warned_at >= WARN_EVERY_NS) {
                c->drop_warned_at = now;
                warn = 1;
                snprintf(msg, MSG, "the trace export queue is full (%zu requests): dropping spans (%llu so far); "
                         "raise OTEL_BSP_MAX_QUEUE_SIZE or check the collector", c->max_queue, c->dropped);
            }
        }
        pthread_mutex_unlock(&c->mu);
        if (warn)
            call_warn(self, msg);
        Py_RETURN_NONE;
    }
    batch *b = c->open ? c->last : NULL;
    if (b == NULL || b->n + n > b->cap) {
        if (b == NULL) {   /* a new batch: a spare buffer, else a new one the size of the last batch */
            b = c->spare;
            if (b != NULL) {
                c->spare = b->next;
                c->nspare--;
            } else {
                b = calloc(1, sizeof(batch));
            }
            if (b != NULL) {
                b->next = NULL;
                b->n = c->room;
                b->count = 0;
            }
        }
        size_t want = b != NULL ? b->n + n : 0;
        if (b != NULL && want > b->cap) {
            size_t cap = b->cap ? b->cap : c->room + (c->hint ? c->hint + c->hint / 8 : 65536);
            while (cap < want)
                cap *= 2;
            unsigned char *p = realloc(b->p, cap);
            if (p == NULL) {
                if (b != c->last)
                    batch_free(b);
                b = NULL;
            } else {
                b->p = p;
                b->cap = cap;
            }
        }
        if (b == NULL) {   /* out of memory: dropped, as when the queue is full (never an error on a request) */
            c->dropped++;
            pthread_mutex_unlock(&c->mu);
            Py_RETURN_NONE;
        }
        if (b != c->last || !c->open) {
            if (c->last != NULL)
                c->last->next = b;
            else
                c->first = b;
            c->last = b;
            c->open = 1;
        }
    }
    memcpy(b->p + b->n, PyBytes_AS_STRING(spans), n);
    b->n += n;
    b->count++;
    c->queued++;
    if (b->count >= c->batch_size) {   /* full: the thread is woken once per batch */
        c->open = 0;
        c->closed++;
        c->hint = b->n - c->room;
        pthread_cond_signal(&c->wake);
    }
    has_report = c->has_report;
    pthread_mutex_unlock(&c->mu);
    if (has_report)
        report(self);
    Py_RETURN_NONE;
}

static double
seconds(PyObject *o, double fallback)
{
    if (o == NULL || o == Py_None)
        return fallback;
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred())
        return -1.0;
    return s;
}

/* flush(timeout_s=30.0) -> bool: everything queued now exported (True), or not all of it in time */
static PyObject *
Sender_flush(Sender *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout_s", NULL};
    PyObject *t = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:flush", kwlist, &t))
        return NULL;
    double timeout = seconds(t, 30.0);
    if (timeout < 0 && PyErr_Occurred())
        return NULL;
    core *c = self->c;
    if (c == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sender is not initialised");
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    int64_t until = mono_ns() + (int64_t)((timeout > 0 ? (timeout < 1e6 ? timeout : 1e6) : 0) * NS);
    pthread_mutex_lock(&c->mu);
    if (!c->running) {
        ok = c->queued == 0;
    } else {
        uint64_t mine = ++c->flush_req;
        pthread_cond_signal(&c->wake);
        while (c->running && c->flush_done < mine && mono_ns() < until) {
            struct timespec ts;
            abs_time(&ts, until);
            pthread_cond_timedwait(&c->done, &c->mu, &ts);
        }
        ok = c->flush_done >= mine && c->flush_ok;
    }
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    report(self);
    return PyBool_FromLong(ok);
}

/* the thread is done with (or left to) its export: join it, or let it end on its own */
static void
let_go(Sender *self, int ended)
{
    if (self->thread_live) {
        if (ended)
            pthread_join(self->c->thread, NULL);
        else
            pthread_detach(self->c->thread);
        self->thread_live = 0;
    }
}

/* shutdown(timeout_s=30.0): export what is left within the timeout, stop the thread */
static PyObject *
Sender_shutdown(Sender *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout_s", NULL};
    PyObject *t = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:shutdown", kwlist, &t))
        return NULL;
    double timeout = seconds(t, 30.0);
    if (timeout < 0 && PyErr_Occurred())
        return NULL;
    core *c = self->c;
    if (c == NULL || self->stopping)
        Py_RETURN_NONE;
    self->stopping = 1;
    int ended;
    Py_BEGIN_ALLOW_THREADS
    int64_t now = mono_ns(), wait = (int64_t)((timeout > 0 ? (timeout < 1e6 ? timeout : 1e6) : 0) * NS);
    pthread_mutex_lock(&c->mu);
    if (!c->stop) {
        atomic_store(&c->stop_at, now + wait);
        c->stop = 1;
        pthread_cond_broadcast(&c->wake);
    }
    int64_t until = atomic_load(&c->stop_at) + NS;   /* a second's grace to close the socket and end */
    while (c->running && mono_ns() < until) {
        struct timespec ts;
        abs_time(&ts, until);
        pthread_cond_timedwait(&c->done, &c->mu, &ts);
    }
    ended = !c->running;
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    let_go(self, ended);
    report(self);
    Py_RETURN_NONE;
}

/* after_fork(): in a forked child, a new queue, mutex and thread. The parent's core is left as it
 * is (its mutex may have been held by its thread, which the child does not have): its memory is
 * the parent's queue, copied on write, and not freed here. */
static PyObject *
Sender_after_fork(Sender *self, PyObject *unused)
{
    core *old = self->c;
    if (old == NULL)
        Py_RETURN_NONE;
    core *c = core_new(old);
    if (c == NULL)
        return PyErr_NoMemory();
    if (old->fd >= 0)
        close(old->fd);   /* the parent's connection: not this process's to use */
    self->c = c;
    self->thread_live = 0;
    if (old->stop || self->stopping) {
        c->stop = 1;
        atomic_store(&c->stop_at, 1);
        Py_RETURN_NONE;
    }
    int rc = start(c);
    if (rc != 0) {
        c->stop = 1;
        PyErr_Format(PyExc_RuntimeError, "Sender: could not start the export thread: %s", strerror(rc));
        return NULL;
    }
    self->thread_live = 1;
    Py_RETURN_NONE;
}

static int
Sender_traverse(Sender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->warn);
    return 0;
}

static int
Sender_clear(Sender *self)
{
    Py_CLEAR(self->warn);
    return 0;
}

/* collected without a shutdown: the thread exports what is left (within the exporter's timeout) on
 * its own and frees the core; nothing here waits */
static void
Sender_dealloc(Sender *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    core *c = self->c;
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        if (!c->stop) {
            atomic_store(&c->stop_at, mono_ns() + c->timeout_ns);
            c->stop = 1;
            pthread_cond_broadcast(&c->wake);
        }
        pthread_mutex_unlock(&c->mu);
        let_go(self, 0);
        core_release(c);
        self->c = NULL;
    }
    Sender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define COUNTER(field)                                                         \
    static PyObject *Sender_get_##field(Sender *self, void *closure)           \
    {                                                                          \
        core *c = self->c;                                                     \
        if (c == NULL)                                                         \
            return PyLong_FromLong(0);                                         \
        pthread_mutex_lock(&c->mu);                                            \
        unsigned long long v = c->field;                                       \
        pthread_mutex_unlock(&c->mu);                                          \
        return PyLong_FromUnsignedLongLong(v);                                 \
    }
COUNTER(dropped)
COUNTER(failed)
COUNTER(exported)
COUNTER(posts)
COUNTER(connections)
COUNTER(queued)

static PyObject *
Sender_get_last_error(Sender *self, void *closure)
{
    core *c = self->c;
    char msg[MSG] = "";
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        memcpy(msg, c->last_error, MSG);
        pthread_mutex_unlock(&c->mu);
    }
    if (msg[0] == 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strnlen(msg, MSG), "replace");
}

static PyObject *
Sender_get_setting(Sender *self, void *which)
{
    core *c = self->c;
    if (c == NULL)
        Py_RETURN_NONE;
    switch ((int)(intptr_t)which) {
    case 0:
        return PyLong_FromSize_t(c->max_queue);
    case 1:
        return PyLong_FromSize_t(c->batch_size);
    case 2:
        return PyFloat_FromDouble((double)c->delay_ns / NS);
    default:
        return PyFloat_FromDouble((double)c->timeout_ns / NS);
    }
}

static PyGetSetDef Sender_getset[] = {
    {"dropped", (getter)Sender_get_dropped, NULL, "requests dropped: the queue was full, or the sender stopped", NULL},
    {"failed", (getter)Sender_get_failed, NULL, "requests whose spans could not be exported (after the retries)", NULL},
    {"exported", (getter)Sender_get_exported, NULL, "requests whose spans the endpoint took", NULL},
    {"posts", (getter)Sender_get_posts, NULL, "POSTs sent (every attempt)", NULL},
    {"connections", (getter)Sender_get_connections, NULL, "connections opened", NULL},
    {"queued", (getter)Sender_get_queued, NULL, "requests waiting to be exported", NULL},
    {"last_error", (getter)Sender_get_last_error, NULL, "why the last failed export failed, or None", NULL},
    {"max_queue", (getter)Sender_get_setting, NULL, "OTEL_BSP_MAX_QUEUE_SIZE", (void *)0},
    {"batch", (getter)Sender_get_setting, NULL, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", (void *)1},
    {"delay_s", (getter)Sender_get_setting, NULL, "OTEL_BSP_SCHEDULE_DELAY, in seconds", (void *)2},
    {"timeout_s", (getter)Sender_get_setting, NULL, "each socket operation's timeout", (void *)3},
    {NULL},
};

static PyMethodDef Sender_methods[] = {
    {"add", (PyCFunction)Sender_add, METH_O, "Queue one request's encoded spans (never blocks; drops when full)."},
    {"flush", (PyCFunction)(void (*)(void))Sender_flush, METH_VARARGS | METH_KEYWORDS,
     "Export everything queued now; True when all of it was taken in time (the GIL released while waiting)."},
    {"shutdown", (PyCFunction)(void (*)(void))Sender_shutdown, METH_VARARGS | METH_KEYWORDS,
     "Export what is left within the timeout, then stop the thread."},
    {"after_fork", (PyCFunction)Sender_after_fork, METH_NOARGS, "In a forked child: a new queue and thread."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "router.metering._otlp.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Sender(host, port, path, headers, resource, scope, *, max_queue=2048, batch=512, delay_s=5.0,\n"
              "timeout_s=10.0, warn=None, backoff_s=0.5): "
              "the OTLP/HTTP export queue and its thread, off the GIL (see _otlp_sender.c).",
    .tp_new = Sender_new,
    .tp_init = (initproc)Sender_init,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_traverse = (traverseproc)Sender_traverse,
    .tp_clear = (inquiry)Sender_clear,
    .tp_methods = Sender_methods,
    .tp_getset = Sender_getset,
    .tp_weaklistoffset = offsetof(Sender, weakrefs),
};

int
otlp_add_sender(PyObject *module)
{
    if (PyType_Ready(&SenderType) < 0)
        return -1;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(module, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        return -1;
    }
    return 0;
}

#endif
