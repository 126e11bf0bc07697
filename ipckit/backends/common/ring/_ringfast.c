/* Hot paths of the shm ring (ipckit/backends/common/ring/buffer.py) in C: one whole-record send
 * and one whole-record receive per call.
 *
 * buffer.py holds the algorithm and every slow path; this module only replaces the two
 * per-message fast paths that dominate small-message streaming, where Python spends most of
 * its time on attribute loads and struct calls.  cursor.py has the same two cursors in pure
 * Python (used when this extension is not built, or with IPCKIT_PURE_PYTHON=1); the test suite
 * checks both against the same segment images.
 *
 * Layout and wake-up protocol: protocol.py defines them for Python; RING_LAYOUT below is this
 * module's one copy of the layout, exported as _ringfast.LAYOUT, which cursor.py requires to equal
 * protocol.LAYOUT before it uses this module (tests/ring/test_layout.py names any difference).
 * The poster's half of the wake-up protocol is publish_write_pos / publish_read_pos.
 *
 * Contract of both cursors (see cursor.py for the reference implementation):
 *   (send_held / recv_held: the same for a caller that holds the channel's lock itself.)
 *   Writer.send(data) -> bool   True: one MSG record committed.  False: nothing written (no room
 *                               without padding, too large, a message pending, budget spent, the
 *                               lock held by another thread, detached) -- or the record was
 *                               committed but the reader has closed; the caller's general path
 *                               reports why.
 *   Reader.recv() -> bytes|None the next message if it is one whole MSG record; None otherwise
 *                               (nothing committed, padding, a streamed message, corruption, a
 *                               held message, the lock held, detached); nothing is consumed then.
 *
 * Thread safety: every method runs with the GIL held and runs no Python code between its lock
 * check and its commit/publish store (the payload's buffer is exported before the check; the lock
 * must be a threading.Lock, whose locked() is C), so "the channel's lock is not held" means no
 * other thread is inside the channel's slow path for this direction for the whole call.  The
 * module therefore does not declare free-threading support (the interpreter keeps the GIL on).
 *
 * Untrusted memory: the peer can write any value into the segment at any time.  Every word is
 * loaded exactly once into a local, bounds-checked, and only then used; payload copies are
 * bounded by checked lengths inside the data area, whatever the cursor's own fields say (they
 * are settable from Python: counters >= 2**63 or unaligned ones make the fast path decline).  Counter stores are release stores and counter
 * loads acquire loads (on x86 plain moves; the compiler may not reorder around them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "structmember.h"

/* The ring's layout: the one C definition of every offset, size and record kind (names and
 * values as in protocol.py; X(NAME, value) becomes the constant RING_NAME below and the entry
 * "NAME" of _ringfast.LAYOUT).
 * COUNTER_MAX: counters at or above it are refused by the fast paths (the general path handles
 * them), so no sum of a counter and a record size can wrap; 2**63 bytes is ~9 years at 30 GB/s. */
#define RING_LAYOUT(X)                         \
    X(MAGIC, 0x31474E524B435049ULL)            \
    X(VERSION, 2)                              \
    X(CONTROL_SIZE, 224)                       \
    X(ALIGN, 64)                               \
    X(HEADER_SIZE, 16)                         \
    X(MIN_CAPACITY, 256)                       \
    X(MAX_CAPACITY, 1ULL << 31)                \
    X(COUNTER_MAX, 1ULL << 63)                 \
    X(MSG, 1)                                  \
    X(CONT, 2)                                 \
    X(PAD, 3)                                  \
    X(ABORT, 4)                                \
    X(W_MAGIC, 0)                              \
    X(W_VERSION, 1)                            \
    X(W_CAPACITY, 2)                           \
    X(W_MAXMSG, 3)                             \
    X(W_RSLEEP, 4)                             \
    X(W_RCLOSED, 5)                            \
    X(W_WSLEEP, 6)                             \
    X(W_WCLOSED, 7)                            \
    X(W_WPOS, 8)                               \
    X(W_RPOS, 16)

#define DEFINE_CONSTANT(name, value) static const unsigned long long RING_##name = (value);
RING_LAYOUT(DEFINE_CONSTANT)
#undef DEFINE_CONSTANT

