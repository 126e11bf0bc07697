"""ZeroMQ security for ``zmq+tcp://``: CURVE key pairs and key files, the client allow-list, and the
bind policy (docs/backends/zmq-security.md).

* :class:`KeyPair`, :func:`generate_keypair`, :func:`save_keypair`, :func:`load_keypair`,
  :func:`load_public_keys`: CURVE keys as z85 text (40 characters, what libzmq's options take), in
  key files of the ZPL certificate format czmq and pyzmq's ``zmq.auth.certs`` read and write
  (``NAME.key_secret`` holds both keys and is 0600; ``NAME.key`` holds the public key only).
* :func:`check_bind_address`: loopback is always allowed; any other address (``0.0.0.0``, ``*``, a
  LAN address, a host name) needs CURVE, or an explicit ``insecure=True`` which then warns.
* :class:`CurveServer`: makes a socket a CURVE server and admits only allow-listed client keys.
  The check runs in pyzmq's ZAP authenticator (``zmq.auth.Authenticator``, in a thread of ours)
  with a credentials provider; libzmq itself rejects NULL and PLAIN clients of a CURVE server (mechanism
  mismatch) before ZAP is asked.
* :func:`apply_curve_client`: makes a socket a CURVE client of a server whose public key it knows.

ZAP is per *context*: libzmq sends every handshake of a context to the one handler bound at
``inproc://zeromq.zap.01``.  So each context with CURVE server sockets has one authenticator
thread, shared by the CurveServers using it (reference counted; started by the first, stopped and
joined by the last ``close()``, ended by itself when the context is terminated), and each server
has its own ZAP domain, which selects its own allow-list.  Every server socket also sets
``ZMQ_ZAP_ENFORCE_DOMAIN``: without it, libzmq *accepts every client key* when no ZAP handler is
bound (for example after the authenticator stopped while the socket still lives); with it, such a
handshake fails.  Fail closed.

Only ipckit errors leave this module (``PermissionDenied`` for a secret key file others can read,
``ConfigurationError`` for key material that is not a CURVE key, ...), with the fix in the message.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import stat
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from ipckit.errors import (
    ChannelClosed,
    ConfigurationError,
    EndpointExists,
    InvalidAddress,
    IPCError,
    PermissionDenied,
    SecurityWarning,
)

__all__ = [
    "KeyPair",
    "generate_keypair",
    "save_keypair",
    "load_keypair",
    "load_public_keys",
    "as_keypair",
    "as_server_key",
    "is_loopback",
    "check_bind_address",
    "CurveServer",
    "apply_curve_client",
    "SECRET_SUFFIX",
    "PUBLIC_SUFFIX",
    "HOW_TO_ENABLE_CURVE",
]

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"
_KEY_LEN = 40  # z85 text of a 32-byte Curve25519 key
_Z85_ALPHABET = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_MAX_KEY_FILE = 64 * 1024  # a key file is ~300 bytes; bounded so a wrong path (a log, /dev/zero) is refused
_MAX_ALLOW_FILE = 4 * 1024 * 1024  # an allow-list file: one 40-byte key a line, room for ~100k clients
_STOP_TIMEOUT = 5.0  # seconds close() waits for the authenticator thread (it answers TERMINATE at once)

HOW_TO_ENABLE_CURVE = (
    "enable CURVE: run `ipckit keygen server` (writes server.key_secret and server.key) and "
    "`ipckit keygen client` for each client, then listen with curve='server.key_secret' and "
    "allow=['<client public key>', ...] (or allow='client.key', a file or a directory of .key files); "
    "clients connect with curve='client.key_secret' and server_key='server.key'"
)


# --------------------------------------------------------------------------- key material
def _check_z85(key: object, what: str) -> bytes:
    """*key* as z85 bytes (str is accepted), or ConfigurationError saying what is wrong with it."""
    if isinstance(key, str):
        try:
            key = key.strip().encode("ascii")
        except UnicodeEncodeError:
            raise ConfigurationError(f"{what} is not a CURVE key: it has non-ASCII characters") from None
    if not isinstance(key, bytes):
        raise ConfigurationError(f"{what} must be a z85-encoded CURVE key (40 characters as bytes or str), "
                                 f"not {type(key).__name__}")
    if len(key) == 32:
        # The raw 32-byte form (what libzmq's CURVE_PUBLICKEY also takes): keep one form everywhere.
        return z85.encode(key)
    if len(key) != _KEY_LEN:
        raise ConfigurationError(f"{what} is not a CURVE key: expected 40 z85 characters (as `ipckit keygen` "
                                 f"writes them), got {len(key)} bytes")
    if not _Z85_ALPHABET.issuperset(key):
        raise ConfigurationError(f"{what} is not a CURVE key: it has characters outside the z85 alphabet")
    try:
        z85.decode(key)
    except (struct.error, ValueError, KeyError):  # a 5-character group above 2**32 - 1
        raise ConfigurationError(f"{what} is not a CURVE key: it is not valid z85") from None
    return key


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both keys z85-encoded (40 bytes each).

    The secret key stays out of ``repr()`` (it would end up in logs and tracebacks).  The pair is
    checked on construction: both keys must be CURVE keys and *public* must belong to *secret*.
    """

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        public = _check_z85(self.public, "the public key")
        secret = _check_z85(self.secret, "the secret key")
        try:
            derived = zmq.curve_public(secret)
        except (zmq.ZMQError, ValueError) as exc:
            raise ConfigurationError(f"the secret key is not a CURVE key: {exc}") from exc
        if derived != public:
            raise ConfigurationError("the public key does not belong to the secret key (a key file mixed up "
                                     "or edited?); make a new pair with `ipckit keygen`")
        # Normalised forms (str or raw 32 bytes given) on the frozen instance.
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", secret)


