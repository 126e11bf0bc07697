/* The POSIX message-queue calls of mq:// (ipckit/backends/mq.py) and the SysV message and
 * semaphore calls of sysv+mq:// (ipckit/backends/sysv_mq.py, common/sysv.py), without ctypes
 * (and without sysv_ipc's exception for an empty queue, raised on every miss).
 *
 * ctypes costs about 1.5 us per mq_timedsend / mq_timedreceive here (argument conversion, errno
 * save and restore), more than the kernel call itself, which made a 64-byte round trip several
 * times the raw posix_ipc one.  These two functions are the same calls with the absolute
 * CLOCK_REALTIME deadline mq_timed* want computed in C.  Optional: mq.py falls back to ctypes
 * when this module was not built.
 *
 * Both return "retry" (False / -1) for ETIMEDOUT, EAGAIN and EINTR, so the caller's loop -- which
 * re-checks close(), the peer and its own deadline, and lets Python run signal handlers --
 * decides what happens next; every other errno is an OSError.  The GIL is released only for a
 * call that may wait (timeout > 0).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mqueue.h>
#include <stdlib.h>
#include <string.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>

static int
deadline_of(double timeout, struct timespec *ts)
{
    if (timeout <= 0.0) {
        ts->tv_sec = 0; /* long past: do not wait */
        ts->tv_nsec = 0;
        return 0;
    }
    if (clock_gettime(CLOCK_REALTIME, ts) != 0) {
        return -1;
    }
    double whole = (double)(time_t)timeout;
    long nsec = ts->tv_nsec + (long)((timeout - whole) * 1e9);
    ts->tv_sec += (time_t)whole + nsec / 1000000000L;
    ts->tv_nsec = nsec % 1000000000L;
    return 1;
}

static int
retry_code(int code)
{
    return code == ETIMEDOUT || code == EAGAIN || code == EINTR;
}

PyDoc_STRVAR(put_doc, "put(fd, buf, n, timeout) -> bool\n\n"
             "mq_timedsend of buf[:n] (priority 0) waiting up to timeout seconds; False: not queued "
             "(full, timed out or interrupted).");

static PyObject *
qf_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "put(fd, buf, n, timeout) takes 4 arguments");
        return NULL;
    }
    long fd_l = PyLong_AsLong(args[0]);
    int fd = (int)fd_l;
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    double timeout = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    if (n < 0 || n > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "n is outside the buffer");
        return NULL;
    }
    struct timespec ts;
    int waits = deadline_of(timeout, &ts);
    if (waits < 0) {
        PyBuffer_Release(&view);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int rc, code;
    if (waits) {
        Py_BEGIN_ALLOW_THREADS
        rc = mq_timedsend(fd, (const char *)view.buf, (size_t)n, 0, &ts);
        code = errno;
        Py_END_ALLOW_THREADS
    } else {
        rc = mq_timedsend(fd, (const char *)view.buf, (size_t)n, 0, &ts);
        code = errno;
    }
    PyBuffer_Release(&view);
    if (rc == 0) {
        Py_RETURN_TRUE;
    }
    if (retry_code(code)) {
        Py_RETURN_FALSE;
    }
    errno = code;
    return PyErr_SetFromErrno(PyExc_OSError);
}

PyDoc_STRVAR(get_doc, "get(fd, buf, timeout) -> int\n\n"
             "mq_timedreceive into buf waiting up to timeout seconds; the message's length, or -1: "
             "nothing came (empty, timed out or interrupted).");

static PyObject *
qf_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "get(fd, buf, timeout) takes 3 arguments");
        return NULL;
    }
    long fd_l = PyLong_AsLong(args[0]);
    int fd = (int)fd_l;
    double timeout = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) != 0) {
        return NULL;
    }
    struct timespec ts;
    int waits = deadline_of(timeout, &ts);
    if (waits < 0) {
        PyBuffer_Release(&view);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    ssize_t got;
    int code;
    if (waits) {
        Py_BEGIN_ALLOW_THREADS
        got = mq_timedreceive(fd, (char *)view.buf, (size_t)view.len, NULL, &ts);
        code = errno;
        Py_END_ALLOW_THREADS
    } else {
        got = mq_timedreceive(fd, (char *)view.buf, (size_t)view.len, NULL, &ts);
        code = errno;
    }
    PyBuffer_Release(&view);
    if (got >= 0) {
        return PyLong_FromSsize_t(got);
    }
    if (retry_code(code)) {
        return PyLong_FromLong(-1);
    }
    errno = code;
    return PyErr_SetFromErrno(PyExc_OSError);
}