/* Derived: a record of n payload bytes takes (n + RECORD_ROUND) & ~ALIGN_MASK bytes. */
#define ALIGN_MASK (RING_ALIGN - 1)
#define RECORD_ROUND (RING_HEADER_SIZE + RING_ALIGN - 1)

static PyObject *ProtocolError = NULL;
static PyObject *LockType = NULL; /* _thread.LockType: the only lock accepted (its locked() is C) */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

typedef struct {
    PyObject_HEAD
    Py_buffer view;      /* export of the mapping, held until detach() */
    int attached;
    char *data;          /* the ring's data area */
    uint64_t *ctl;       /* the ring's control words */
    unsigned long long cap;
    unsigned long long maxmsg;  /* <= LLONG_MAX */
    unsigned long long own;   /* writer: write_pos; reader: read_pos (private, published) */
    unsigned long long peer;  /* writer: last read_pos seen; reader: last write_pos seen */
    unsigned long long limit; /* writer: a record ending at or below this fits without a reload */
    long long fast_max;       /* writer: largest message for send(); -1 while one is pending */
    long long budget;         /* writer: sends left before the caller wants its general path */
    int hold;                 /* reader: a message is held (peek) or being reassembled */
    PyObject *lock;           /* the channel's lock for this direction, or None */
    PyObject *locked;         /* its bound .locked, or None */
    PyObject *wake;           /* callable posting the peer's wake-up hint, or None */
} Cursor;

static int
cursor_init(Cursor *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "offset", "capacity", "max_message_size", NULL};
    PyObject *buf;
    Py_ssize_t offset;
    unsigned long long cap;
    long long maxmsg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKL", kwlist, &buf, &offset, &cap, &maxmsg))
        return -1;
    if (maxmsg < 0) {
        PyErr_SetString(PyExc_ValueError, "max_message_size must be >= 0");
        return -1;
    }
    if (self->attached) {
        PyErr_SetString(PyExc_RuntimeError, "cursor already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    Py_ssize_t len = self->view.len;
    if (offset < 0 || ((unsigned long long)offset & ALIGN_MASK) || cap < RING_MIN_CAPACITY || (cap & ALIGN_MASK) ||
        cap > RING_MAX_CAPACITY ||
        (unsigned long long)len < (unsigned long long)offset + RING_CONTROL_SIZE + cap ||
        ((uintptr_t)self->view.buf + (uintptr_t)offset) % 8) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "bad ring region for this buffer");
        return -1;
    }
    self->attached = 1;
    self->ctl = (uint64_t *)((char *)self->view.buf + offset);
    self->data = (char *)self->view.buf + offset + RING_CONTROL_SIZE;
    self->cap = cap;
    self->maxmsg = (unsigned long long)maxmsg;
    self->own = self->peer = self->limit = 0;
    self->fast_max = maxmsg;
    self->budget = (long long)1 << 62;
    self->hold = 0;
    Py_INCREF(Py_None);
    Py_XSETREF(self->lock, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(self->locked, Py_None);
    Py_INCREF(Py_None);
    Py_XSETREF(self->wake, Py_None);
    return 0;
}

static void
cursor_release(Cursor *self)
{
    if (self->attached) {
        self->attached = 0;
        self->ctl = NULL;
        self->data = NULL;
        PyBuffer_Release(&self->view);
    }
}

static int
cursor_traverse(Cursor *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    Py_VISIT(self->locked);
    Py_VISIT(self->wake);
    if (self->attached)
        Py_VISIT(self->view.obj);
    return 0;
}

static int
cursor_clear(Cursor *self)
{
    cursor_release(self);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->locked);
    Py_CLEAR(self->wake);
    return 0;
}