def generate_keypair() -> KeyPair:
    """A new random CURVE key pair (libzmq's ``zmq_curve_keypair``)."""
    try:
        public, secret = zmq.curve_keypair()
    except zmq.ZMQError as exc:  # libzmq built without CURVE (no libsodium / tweetnacl)
        raise ConfigurationError(f"this libzmq ({zmq.zmq_version()}) cannot make CURVE keys: {exc}; "
                                 "install a pyzmq wheel (they bundle a libzmq with CURVE)") from exc
    return KeyPair(public, secret)


def _base(path: str | os.PathLike[str]) -> str:
    """The key files' common stem: ``PATH``, ``PATH.key`` and ``PATH.key_secret`` all name ``PATH``."""
    p = os.fspath(path)
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
        if p.endswith(suffix) and len(p) > len(suffix):
            return p[: -len(suffix)]
    return p


def _secret_text(kp: KeyPair) -> bytes:
    return (
        "#   ipckit CURVE secret certificate (ZPL, the format of czmq and pyzmq's zmq.auth.certs).\n"
        "#   Keep it private: it must stay mode 0600 and never leave this machine.\n"
        "#   Give others the public file (same name without '_secret').\n"
        "\n"
        "metadata\n"
        "curve\n"
        f'    public-key = "{kp.public.decode()}"\n'
        f'    secret-key = "{kp.secret.decode()}"\n'
    ).encode()