PyDoc_STRVAR(semop1_doc, "semop1(semid, num, op, flags) -> int\n\n"
             "One semop(2) of op on semaphore num with flags (IPC_NOWAIT, SEM_UNDO); 0, or the "
             "negative errno.  Never waits with IPC_NOWAIT or op >= 0, so the GIL is kept.");

static PyObject *
qf_semop1(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "semop1(semid, num, op, flags) takes 4 arguments");
        return NULL;
    }
    long semid = PyLong_AsLong(args[0]);
    long num = PyLong_AsLong(args[1]);
    long op = PyLong_AsLong(args[2]);
    long flags = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (op < SHRT_MIN || op > SHRT_MAX || num < 0 || num > USHRT_MAX) {
        PyErr_SetString(PyExc_ValueError, "semop1: op or num out of range");
        return NULL;
    }
    struct sembuf sb = {(unsigned short)num, (short)op, (short)flags};
    int rc;
    if (op < 0 && !(flags & IPC_NOWAIT)) {
        Py_BEGIN_ALLOW_THREADS
        rc = semop((int)semid, &sb, 1);
        if (rc != 0) {
            rc = -errno;
        }
        Py_END_ALLOW_THREADS
    } else {
        rc = semop((int)semid, &sb, 1);
        if (rc != 0) {
            rc = -errno;
        }
    }
    return PyLong_FromLong(rc);
}

PyDoc_STRVAR(semtake_doc, "semtake(semid, num, op, timeout) -> int\n\n"
             "semtimedop of op (< 0) on semaphore num, waiting up to timeout seconds (relative) with "
             "the GIL released (timeout 0: IPC_NOWAIT); 0, or the negative errno (-EAGAIN: timed "
             "out, -EINTR: a signal came).");

static PyObject *
semtake(long semid, long num, long op, double timeout)
{
    if (num < 0 || num > USHRT_MAX || op < SHRT_MIN || op >= 0) {
        PyErr_SetString(PyExc_ValueError, "semtake: num or op out of range");
        return NULL;
    }
    if (timeout < 0.0) {
        timeout = 0.0;
    }
    struct sembuf sb = {(unsigned short)num, (short)op, timeout == 0.0 ? IPC_NOWAIT : 0};
    struct timespec ts;
    ts.tv_sec = (time_t)timeout;
    ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec > 999999999L) {
        ts.tv_nsec = 999999999L;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = semtimedop((int)semid, &sb, 1, &ts);
    if (rc != 0) {
        rc = -errno;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(rc);
}

static PyObject *
qf_semtake(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "semtake(semid, num, op, timeout) takes 4 arguments");
        return NULL;
    }
    long semid = PyLong_AsLong(args[0]);
    long num = PyLong_AsLong(args[1]);
    long op = PyLong_AsLong(args[2]);
    double timeout = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return semtake(semid, num, op, timeout);
}

PyDoc_STRVAR(semwait_doc, "semwait(semid, num, timeout) -> int\n\n"
             "semtake(semid, num, -1, timeout): take one count.");

static PyObject *
qf_semwait(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "semwait(semid, num, timeout) takes 3 arguments");
        return NULL;
    }
    long semid = PyLong_AsLong(args[0]);
    long num = PyLong_AsLong(args[1]);
    double timeout = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return semtake(semid, num, -1, timeout);
}

/* SysV messages: struct msgbuf is a long (the type) followed by the text. */
#define MSG_STACK 16384

PyDoc_STRVAR(msgput_doc, "msgput(msqid, data, mtype) -> int\n\n"
             "msgsnd(IPC_NOWAIT) of the bytes of data with type mtype; 0, or the negative errno "
             "(-EAGAIN: the queue is full).");