static void
cursor_dealloc(Cursor *self)
{
    PyObject_GC_UnTrack(self);
    cursor_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
cursor_detach(Cursor *self, PyObject *Py_UNUSED(ignored))
{
    cursor_release(self);
    Py_RETURN_NONE;
}

/* 1 when another thread holds the channel's lock for this direction, 0 if not, -1 on error. */
static int
lock_busy(Cursor *self)
{
    if (self->locked == NULL || self->locked == Py_None)
        return 0;
    PyObject *r = PyObject_CallNoArgs(self->locked);
    if (r == NULL)
        return -1;
    int busy = PyObject_IsTrue(r);
    Py_DECREF(r);
    return busy;
}

static int
call_wake(Cursor *self)
{
    if (self->wake == NULL || self->wake == Py_None)
        return 0;
    PyObject *r = PyObject_CallNoArgs(self->wake);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- the poster's half of the wake-up protocol (protocol.py: publish_write_pos/publish_read_pos) */

/* Writer: publish wp (the publication store: the record before it is visible first), then load
 * reader_sleeping once and post a sleeping reader.  1: published; 0: published, but the reader
 * has closed (a closing reader raises its sleeping flag too); -1: the wake-up raised. */
static inline int
publish_write_pos(Cursor *self, unsigned long long wp)
{
    STORE(&self->ctl[RING_W_WPOS], (uint64_t)wp);
    if (LOAD_RELAXED(&self->ctl[RING_W_RSLEEP])) {
        if (LOAD_RELAXED(&self->ctl[RING_W_RCLOSED]))
            return 0;
        if (call_wake(self) < 0)
            return -1;
    }
    return 1;
}

/* Reader: publish rp (the space before it is free again), then post a sleeping writer.
 * 0: published; -1: the wake-up raised. */
static inline int
publish_read_pos(Cursor *self, unsigned long long rp)
{
    STORE(&self->ctl[RING_W_RPOS], (uint64_t)rp);
    if (LOAD_RELAXED(&self->ctl[RING_W_WSLEEP]))
        return call_wake(self);
    return 0;
}

/* ---- Writer ------------------------------------------------------------------------------- */

/* The payload of *data*: bytes directly, else a C-contiguous buffer export (*pb*, to release).
 * 0: got it; 1: not a usable buffer (the general path explains); -1 never (errors are cleared). */
static int
get_payload(PyObject *data, Py_buffer *pb, int *have_pb, const char **src, unsigned long long *n)
{
    if (PyBytes_CheckExact(data)) {
        *src = PyBytes_AS_STRING(data);
        *n = (unsigned long long)PyBytes_GET_SIZE(data);
        return 0;
    }
    if (PyObject_GetBuffer(data, pb, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 1;
    }
    *have_pb = 1;
    *src = pb->buf;
    *n = (unsigned long long)pb->len;
    return 0;
}

/* Commit one MSG record of n bytes from src.  Runs no Python code before the publication store
 * (the lock argument in the module comment depends on it); the wake-up call comes last. */
static PyObject *
writer_commit(Cursor *self, const char *src, unsigned long long n)
{
    if (!self->attached || self->budget <= 0 || self->fast_max < 0 || n > (unsigned long long)self->fast_max)
        return Py_NewRef(Py_False);
    const unsigned long long cap = self->cap;
    const unsigned long long wp = self->own;
    if (n > cap || wp >= RING_COUNTER_MAX || (wp & ALIGN_MASK))
        return Py_NewRef(Py_False);
    const unsigned long long size = (n + RECORD_ROUND) & ~ALIGN_MASK;
    const unsigned long long pos = wp % cap;
    const unsigned long long end = wp + size; /* no wrap: wp < 2**63, size <= 2**31 + 64 */
    if (end > self->limit) {
        /* Reload the reader's counter (untrusted) and recompute the bound, as buffer.py's _room_for. */
        const unsigned long long rp = LOAD(&self->ctl[RING_W_RPOS]);
        if (rp > wp || wp - rp > cap || (rp & ALIGN_MASK) || rp < self->peer) {
            PyErr_Format(ProtocolError, "corrupt read counter %llu (write %llu, capacity %llu)", rp, wp, cap);
            return NULL;
        }
        self->peer = rp;
        const unsigned long long a = wp - pos + cap, b = rp + cap;
        self->limit = a < b ? a : b;
        if (end > self->limit)
            return Py_NewRef(Py_False);
    }
    if (size > cap - pos) /* records never wrap; also keeps every store inside the data area */
        return Py_NewRef(Py_False);
    char *rec = self->data + pos;
    /* Payload first (memmove: a source inside the ring itself stays intact), then the header. */
    if (n)
        memmove(rec + RING_HEADER_SIZE, src, (size_t)n);
    /* The header's two words: kind | chunk << 32, total. */
    const uint64_t w0 = RING_MSG | (n << 32), w1 = n;
    memcpy(rec, &w0, sizeof w0);
    memcpy(rec + sizeof w0, &w1, sizeof w1);
    self->own = end;
    self->budget--;
    const int published = publish_write_pos(self, end);
    if (published < 0)
        return NULL;
    /* 0: committed into a ring nobody reads; the caller reports it. */
    return Py_NewRef(published ? Py_True : Py_False);
}

/* send (check_lock) / send_held.  The buffer is exported before anything else: on Python 3.12+ an
 * exporter may run Python code (__buffer__), which could switch threads or detach this cursor. */
static PyObject *
writer_send_impl(Cursor *self, PyObject *data, int check_lock)
{
    Py_buffer pb;
    int have_pb = 0;
    const char *src = NULL;
    unsigned long long n = 0;
    if (get_payload(data, &pb, &have_pb, &src, &n))
        Py_RETURN_FALSE;
    PyObject *result;
    int busy = check_lock ? lock_busy(self) : 0;
    if (busy)
        result = busy < 0 ? NULL : Py_NewRef(Py_False);
    else
        result = writer_commit(self, src, n);
    if (have_pb)
        PyBuffer_Release(&pb);
    return result;
}

static PyObject *
writer_send(Cursor *self, PyObject *data)
{
    return writer_send_impl(self, data, 1);
}

static PyObject *
writer_send_held(Cursor *self, PyObject *data)
{
    return writer_send_impl(self, data, 0);
}

/* ---- Reader ------------------------------------------------------------------------------- */

static PyObject *
reader_recv_held(Cursor *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->attached || self->hold)
        Py_RETURN_NONE;

    const unsigned long long cap = self->cap;
    const unsigned long long rp = self->own;
    unsigned long long wp = self->peer;
    if (rp & ALIGN_MASK)
        Py_RETURN_NONE; /* never so from buffer.py; keeps the header read inside the data area */
    if (wp <= rp) {
        wp = LOAD(&self->ctl[RING_W_WPOS]);
        if (wp == rp || wp < rp || wp - rp > cap || (wp & ALIGN_MASK))
            Py_RETURN_NONE; /* empty, or corrupt: the general path raises */
        self->peer = wp;
    }
    const unsigned long long pos = rp % cap;
    const char *rec = self->data + pos;
    /* One load per header word (the peer may rewrite it): checked values are never re-read. */
    const uint64_t w0 = LOAD_RELAXED((const uint64_t *)rec);
    const uint64_t w1 = LOAD_RELAXED((const uint64_t *)(rec + sizeof w0));
    const unsigned long long n = w1;
    if ((w0 & 0xFFFFFFFFULL) != RING_MSG || (w0 >> 32) != n || n > self->maxmsg || n > cap)
        Py_RETURN_NONE;
    const unsigned long long size = (n + RECORD_ROUND) & ~ALIGN_MASK;
    if (size > wp - rp || size > cap - pos)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(rec + RING_HEADER_SIZE, (Py_ssize_t)n);
    if (out == NULL)
        return NULL;
    self->own = rp + size;
    if (publish_read_pos(self, rp + size) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *
reader_recv(Cursor *self, PyObject *Py_UNUSED(ignored))
{
    int busy = lock_busy(self);
    if (busy)
        return busy < 0 ? NULL : Py_NewRef(Py_None);
    return reader_recv_held(self, NULL);
}

/* ---- types -------------------------------------------------------------------------------- */

static PyMemberDef cursor_members[] = {
    {"capacity", T_ULONGLONG, offsetof(Cursor, cap), READONLY, "ring capacity in bytes"},
    {"max_message_size", T_ULONGLONG, offsetof(Cursor, maxmsg), READONLY, "receive/send limit"},
    {"wake", T_OBJECT_EX, offsetof(Cursor, wake), 0, "the peer's wake-up callable, or None"},
    {NULL}
};

static PyObject *
cursor_get_attached(Cursor *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->attached);
}

/* Validated state setters (structmember's would store a wrapped value before reporting an error). */
static int
set_u64(unsigned long long *field, PyObject *value)
{
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, value == NULL ? "cannot delete a ring cursor counter" : "an int is required");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *field = v;
    return 0;
}

static int
set_i64(long long *field, PyObject *value, long long min)
{
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, value == NULL ? "cannot delete a ring cursor field" : "an int is required");
        return -1;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < min) {
        PyErr_Format(PyExc_OverflowError, "must be >= %lld", min);
        return -1;
    }
    *field = v;
    return 0;
}