def _public_text(kp: KeyPair) -> bytes:
    return (
        "#   ipckit CURVE public certificate (ZPL).  Safe to share: a server lists it in allow=,\n"
        "#   a client passes it as server_key=.\n"
        "\n"
        "metadata\n"
        "curve\n"
        f'    public-key = "{kp.public.decode()}"\n'
    ).encode()


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create *path* (never an existing file or a symlink) with exactly *mode*, write and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away (0600 stays 0600; 0644 should stay readable)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def save_keypair(kp: KeyPair, path: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[str, str]:
    """Write *kp* to ``PATH.key_secret`` (mode 0600, both keys) and ``PATH.key`` (0644, public key).

    *path* may also be given with either suffix.  Existing files are never overwritten unless
    *overwrite* is true (``ipckit keygen --force``); then both are replaced atomically (written
    beside them and renamed over), so a reader sees the old pair or the new one.  Returns the
    paths written (secret, public).
    """
    base = _base(path)
    secret_path, public_path = base + SECRET_SUFFIX, base + PUBLIC_SUFFIX
    try:
        if not overwrite:
            for p in (public_path, secret_path):
                if os.path.lexists(p):
                    raise EndpointExists(errno.EEXIST, f"{p} already exists; ipckit never overwrites a key file "
                                                       "(pass overwrite=True / `ipckit keygen --force` to replace "
                                                       "the pair, or choose another name)")
            _write_new(secret_path, _secret_text(kp), 0o600)
            try:
                _write_new(public_path, _public_text(kp), 0o644)
            except BaseException:
                _unlink_quiet(secret_path)  # no half pair left behind
                raise
            return secret_path, public_path
        tag = f".ipckit-new-{os.getpid()}-{os.urandom(4).hex()}"
        tmp_secret, tmp_public = secret_path + tag, public_path + tag
        try:
            _write_new(tmp_secret, _secret_text(kp), 0o600)
            _write_new(tmp_public, _public_text(kp), 0o644)
            os.replace(tmp_secret, secret_path)
            os.replace(tmp_public, public_path)
        finally:
            _unlink_quiet(tmp_secret)
            _unlink_quiet(tmp_public)
        return secret_path, public_path
    except FileExistsError as exc:  # created by someone else between the check and O_EXCL
        if isinstance(exc, IPCError):
            raise
        raise EndpointExists(errno.EEXIST, f"{exc.filename} already exists; ipckit never overwrites a key file "
                                           "(pass overwrite=True / `ipckit keygen --force`)") from exc
    except OSError as exc:
        if isinstance(exc, IPCError):
            raise
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(exc.errno, f"cannot write the key files {base}{{.key_secret,.key}}: "
                                              f"{exc.strerror}; choose a directory you can write to") from exc
        raise ConfigurationError(f"cannot write the key files {base}{{.key_secret,.key}}: "
                                 f"{exc.strerror or exc}") from exc


def _read_key_file(path: str, *, secret: bool, limit: int = _MAX_KEY_FILE) -> bytes:
    """The bytes of a key file; a secret one must not be readable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        hint = f"; make one with `ipckit keygen {_base(path)}`" if secret else ""
        raise ConfigurationError(f"key file {path} does not exist{hint}") from exc
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(exc.errno, f"cannot read the key file {path}: {exc.strerror}; "
                                              "run as its owner or fix its permissions") from exc
        raise ConfigurationError(f"cannot open the key file {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(f"key file {path} is not a regular file")
        if secret and st.st_mode & 0o077:
            raise PermissionDenied(errno.EACCES, f"the secret key file {path} is readable by others (mode "
                                                 f"{stat.S_IMODE(st.st_mode):04o}); anyone who can read it can "
                                                 f"pose as its owner.  Run `chmod 600 {path}` (and make a new "
                                                 "pair with `ipckit keygen --force` if others may have read it)")
        if st.st_size > limit:
            raise ConfigurationError(f"{path} is {st.st_size} bytes, too large for a key file "
                                     f"(at most {limit}); is it the right file?")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ConfigurationError(f"{path} is too large for a key file (over {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if isinstance(exc, IPCError):
            raise
        raise ConfigurationError(f"cannot read the key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _parse_keys(data: bytes, path: str) -> tuple[list[bytes], bytes | None]:
    """(public keys, secret key or None) of a key file: ZPL certificate lines or bare z85 keys, one a line."""
    publics: list[bytes] = []
    secret: bytes | None = None
    for lineno, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#") or line in (b"metadata", b"curve"):
            continue
        if len(line) == _KEY_LEN and _Z85_ALPHABET.issuperset(line):
            # A bare key (z85 has '=' in its alphabet, so this comes before the ZPL "name = value" test).
            publics.append(_check_z85(line, f"{path}, line {lineno}"))
            continue
        name, sep, value = line.partition(b"=")
        if sep and name.strip() in (b"public-key", b"secret-key"):
            key = _check_z85(value.strip().strip(b"'\""), f"{path}, line {lineno}")
            if name.strip() == b"public-key":
                publics.append(key)
            else:
                secret = key
        elif sep:
            continue  # other ZPL metadata (name = "...", email = ...): not ours to judge
        else:
            publics.append(_check_z85(line, f"{path}, line {lineno}"))
    return publics, secret


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a secret key file.

    *path* is ``NAME.key_secret``, or ``NAME`` / ``NAME.key`` (then ``NAME.key_secret`` is read).
    The file must not be readable by group or others (``PermissionDenied`` says the ``chmod``).
    """
    p = os.fspath(path)
    if not p.endswith(SECRET_SUFFIX):
        p = _base(p) + SECRET_SUFFIX
    publics, secret = _parse_keys(_read_key_file(p, secret=True), p)
    if secret is None:
        raise ConfigurationError(f"{p} holds no secret key (a public .key file?); a server's curve= and a "
                                 "client's curve= take the .key_secret file `ipckit keygen` wrote")
    public = publics[0] if publics else zmq.curve_public(secret)
    return KeyPair(public, secret)


def _public_keys_of_file(path: str) -> list[bytes]:
    publics, secret = _parse_keys(_read_key_file(path, secret=False, limit=_MAX_ALLOW_FILE), path)
    if secret is not None:
        raise ConfigurationError(f"{path} is a secret key file; an allow-list takes public keys "
                                 f"(the {PUBLIC_SUFFIX} file beside it)")
    if not publics:
        raise ConfigurationError(f"{path} holds no public key")
    return publics


def _str_is_key(text: str) -> bool:
    """Whether a str allow-list entry is a z85 key rather than a path: 40 z85 characters naming no file.

    (A missing file whose name happens to be 40 z85 characters reads as a key nobody holds: it
    admits no one, so the mix-up fails closed.)
    """
    t = text.strip()
    return len(t) == _KEY_LEN and _Z85_ALPHABET.issuperset(t.encode("ascii", "replace")) and not os.path.lexists(text)


def load_public_keys(source: str | os.PathLike[str] | Iterable[object]) -> frozenset[bytes]:
    """The z85 public keys of an allow-list (or of a ``server_key=``).

    *source* is a path — a ``.key`` file (ZPL), a text file of z85 keys one a line (``#``
    comments), or a directory whose ``*.key`` files are read (czmq's layout) — or an iterable of
    keys: z85 bytes or str, raw 32-byte keys, :class:`KeyPair` (its public key), or paths.
    A single key as bytes is accepted too.
    """
    if isinstance(source, (bytes, bytearray)):
        return frozenset([_check_z85(bytes(source), "the key")])
    if isinstance(source, (str, os.PathLike)):
        p = os.fspath(source)
        if isinstance(source, str) and _str_is_key(source):
            return frozenset([_check_z85(p, "the key")])  # a key given as text, not a file
        if os.path.isdir(p):
            try:
                names = sorted(n for n in os.listdir(p) if n.endswith(PUBLIC_SUFFIX))
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise PermissionDenied(exc.errno, f"cannot list the key directory {p}: {exc.strerror}") from exc
                raise ConfigurationError(f"cannot list the key directory {p}: {exc.strerror or exc}") from exc
            found = [k for n in names for k in _public_keys_of_file(os.path.join(p, n))]
            if not found:
                raise ConfigurationError(f"the key directory {p} has no {PUBLIC_SUFFIX} files")
            return frozenset(found)
        return frozenset(_public_keys_of_file(p))
    if isinstance(source, KeyPair):
        return frozenset([source.public])
    try:
        items = list(source)
    except TypeError:
        raise ConfigurationError(f"an allow-list is a key file, a directory of .key files or an iterable of keys, "
                                 f"not {type(source).__name__}") from None
    keys: set[bytes] = set()
    for item in items:
        if isinstance(item, KeyPair):
            keys.add(item.public)
        elif isinstance(item, os.PathLike) or (isinstance(item, str) and not _str_is_key(item)):
            keys.update(load_public_keys(item))
        else:
            keys.add(_check_z85(item, f"allow-list entry {item!r}"))
    return frozenset(keys)


def as_keypair(value: object, what: str = "curve=") -> KeyPair:
    """The ``curve=`` option as a KeyPair: a KeyPair, or the path of a ``.key_secret`` file (or its stem)."""
    if isinstance(value, KeyPair):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_keypair(value)
    raise ConfigurationError(f"{what} takes a KeyPair or the path of a .key_secret file (`ipckit keygen NAME` "
                             f"writes NAME.key_secret), not {type(value).__name__}")


def as_server_key(value: object) -> bytes:
    """The ``server_key=`` option as one z85 public key: a key (z85 text/bytes, raw 32 bytes), a
    KeyPair, or a ``.key`` file holding exactly one public key."""
    keys = load_public_keys(value)  # type: ignore[arg-type]  # load_public_keys says what it takes
    if len(keys) != 1:
        raise ConfigurationError(f"server_key= must name one public key, got {len(keys)}")
    return next(iter(keys))


# --------------------------------------------------------------------------- bind policy
def is_loopback(host: str) -> bool:
    """Whether a bind *host* only reaches this machine: ``localhost``, 127.0.0.0/8, ``::1``.

    Interface names (``lo``) and other host names are not: what they resolve to can change.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def check_bind_address(host: str, *, curve: bool, insecure: bool) -> None:
    """Refuse to expose a plaintext, unauthenticated endpoint beyond this machine.

    Loopback is always fine.  Any other *host* (``0.0.0.0``, ``*``, ``::``, a LAN address, a host
    or interface name) needs *curve*; without it this raises ConfigurationError saying how to
    enable CURVE, unless *insecure* is true, and then a :class:`~ipckit.errors.SecurityWarning` is
    issued instead.
    """
    if not isinstance(host, str) or not host.strip():
        raise InvalidAddress(f"zmq+tcp:// needs a host to bind to (got {host!r}); use 127.0.0.1 for this machine")
    if curve or is_loopback(host):
        return
    if insecure:
        warnings.warn(f"zmq+tcp:// bound to {host} without CURVE (insecure=True): anyone who can reach this "
                      "port can read, forge and inject messages.  Use it on a trusted network only; "
                      f"to secure it, {HOW_TO_ENABLE_CURVE}", SecurityWarning, stacklevel=3)
        return
    raise ConfigurationError(f"refusing to bind zmq+tcp:// to {host} without CURVE: any machine that can reach it "
                             f"could connect, read and send unauthenticated, unencrypted messages.  To fix it, "
                             f"{HOW_TO_ENABLE_CURVE}.  Bind 127.0.0.1 to stay on this machine, or pass "
                             "insecure=True to accept the risk (a warning is issued)")


# --------------------------------------------------------------------------- the ZAP side
class _Authenticator(zmq.auth.Authenticator):
    """pyzmq's ZAP authenticator (it speaks ZAP and asks the credentials provider), in a thread of ours.

    Not pyzmq's ``ThreadAuthenticator``: its ``stop()`` joins the thread without a limit, and its
    thread waits in an asyncio poller with no timeout, which never wakes when the context is
    destroyed under it (``Context.destroy()`` closes the ZAP socket from another thread): the
    thread then hangs for good, holding its event loop's descriptors.  This thread waits in
    ``zmq_poll`` at most ``_POLL_MS`` at a time and ends when asked (``request_stop``), when the
    context is terminated (``term()`` interrupts the poll with ETERM, so ``term()`` never waits
    for us) or destroyed; it is the only user, and the closer, of the ZAP socket once started.
    """

    _POLL_MS = 100  # how soon the thread notices a stop request or a destroyed context

    def start_thread(self, on_exit: Callable[[], None]) -> None:
        self._on_exit = on_exit
        self.start()  # Authenticator.start(): create and bind the ZAP socket (in this thread)
        self._stop_requested = threading.Event()
        # The socket moves to the new thread; starting a thread is the full barrier libzmq asks for.
        self._thread = threading.Thread(target=self._serve, name="ipckit-zap", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        thread = getattr(self, "_thread", None)
        return thread is not None and thread.is_alive() and not self._stop_requested.is_set()

    def _serve(self) -> None:
        sock = self.zap_socket
        try:
            while not self._stop_requested.is_set() and not self.context.closed:
                try:
                    if not sock.poll(self._POLL_MS):
                        continue
                    request = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.ZMQError:
                    return  # the context was terminated or destroyed: nobody is left to ask
                # handle_zap_message is a coroutine only because a provider *may* be async; ours
                # (_AllowList.callback) is not, so it runs to its end on the first step.
                step = self.handle_zap_message(request)
                try:
                    step.send(None)
                except StopIteration:
                    continue
                step.close()
                raise RuntimeError("the ZAP handler waited for something; ipckit's allow-list never does")
        finally:
            if not sock.closed:
                sock.close(linger=0)
            self._on_exit()

    def request_stop(self) -> None:
        stop = getattr(self, "_stop_requested", None)
        if stop is not None:
            stop.set()

    def join(self, timeout: float) -> bool:
        """Wait at most *timeout* for the thread (after request_stop); True when it has ended.

        If start_thread() failed before the thread ran, close what Authenticator.start() made.
        """
        thread = getattr(self, "_thread", None)
        if thread is None:
            if self.zap_socket is not None and not self.zap_socket.closed:
                self.zap_socket.close(linger=0)
            return True
        thread.join(timeout)
        return not thread.is_alive()


class _AllowList:
    """The credentials provider for one ZAP domain: a frozen set of z85 client keys."""

    def __init__(self, server: CurveServer, keys: frozenset[bytes]) -> None:
        self._server = server
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self._keys
        self._server._count(ok)
        return ok


class _Shared:
    """The authenticator thread of one zmq context, shared by the CurveServers using that context."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.context = context  # held, so id(context) stays this context's while we are registered
        self.users = 0
        self.auth = _Authenticator(context)
        try:
            self.auth.start_thread(self._forget)
        except BaseException:
            # A failed bind (another authenticator owns the ZAP endpoint) leaves its socket open.
            self.auth.join(0)
            raise

    def _forget(self) -> None:
        """The thread ended (stopped, or its context went away): a later server starts a new one."""
        with _registry_lock:
            if _registry.get(id(self.context)) is self:
                del _registry[id(self.context)]


_registry_lock = threading.Lock()
_registry: dict[int, _Shared] = {}
_domains = itertools.count(1)


def _attach(context: zmq.Context[Any], domain: str, provider: _AllowList) -> _Shared:
    """The live authenticator of *context* (started if needed), serving *domain* with *provider*.

    Called with _registry_lock held.
    """
    shared = _registry.get(id(context))
    if shared is None or shared.context is not context or not shared.auth.alive:
        try:
            shared = _Shared(context)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    "another ZAP authenticator already runs on this zmq context (only one can: libzmq "
                    "binds it at inproc://zeromq.zap.01); use a context of its own for ipckit") from exc
            raise ConfigurationError(f"cannot start the CURVE authenticator: {exc}") from exc
        except RuntimeError as exc:  # no thread could be started (the process is at its limit)
            raise ConfigurationError(f"cannot start the CURVE authenticator: {exc}") from exc
        _registry[id(context)] = shared
    shared.users += 1
    shared.auth.configure_curve_callback(domain, provider)
    return shared


