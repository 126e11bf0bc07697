"""Mutual HMAC-SHA256 challenge-response over a freshly connected socket (the ``authkey`` option).

Wire format (fixed sizes, so every pre-authentication read is bounded: the server reads 69
bytes, the client 68, never more than :data:`MAX_PREAUTH_READ`)::

    server -> client   HELLO  = b"IKA1" + nonce_s (32)                                   36 bytes
    client -> server   REPLY  = b"IKA1" + nonce_c (32) + HMAC(key, "c" + nonce_s + nonce_c)  68 bytes
    server -> client   VERDICT = b"\\x01" + HMAC(key, "s" + nonce_c + nonce_s)   (or b"\\x00" * 33) 33 bytes
    client -> server   ACK    = b"\\x01" (client verified the server) or b"\\x00"           1 byte

Both sides prove knowledge of the key on a fresh challenge from the other (no replay), digests
are compared with ``hmac.compare_digest``, and each side learns the verdict of the other, so a
wrong key is :class:`PeerRejected` on both ends.  Nothing is deserialized before this succeeds.

:class:`ServerHandshake` then (and without an ``authkey``, at once) reads the client's ipckit
hello (``ipckit.framing``): on a stream exactly its header and then exactly its payload, so the
messages a client sent after it stay in the socket for the channel; on seqpacket one packet.  A
client that sends no valid hello fails with :class:`ProtocolError` (or
:class:`IncompatibleEndpoint` for another protocol version), which a listener drops quietly.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import select
import socket

from ipckit.deadline import Deadline, poll_ms
from ipckit.errors import ChannelTimeout, MessageTooLarge, PeerRejected, ProtocolError
from ipckit.framing import FLAG_HELLO, HEADER_SIZE, HELLO_MAX, decode_header, decode_hello

__all__ = ["MAX_PREAUTH_READ", "ServerHandshake", "client_handshake", "coerce_key"]

MAX_PREAUTH_READ = 256
_MAGIC = b"IKA1"
_NONCE = 32
_DIGEST = 32
_HELLO = len(_MAGIC) + _NONCE
_REPLY = len(_MAGIC) + _NONCE + _DIGEST
_VERDICT = 1 + _DIGEST
_ACK = 1


def coerce_key(key: object) -> bytes | None:
    """``authkey`` as bytes (str is UTF-8 encoded); None or empty means "no authentication"."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
        return b or None
    raise TypeError("authkey must be bytes or str")