static PyObject *get_own(Cursor *self, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLongLong(self->own); }
static PyObject *get_peer(Cursor *self, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLongLong(self->peer); }
static PyObject *get_limit(Cursor *self, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLongLong(self->limit); }
static PyObject *get_fast_max(Cursor *self, void *Py_UNUSED(c)) { return PyLong_FromLongLong(self->fast_max); }
static PyObject *get_budget(Cursor *self, void *Py_UNUSED(c)) { return PyLong_FromLongLong(self->budget); }
static PyObject *get_hold(Cursor *self, void *Py_UNUSED(c)) { return PyBool_FromLong(self->hold); }
static int set_own(Cursor *self, PyObject *v, void *Py_UNUSED(c)) { return set_u64(&self->own, v); }
static int set_peer(Cursor *self, PyObject *v, void *Py_UNUSED(c)) { return set_u64(&self->peer, v); }
static int set_limit(Cursor *self, PyObject *v, void *Py_UNUSED(c)) { return set_u64(&self->limit, v); }
static int set_fast_max(Cursor *self, PyObject *v, void *Py_UNUSED(c)) { return set_i64(&self->fast_max, v, -1); }
static int set_budget(Cursor *self, PyObject *v, void *Py_UNUSED(c)) { return set_i64(&self->budget, v, LLONG_MIN); }