static PyObject *
qf_msgput(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "msgput(msqid, data, mtype) takes 3 arguments");
        return NULL;
    }
    long msqid = PyLong_AsLong(args[0]);
    long mtype = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (mtype <= 0) {
        PyErr_SetString(PyExc_ValueError, "msgput: mtype must be > 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    size_t need = sizeof(long) + (size_t)view.len;
    char stack[sizeof(long) + MSG_STACK];
    char *msg = need <= sizeof(stack) ? stack : malloc(need);
    if (msg == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    memcpy(msg, &mtype, sizeof(long));
    memcpy(msg + sizeof(long), view.buf, (size_t)view.len);
    int rc = msgsnd((int)msqid, msg, (size_t)view.len, IPC_NOWAIT);
    if (rc != 0) {
        rc = -errno;
    }
    if (msg != stack) {
        free(msg);
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc);
}

PyDoc_STRVAR(msgget_doc, "msgget(msqid, mtype, maxsize) -> (bytes, int) | int\n\n"
             "msgrcv(IPC_NOWAIT | MSG_NOERROR) of the first message of type mtype, at most maxsize "
             "bytes: (its text, mtype), or the negative errno (-ENOMSG: none).  A longer message is "
             "taken cut to maxsize, so ask for one byte more than you accept to tell it.");

static PyObject *
qf_msgget(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "msgget(msqid, mtype, maxsize) takes 3 arguments");
        return NULL;
    }
    long msqid = PyLong_AsLong(args[0]);
    long mtype = PyLong_AsLong(args[1]);
    Py_ssize_t maxsize = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (maxsize < 0 || maxsize > (Py_ssize_t)(64 * 1024 * 1024)) {
        PyErr_SetString(PyExc_ValueError, "msgget: maxsize out of range");
        return NULL;
    }
    size_t need = sizeof(long) + (size_t)maxsize;
    char stack[sizeof(long) + MSG_STACK];
    char *msg = need <= sizeof(stack) ? stack : malloc(need);
    if (msg == NULL) {
        return PyErr_NoMemory();
    }
    ssize_t got = msgrcv((int)msqid, msg, (size_t)maxsize, mtype, IPC_NOWAIT | MSG_NOERROR);
    PyObject *result;
    if (got < 0) {
        result = PyLong_FromLong(-errno);
    } else {
        long kind;
        memcpy(&kind, msg, sizeof(long));
        result = Py_BuildValue("(y#l)", msg + sizeof(long), (Py_ssize_t)got, kind);
    }
    if (msg != stack) {
        free(msg);
    }
    return result;
}

PyDoc_STRVAR(held_doc, "held(fd, byte) -> bool\n\n"
             "True when another open file description holds an OFD lock on byte of fd "
             "(F_OFD_GETLK): the liveness test the queue and shm kits make on every send.");

static PyObject *
qf_held(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "held(fd, byte) takes 2 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    long long byte = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = 1;
    if (fcntl((int)fd, F_OFD_GETLK, &fl) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(fl.l_type != F_UNLCK);
}

static PyMethodDef qf_methods[] = {
    {"held", (PyCFunction)(void (*)(void))qf_held, METH_FASTCALL, held_doc},
    {"semwait", (PyCFunction)(void (*)(void))qf_semwait, METH_FASTCALL, semwait_doc},
    {"semtake", (PyCFunction)(void (*)(void))qf_semtake, METH_FASTCALL, semtake_doc},
    {"msgput", (PyCFunction)(void (*)(void))qf_msgput, METH_FASTCALL, msgput_doc},
    {"msgget", (PyCFunction)(void (*)(void))qf_msgget, METH_FASTCALL, msgget_doc},
    {"semop1", (PyCFunction)(void (*)(void))qf_semop1, METH_FASTCALL, semop1_doc},
    {"put", (PyCFunction)(void (*)(void))qf_put, METH_FASTCALL, put_doc},
    {"get", (PyCFunction)(void (*)(void))qf_get, METH_FASTCALL, get_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef qf_module = {
    PyModuleDef_HEAD_INIT, "_queuefast", "The POSIX queue calls of mq:// and the credit semop of sysv+mq://, without ctypes.", -1, qf_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__queuefast(void)
{
    return PyModule_Create(&qf_module);
}