def _mac(key: bytes, role: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(key, role + a + b, hashlib.sha256).digest()


def _send_all(sock: socket.socket, data: bytes) -> None:
    # Handshake messages are tiny and the socket is fresh, so they fit its buffer at once.
    try:
        n = sock.send(data, socket.MSG_NOSIGNAL)
    except BlockingIOError:
        n = 0
    except OSError as exc:
        raise PeerRejected(exc.errno or errno.EPIPE, "the peer left during the authentication handshake") from exc
    if n != len(data):
        raise PeerRejected(errno.EPROTO, "the peer is not reading the authentication handshake")


class _Reader:
    """Accumulates exactly *need* bytes (one packet on SOCK_SEQPACKET) without reading further."""

    def __init__(self, sock: socket.socket, seqpacket: bool) -> None:
        self._sock = sock
        self._seqpacket = seqpacket
        self._buf = bytearray()

    def read(self, need: int) -> bytes | None:
        """The *need* bytes once all arrived, else None (would block)."""
        assert need <= MAX_PREAUTH_READ
        while len(self._buf) < need:
            want = MAX_PREAUTH_READ if self._seqpacket else need - len(self._buf)
            try:
                chunk = self._sock.recv(want)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise PeerRejected(exc.errno or errno.EPROTO,
                                   "the peer left during the authentication handshake") from exc
            if not chunk:
                raise PeerRejected(errno.EPROTO, "the peer closed the connection during the authentication handshake")
            if self._seqpacket and len(chunk) != need:
                raise PeerRejected(errno.EPROTO, f"malformed authentication message ({len(chunk)} bytes)")
            self._buf += chunk
        out = bytes(self._buf[:need])
        del self._buf[:need]
        return out

    def packet(self) -> bytes | None:
        """One whole packet (SOCK_SEQPACKET; at most MAX_PREAUTH_READ bytes are kept), else None."""
        assert self._seqpacket
        try:
            chunk = self._sock.recv(MAX_PREAUTH_READ)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise PeerRejected(exc.errno or errno.EPROTO, "the peer left during the handshake") from exc
        if not chunk:
            raise PeerRejected(errno.EPROTO, "the peer closed the connection during the handshake")
        return chunk


class ServerHandshake:
    """The server side as a non-blocking state machine, so one slow client never stalls others:
    the authentication (with a *key*), then the client's hello.

    Call :meth:`start` once, then :meth:`step` whenever the socket is readable until it returns
    True; :attr:`peer_max` is then the client's ``max_message_size``.  *hello_tag* is the first
    byte of a hello packet on seqpacket (None: a stream, the hello is a frame).

    Raises (from step):
        PeerRejected: the client failed the authentication (wrong key, or left during it).
        ProtocolError / IncompatibleEndpoint: no valid hello (garbage, another protocol, or the
            client left before its hello was whole).
    """

    def __init__(self, sock: socket.socket, key: bytes | None, seqpacket: bool, deadline: float,
                 hello_tag: bytes | None = None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.peer_max = 0
        self._key = key
        self._seqpacket = seqpacket
        self._hello_tag = hello_tag
        self._reader = _Reader(sock, seqpacket)
        self._nonce = os.urandom(_NONCE)
        self._state = 0
        self._hello_len = -1  # the payload length its header announced (streams)

    def start(self) -> None:
        if self._key is None:
            self._state = 3
            return
        _send_all(self.sock, _MAGIC + self._nonce)
        self._state = 1

    def step(self) -> bool:
        if self._state < 3 and not self._authenticate():
            return False
        if self._state == 3:
            try:
                payload = self._hello()
            except PeerRejected as exc:
                raise ProtocolError(f"a client left before its hello was complete: {exc}") from exc
            if payload is None:
                return False
            self.peer_max = decode_hello(payload, "a client")
            self._state = 4
        return True

    def _hello(self) -> bytes | None:
        """The client's hello payload once whole, else None; reads no byte past it."""
        if self._seqpacket:
            packet = self._reader.packet()
            if packet is None:
                return None
            if packet[:1] != self._hello_tag:
                raise ProtocolError("a client did not start with an ipckit hello packet")
            return packet[1:]
        if self._hello_len < 0:
            header = self._reader.read(HEADER_SIZE)
            if header is None:
                return None
            try:
                flags, n, _ = decode_header(header, 0, 0, 0)  # ProtocolError for anything but a frame
            except MessageTooLarge:
                flags = 0  # a message frame: not a hello either
            if not flags & FLAG_HELLO:
                raise ProtocolError("a client did not start with an ipckit hello frame")
            assert n <= HELLO_MAX  # decode_header bounds a hello
            self._hello_len = n
        return self._reader.read(self._hello_len)

    def _authenticate(self) -> bool:
        assert self._key is not None
        if self._state == 1:
            reply = self._reader.read(_REPLY)
            if reply is None:
                return False
            if reply[:4] != _MAGIC:
                raise PeerRejected(errno.EPROTO, "the peer does not speak the ipckit authentication handshake")
            nonce_c = reply[4 : 4 + _NONCE]
            expected = _mac(self._key, b"c", self._nonce, nonce_c)
            if not hmac.compare_digest(expected, reply[4 + _NONCE :]):
                try:
                    _send_all(self.sock, b"\x00" * _VERDICT)
                except PeerRejected:
                    pass
                raise PeerRejected(errno.EACCES, "a client failed authentication (wrong authkey)")
            _send_all(self.sock, b"\x01" + _mac(self._key, b"s", nonce_c, self._nonce))
            self._state = 2
        if self._state == 2:
            ack = self._reader.read(_ACK)
            if ack is None:
                return False
            if ack != b"\x01":
                raise PeerRejected(errno.EACCES, "the client rejected this server's authentication (wrong authkey)")
            self._state = 3
        return True


def client_handshake(sock: socket.socket, key: bytes, seqpacket: bool, deadline: Deadline) -> None:
    """Run the client side on a non-blocking socket before *deadline*.

    Raises:
        PeerRejected: wrong key on either side, or a peer that does not follow the protocol.
        ChannelTimeout: the server did not complete the handshake in time.
    """
    reader = _Reader(sock, seqpacket)
    poller = select.poll()
    poller.register(sock, select.POLLIN)

    def read(n: int) -> bytes:
        while True:
            data = reader.read(n)
            if data is not None:
                return data
            if not poller.poll(poll_ms(deadline)):
                raise ChannelTimeout("the server did not complete the authentication handshake in time")

    hello = read(_HELLO)
    if hello[:4] != _MAGIC:
        raise PeerRejected(errno.EPROTO, "the server does not speak the ipckit authentication handshake "
                           "(does it use an authkey?)")
    nonce_s = hello[4:]
    nonce_c = os.urandom(_NONCE)
    _send_all(sock, _MAGIC + nonce_c + _mac(key, b"c", nonce_s, nonce_c))
    verdict = read(_VERDICT)
    if verdict[:1] != b"\x01":
        raise PeerRejected(errno.EACCES, "the server rejected our authentication (wrong authkey)")
    if not hmac.compare_digest(verdict[1:], _mac(key, b"s", nonce_c, nonce_s)):
        try:
            _send_all(sock, b"\x00")
        except PeerRejected:
            pass
        raise PeerRejected(errno.EACCES, "the server failed authentication (wrong authkey)")
    _send_all(sock, b"\x01")