static int
set_hold(Cursor *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete hold");
        return -1;
    }
    int t = PyObject_IsTrue(value);
    if (t < 0)
        return -1;
    self->hold = t;
    return 0;
}

static PyObject *
cursor_get_lock(Cursor *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->lock ? self->lock : Py_None);
}

static int
cursor_set_lock(Cursor *self, PyObject *value, void *Py_UNUSED(closure))
{
    PyObject *locked;
    if (value == NULL || value == Py_None) {
        value = Py_None;
        locked = Py_NewRef(Py_None);
    }
    else if (!Py_IS_TYPE(value, (PyTypeObject *)LockType)) {
        /* Only a threading.Lock: its locked() is C code, which cannot switch threads mid-call. */
        PyErr_Format(PyExc_TypeError, "lock must be a threading.Lock or None, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    else if ((locked = PyObject_GetAttrString(value, "locked")) == NULL)
        return -1;
    Py_XSETREF(self->lock, Py_NewRef(value));
    Py_XSETREF(self->locked, locked);
    return 0;
}

static PyGetSetDef cursor_getset[] = {
    {"lock", (getter)cursor_get_lock, (setter)cursor_set_lock,
     "the channel's lock for this direction (a fast call runs only while it is free), or None", NULL},
    {"attached", (getter)cursor_get_attached, NULL, "False once detached", NULL},
    {"own", (getter)get_own, (setter)set_own, "this side's counter (private copy)", NULL},
    {"peer", (getter)get_peer, (setter)set_peer, "the peer's counter as last seen", NULL},
    {"limit", (getter)get_limit, (setter)set_limit, "writer: records ending at or below fit", NULL},
    {"fast_max", (getter)get_fast_max, (setter)set_fast_max, "writer: send() size limit, -1 off", NULL},
    {"budget", (getter)get_budget, (setter)set_budget, "writer: sends before the general path", NULL},
    {"hold", (getter)get_hold, (setter)set_hold, "reader: recv() returns None while true", NULL},
    {NULL}
};

static PyMethodDef writer_methods[] = {
    {"send", (PyCFunction)writer_send, METH_O, "Commit one whole MSG record; see the module docs."},
    {"send_held", (PyCFunction)writer_send_held, METH_O, "send() for a caller that holds the lock."},
    {"detach", (PyCFunction)cursor_detach, METH_NOARGS, "Release the buffer export; idempotent."},
    {NULL}
};

static PyMethodDef reader_methods[] = {
    {"recv", (PyCFunction)reader_recv, METH_NOARGS, "Consume one whole MSG record as bytes, or None."},
    {"recv_held", (PyCFunction)reader_recv_held, METH_NOARGS, "recv() for a caller that holds the lock."},
    {"detach", (PyCFunction)cursor_detach, METH_NOARGS, "Release the buffer export; idempotent."},
    {NULL}
};

/* Writer and Reader share the object layout and everything but their methods. */
#define CURSOR_TYPE(NAME, DOC, METHODS)                                \
    {                                                                  \
        PyVarObject_HEAD_INIT(NULL, 0)                                 \
        .tp_name = "ipckit.backends.common.ring._ringfast." NAME,                  \
        .tp_doc = DOC,                                                 \
        .tp_basicsize = sizeof(Cursor),                                \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,           \
        .tp_new = PyType_GenericNew,                                   \
        .tp_init = (initproc)cursor_init,                              \
        .tp_dealloc = (destructor)cursor_dealloc,                      \
        .tp_traverse = (traverseproc)cursor_traverse,                  \
        .tp_clear = (inquiry)cursor_clear,                             \
        .tp_members = cursor_members,                                  \
        .tp_getset = cursor_getset,                                    \
        .tp_methods = METHODS,                                         \
    }

static PyTypeObject WriterType = CURSOR_TYPE(
    "Writer", "C fast path of a ring writer: Writer(buffer, offset, capacity, max_message_size)", writer_methods);
static PyTypeObject ReaderType = CURSOR_TYPE(
    "Reader", "C fast path of a ring reader: Reader(buffer, offset, capacity, max_message_size)", reader_methods);

static struct PyModuleDef ringfast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipckit.backends.common.ring._ringfast",
    .m_doc = "C fast paths of the shm ring (see cursor.py for the pure-Python reference).",
    .m_size = -1,
};

/* _ringfast.LAYOUT: RING_LAYOUT as a read-only {name: value} mapping, for the check against
 * protocol.LAYOUT. */
static PyObject *
layout_mapping(void)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
#define ADD_ENTRY(name, value)                                                  \
    {                                                                           \
        PyObject *v = PyLong_FromUnsignedLongLong(RING_##name);                 \
        if (v == NULL || PyDict_SetItemString(d, #name, v) < 0) {               \
            Py_XDECREF(v);                                                      \
            Py_DECREF(d);                                                       \
            return NULL;                                                        \
        }                                                                       \
        Py_DECREF(v);                                                           \
    }
    RING_LAYOUT(ADD_ENTRY)
#undef ADD_ENTRY
    PyObject *proxy = PyDictProxy_New(d);
    Py_DECREF(d);
    return proxy;
}

PyMODINIT_FUNC
PyInit__ringfast(void)
{
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *errors = PyImport_ImportModule("ipckit.errors");
    if (errors == NULL)
        return NULL;
    ProtocolError = PyObject_GetAttrString(errors, "ProtocolError");
    Py_DECREF(errors);
    if (ProtocolError == NULL)
        return NULL;
    PyObject *thread = PyImport_ImportModule("_thread");
    if (thread == NULL)
        return NULL;
    LockType = PyObject_GetAttrString(thread, "LockType");
    Py_DECREF(thread);
    if (LockType == NULL || !PyType_Check(LockType))
        return NULL;
    PyObject *m = PyModule_Create(&ringfast_module);
    if (m == NULL)
        return NULL;
    PyObject *layout = layout_mapping();
    if (layout == NULL || PyModule_AddObjectRef(m, "LAYOUT", layout) < 0 ||
        PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(layout);
    return m;
}
