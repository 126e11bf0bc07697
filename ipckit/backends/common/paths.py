"""Private helpers for file-system endpoints (FIFOs, Unix sockets): private dirs, owner checks, locks.

Why these rules (S1, S2, S4, S6, F-5, F-6, U-2 in docs/design.md):

* Generated names carry 128 bits of randomness and the ``ipckit`` prefix, so they cannot be
  guessed and ``ipckit cleanup`` can find them.
* Modes are set explicitly after creation, so the umask never widens (or narrows) them, and
  never by a path someone else could redirect between two calls (issue 10, B.10): a directory's
  through a descriptor opened ``O_DIRECTORY|O_NOFOLLOW`` and owner-checked (:func:`make_dir`,
  :func:`set_dir_mode`); files relative to a descriptor of their own private directory; a Unix
  socket is bound in a fresh private directory, given its mode there and only then linked to its
  address (:func:`bind_with_mode`).  The umask is not used: it is process-wide, so narrowing it
  around one ``bind`` would change every file other threads create meanwhile.
* Endpoints are created only in a parent directory where no other user can swap what we create
  (:func:`check_parent_dir`): not world-writable without the sticky bit, owned by us or root.
* Anything found at an address is ``lstat``-ed first: a symlink, a file of the wrong type or an
  object of another owner is refused, never followed or reused; files are opened ``O_NOFOLLOW``.
* An object this end opens may grant group and others no more than this end's ``mode`` option
  (:func:`check_mode`, S5 in docs/design.md): a wider one would void the same-user proof this
  end's serializer relies on.
* Liveness of a creator is an ``flock`` it holds for its lifetime; the kernel drops it when the
  process dies, so "lock free" proves the endpoint stale.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
import stat
import tempfile
from typing import TYPE_CHECKING

from ipckit.errors import (
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    IPCError,
    PermissionDenied,
    from_oserror,
)

if TYPE_CHECKING:
    from ipckit.cleanup import StaleObject, Sweep

__all__ = [
    "NAME_RE",
    "PREFIX",
    "runtime_dir",
    "make_private_dir",
    "generated_name",
    "check_parent_dir",
    "check_dir",
    "check_owned",
    "check_mode",
    "open_dir",
    "make_dir",
    "set_dir_mode",
    "bind_with_mode",
    "open_lock",
    "try_lock",
    "lock_path_exclusively",
    "release_lock",
    "unlink_quiet",
    "rmdir_quiet",
    "temp_dirs",
    "stale_private_entries",
]

#: A plain object name (shm, sysv+shm, mq, memory): no slashes, nothing a shell or a path could
#: reinterpret, short enough for every kernel's name limit once the ipckit prefix is added.
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

PREFIX = "ipckit-"


def generated_name(suffix: str = "") -> str:
    """``ipckit-<32 hex digits><suffix>``: unguessable (128 bits)."""
    return f"{PREFIX}{secrets.token_hex(16)}{suffix}"


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR`` when it is ours and private, else the system temp dir."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.lstat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            return xdg
    return tempfile.gettempdir()


def make_private_dir(parent: str | None = None) -> str:
    """Create a fresh ``ipckit-*`` directory with mode 0700 (set explicitly, umask-proof)."""
    try:
        path = tempfile.mkdtemp(prefix=PREFIX, dir=parent or runtime_dir())
    except OSError as exc:
        raise from_oserror(exc, "creating a private directory") from exc
    try:
        set_dir_mode(path, 0o700, "a private directory")
    except BaseException:
        rmdir_quiet(path)
        raise
    return path


def check_parent_dir(path: str) -> None:
    """The directory that will hold *path* must exist, be a directory, and be safe to create in.

    Safe means no other user can replace what we create there between two of our calls (which
    would redirect a later step, e.g. a chmod, to a file of their choosing): refused with
    PermissionDenied are a world-writable directory without the sticky bit, and one owned by
    another user than us or root (its owner can do anything in it).  A group-writable directory
    is accepted: nothing ipckit does there follows a path twice (see the module docstring), and
    peers check the owner of what they find.  The parent itself may be reached through a symlink
    (``/var/run`` -> ``/run``): its target is what is checked.
    """
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except FileNotFoundError as exc:
        raise EndpointNotFound(errno.ENOENT, f"directory {parent!r} of {path!r} does not exist") from exc
    except OSError as exc:
        raise from_oserror(exc, f"checking directory {parent!r}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidAddress(f"{parent!r} (parent of {path!r}) is not a directory")
    _check_safe_parent(parent, st)


def _check_safe_parent(parent: str, st: os.stat_result) -> None:
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise PermissionDenied(
            errno.EPERM,
            f"directory {parent!r} is writable by every user and has no sticky bit, so anyone could replace "
            "an endpoint created there; use a directory of your own (or set the sticky bit, chmod +t)",
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise PermissionDenied(
            errno.EPERM,
            f"directory {parent!r} belongs to uid {st.st_uid}, who could replace an endpoint created there; "
            "use a directory of your own",
        )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path: str, what: str, *, dir_fd: int | None = None) -> int:
    """A descriptor of the directory *path* of ours, never through a symlink in its last component.

    Raises:
        FileNotFoundError: nothing there (callers decide what that means).
        PermissionDenied: a symlink, not a directory, or another owner's.
    """
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:  # (a symlink to a file says ENOTDIR, not ELOOP)
            try:
                if stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    exc.errno = errno.ELOOP
            except OSError:
                pass
        if exc.errno == errno.ELOOP:
            raise PermissionDenied(errno.ELOOP, f"{path!r} is a symlink; ipckit never follows one to {what}") from exc
        if exc.errno == errno.ENOTDIR:
            raise PermissionDenied(errno.ENOTDIR, f"{path!r} exists and is not {what}") from exc
        raise
    try:
        check_owned(path, os.fstat(fd), "directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_dir_mode(path: str, mode: int, what: str) -> None:
    """Set *mode* on the directory of ours at *path*: ``fchmod`` on a descriptor, never ``chmod``
    through a name that may have been swapped for a symlink meanwhile (PermissionDenied then)."""
    try:
        fd = open_dir(path, what)
    except FileNotFoundError as exc:
        raise EndpointNotFound(errno.ENOENT, f"{path!r} vanished while creating {what}") from exc
    except OSError as exc:
        if isinstance(exc, IPCError):
            raise
        raise from_oserror(exc, f"opening {path!r}") from exc
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_dir(path: str, mode: int, what: str) -> None:
    """Create the directory *path* exclusively and give it *mode* (umask-proof, race-free).

    Raises:
        FileExistsError: *path* exists (the caller checks what is there).
        PermissionDenied: what is at *path* right after ``mkdir`` is not the directory we made
            (another user swapped it); it is left alone.
    """
    os.mkdir(path, 0o700)
    try:
        set_dir_mode(path, mode, what)
    except PermissionDenied:
        raise  # not the directory made here: left alone
    except BaseException:
        rmdir_quiet(path)  # made here, still empty (e.g. no descriptor left to open it): nothing stays
        raise


def check_mode(what: str, st_mode: int, mode: int, *, allowed: int | None = None) -> None:
    """An object this end opens may grant group and others no more than this end's *mode* does.

    *allowed*: the bits *mode* allows on this kind of object, when they differ from *mode*
    itself (a fifo:// directory gets search bits for the FIFOs' read/write ones).

    Raises:
        PermissionDenied: the object is open to more users than this end's ``mode`` option says;
            the message says what to pass (and that pickle then needs ``trust=True``).
    """
    have = st_mode & 0o777  # (SysV modes carry flags above the permission bits)
    if have & 0o077 & ~(mode if allowed is None else allowed):
        raise PermissionDenied(
            errno.EACCES,
            f"{what} has mode {have:#o}, open to more users than this end's mode={mode:#o} allows; pass the mode "
            "it was created with here too if that is intended (a mode wider than owner-only means the peer is not "
            "proven to be you, so pickle then needs trust=True)",
        )


def bind_with_mode(sock: socket.socket, path: str, mode: int) -> tuple[int, int]:
    """Bind the Unix socket *sock* at *path* with permission bits *mode*; ``(st_dev, st_ino)``.

    ``bind`` creates the socket file with ``0777 & ~umask``, and a ``chmod(path)`` after it would
    follow a symlink another user swapped in between (making us chmod a file of their choosing).
    So the socket is bound in a fresh private directory made next to *path* (the same file
    system), its mode is set there, where nobody else can reach it, and only then is it linked to
    *path* -- ``link(2)`` fails if the name exists, so nothing found there is ever replaced -- and
    the private name removed.  Every step goes through directory descriptors, so a directory
    swapped on the way cannot redirect one either.  Nobody can connect before the final link.

    Raises:
        EndpointExists: something appeared at *path* meanwhile (nothing was replaced).
        OSError: any other failure (the caller translates it); nothing is left behind.
    """
    parent, name = os.path.split(path)
    parent = parent or "."
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_safe_parent(parent, os.fstat(parent_fd))  # the directory we really hold
        private = generated_name(".bind")
        os.mkdir(private, 0o700, dir_fd=parent_fd)
        try:
            private_fd = open_dir(private, "a private directory", dir_fd=parent_fd)
            try:
                os.fchmod(private_fd, 0o700)
                # The kernel resolves the bind address itself: through /proc, the directory we hold
                # (and a short address, whatever the length of *path*); the plain path otherwise.
                via_proc = f"/proc/self/fd/{private_fd}"
                where = via_proc if os.path.isdir(via_proc) else os.path.join(parent, private)
                sock.bind(os.path.join(where, "s"))
                try:
                    os.chmod("s", mode, dir_fd=private_fd)
                    st = os.stat("s", dir_fd=private_fd, follow_symlinks=False)
                    try:
                        os.link("s", name, src_dir_fd=private_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
                    except FileExistsError as exc:
                        raise EndpointExists(
                            errno.EEXIST,
                            f"{path!r} appeared while binding (another process is racing for this address); "
                            "nothing was replaced",
                        ) from exc
                finally:
                    try:
                        os.unlink("s", dir_fd=private_fd)
                    except OSError:
                        pass
            finally:
                os.close(private_fd)
        finally:
            try:
                os.rmdir(private, dir_fd=parent_fd)
            except OSError:
                pass
    finally:
        os.close(parent_fd)
    return st.st_dev, st.st_ino


def check_dir(path: str, what: str, *, private: bool) -> None:
    """*path* must be a real directory of ours (``lstat``: a symlink is refused, never followed).

    Raises:
        FileNotFoundError: nothing there (callers decide what that means).
        PermissionDenied: a symlink, something else than a directory, another owner, or (with
            *private*) group/other access.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionDenied(errno.ELOOP, f"{path!r} is a symlink; ipckit never follows one to {what}")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(errno.ENOTDIR, f"{path!r} exists and is not {what}")
    check_owned(path, st, "directory", private=private)


def check_owned(path: str, st: os.stat_result, kind: str, *, private: bool = False) -> None:
    """Refuse an object we did not create: other owner, or group/other access bits when *private*."""
    euid = os.geteuid()
    if st.st_uid != euid:
        raise PermissionDenied(
            errno.EPERM,
            f"{kind} {path!r} belongs to uid {st.st_uid}, not to this user (uid {euid}); "
            "ipckit never uses or removes another user's objects",
        )
    if private and st.st_mode & 0o077:
        raise PermissionDenied(
            errno.EPERM,
            f"{kind} {path!r} has mode {stat.S_IMODE(st.st_mode):o}, open to other users; "
            "ipckit only uses private (0700) directories",
        )


def open_lock(path: str, *, create: bool = True) -> int:
    """Open (or create, 0600) the lock file *path* without following symlinks; owner-checked."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionDenied(errno.ELOOP, f"lock file {path!r} is a symlink; refusing to follow it") from exc
        raise from_oserror(exc, f"opening lock file {path!r}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionDenied(errno.EPERM, f"lock file {path!r} is not a regular file")
        check_owned(path, st, "lock file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Non-blocking ``flock``: True if taken, False if another open file description holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass


def lock_path_exclusively(path: str) -> int:
    """Open and exclusively lock *path*, making sure the lock is on the file still at that name.

    Raises EndpointExists when a live process holds it.  A lock on a file someone unlinked in
    the meantime proves nothing, so the inode is compared after locking (and the open retried).
    """
    for _ in range(8):
        fd = open_lock(path)
        try:
            if not try_lock(fd):
                raise EndpointExists(errno.EEXIST, f"{path!r} is locked: a live ipckit endpoint owns this address")
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise EndpointExists(errno.EEXIST, f"{path!r} keeps changing; another process is racing for this address")


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- stale sweep (ipckit cleanup)
#: An empty private directory younger than this may belong to a listener that is about to bind.
EMPTY_DIR_GRACE = 60.0


def temp_dirs() -> list[str]:
    """The directories file endpoints are created in: the temp dir, ``/tmp``, ``/var/tmp`` and
    ``$XDG_RUNTIME_DIR`` (resolved, existing, each once)."""
    dirs = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(runtime)
    seen: list[str] = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(real):
            seen.append(real)
    return seen


def stale_private_entries(sweep: Sweep) -> list[StaleObject]:
    """The sweep of every scheme with file endpoints (FIFOs, Unix sockets): ``ipckit*`` files in
    the temp directories and the ``ipckit*`` private directories holding them, that no process
    holds open or bound.

    A directory is stale when everything in it is; an empty one only once it is older than
    :data:`EMPTY_DIR_GRACE` (a listener may be about to bind in it).  Read-only.
    """
    from ipckit.cleanup import StaleObject

    reason = "no live process has it open or bound"
    found: list[StaleObject] = []
    for tmp in temp_dirs():
        try:
            entries = sorted(os.listdir(tmp))
        except OSError:
            continue
        for entry in entries:
            if not sweep.wants(entry):
                continue
            path = os.path.join(tmp, entry)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid != os.geteuid():
                continue
            if not stat.S_ISDIR(st.st_mode):
                obj = sweep.unheld_file(path, reason, name=entry)
                if obj is not None:
                    found.append(obj)
                continue
            try:
                inner = sorted(os.listdir(path))
            except OSError:
                continue
            stale = [o for o in (sweep.unheld_file(os.path.join(path, sub), reason, name=entry) for sub in inner)
                     if o is not None]
            found += stale
            if inner and len(stale) == len(inner):
                found.append(StaleObject(path, "directory", "every object in it is stale", name=entry))
            elif not inner and sweep.now - st.st_mtime > EMPTY_DIR_GRACE:
                found.append(StaleObject(path, "directory", "empty and older than a minute", name=entry))
    return found


_ = IPCError