class CurveServer:
    """CURVE for the server sockets of one endpoint: the server key and the client allow-list.

    ``apply(sock)`` (before ``bind``) makes *sock* a CURVE server with *keypair* and a ZAP domain
    of its own; a client is admitted only if its public key is in *allowed*.  NULL and PLAIN
    clients fail the handshake (mechanism mismatch), a client with a key not in *allowed* is refused
    by ZAP, a client that does not know the server's public key cannot complete the handshake;
    none of them can send or receive a message.

    ZAP is per context, so every context a socket given to ``apply()`` belongs to gets an
    authenticator thread (one per context, shared by all CurveServers there; *context* is the
    first).  A socket of a context of its own per channel thus costs a thread per channel; the
    thread ends by itself when its context is terminated or destroyed (``term()`` does not wait
    for it).  ``close()`` is idempotent and bounded: it stops serving this allow-list, and the
    threads no other CurveServer uses are stopped and joined.  A server socket outliving its
    CurveServer refuses every client (ZAP_ENFORCE_DOMAIN), it never admits all of them.

    ``accepted`` and ``rejected`` count the ZAP verdicts (CURVE clients only; NULL and PLAIN
    clients never reach ZAP).  A received message's ``User-Id`` property
    (``frame.get("User-Id")`` with ``copy=False``) is the z85 public key of the client that sent it.
    """

    def __init__(self, context: zmq.Context[Any], keypair: KeyPair, allowed: Iterable[bytes]) -> None:
        if not isinstance(keypair, KeyPair):
            raise ConfigurationError(f"curve= needs a KeyPair or a .key_secret file, not {type(keypair).__name__}")
        keys = load_public_keys(allowed)
        if not keys:
            raise ConfigurationError("the allow-list is empty, so no client could connect; give allow= the public "
                                     "keys of the clients (`ipckit keygen NAME` prints one and writes NAME.key)")
        self.keypair = keypair
        self.allowed = keys
        self.domain = f"ipckit-{os.getpid()}-{next(_domains)}"
        self.accepted = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._closed = False
        self._provider = _AllowList(self, keys)
        self._attached: dict[int, _Shared] = {}
        with _registry_lock:
            self._attached[id(context)] = _attach(context, self.domain, self._provider)

    def _count(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.accepted += 1
            else:
                self.rejected += 1

    @property
    def public_key(self) -> bytes:
        """The server's public key (z85): what clients pass as ``server_key=``."""
        return self.keypair.public

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make *sock* a CURVE server of this allow-list; call it before ``bind``."""
        context = sock.context
        with _registry_lock:
            if self._closed:
                raise ChannelClosed("this CurveServer is closed; make a new one for a new socket")
            # Contexts gone since (channels closed) are dropped here, so a long-lived server's list stays short.
            for key in [k for k, sh in self._attached.items() if not sh.auth.alive]:
                del self._attached[key]
            shared = self._attached.get(id(context))
            if shared is None or shared.context is not context:
                self._attached[id(context)] = _attach(context, self.domain, self._provider)
        try:
            sock.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler -> refuse, not "admit everyone"
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
        except zmq.ZMQError as exc:
            raise ConfigurationError(f"cannot make the socket a CURVE server: {exc} (libzmq "
                                     f"{zmq.zmq_version()}, CURVE {'yes' if zmq.has('curve') else 'no'})") from exc

    def close(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop admitting clients of this allow-list; stop the threads no other server uses.

        Idempotent.  Waits at most *timeout* seconds in all for those threads (they end at once
        when asked).
        """
        stopping = []
        with _registry_lock:
            if self._closed:
                return
            self._closed = True
            attached, self._attached = list(self._attached.values()), {}
            for shared in attached:
                shared.auth.credentials_providers.pop(self.domain, None)
                shared.users -= 1
                if shared.users <= 0:
                    if _registry.get(id(shared.context)) is shared:
                        del _registry[id(shared.context)]
                    shared.auth.request_stop()
                    stopping.append(shared)
        deadline = time.monotonic() + timeout
        stuck = [sh for sh in stopping if not sh.auth.join(max(0.0, deadline - time.monotonic()))]
        if stuck:
            raise IPCError(f"{len(stuck)} CURVE authenticator thread(s) did not stop within {timeout} s; they are "
                           "daemon threads and end with the process")

    def __enter__(self) -> CurveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<CurveServer {state} domain={self.domain} public={self.keypair.public.decode()} "
                f"allowed={len(self.allowed)}>")


def apply_curve_client(sock: zmq.Socket[Any], keypair: KeyPair, server_public: bytes) -> None:
    """Make *sock* a CURVE client with *keypair* of the server whose public key is *server_public*.

    Call it before ``connect``.  The handshake fails (and no message passes) if the server has
    another key or does not allow-list ``keypair.public``.
    """
    if not isinstance(keypair, KeyPair):
        raise ConfigurationError(f"curve= needs a KeyPair or a .key_secret file, not {type(keypair).__name__}")
    server_key = _check_z85(server_public, "server_key")
    try:
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
    except zmq.ZMQError as exc:
        raise ConfigurationError(f"cannot make the socket a CURVE client: {exc} (libzmq {zmq.zmq_version()})") from exc
