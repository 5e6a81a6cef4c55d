"""The validators' Raft listener: a listening socket that survives a failed accept.

Why it exists: PySyncObj's TcpServer accepts without bound in one poll event and, after one failed
accept (EMFILE when the process runs out of descriptors), unbinds for good: the validator would never
hear from its peers again. GuardedListener accepts at most accepts_per_event_max connections per poll
event, hands each to the transport (which caps the connections in handshake), and on a failure logs
it, closes the pending unauthenticated connections (the likely cause of EMFILE) and rebinds from the
tick, backing off from listener_rebind_delay_ms up to listener_rebind_delay_max_ms until it works. The
counters feed the transport's status() for GET /health.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Protocol

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE

# Logged under the transport's name: operators filter on it, and the listener is part of the transport.
logger = logging.getLogger("node.raft_transport")


class ListenerOwner(Protocol):
    """What the listener needs of its transport (node.raft_transport.SecureTransport); a protocol, so
    this module does not import the transport that imports it."""
    poller: object
    limits: object                          # RaftTransportLimits: accepts_per_event_max, listener_rebind_delay*_ms

    def incoming_socket(self, sock: socket.socket, peer: tuple) -> None: ...

    def close_unauthenticated(self) -> int: ...


class GuardedListener:
    """PySyncObj's TcpServer, with a bounded accept loop, a cap on connections in handshake, and a
    rebind after a failed accept (TcpServer unbinds and never binds again)."""

    def __init__(self, transport: ListenerOwner, host: str, port: int) -> None:
        self._transport = transport
        self._host, self._port = host, int(port)
        self._socket: socket.socket | None = None
        self._fileno: int | None = None
        self.listening = False
        self.failures = 0
        self.rebinds = 0
        self.last_error: str | None = None
        self._rebind_at: float | None = None          # monotonic seconds (PySyncObj's clock)
        self._rebind_delay_ms = transport.limits.listener_rebind_delay_ms

    def bind(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._socket, self._fileno = sock, sock.fileno()
        self._transport.poller.subscribe(self._fileno, self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
        self.listening = True

    def unbind(self) -> None:
        self.listening = False
        if self._fileno is not None:
            self._transport.poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def accept(self) -> tuple[socket.socket, tuple]:
        """One accept (a method of its own so a test can make it fail with EMFILE)."""
        return self._socket.accept()

    def _on_event(self, descriptor: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.ERROR:
            self._failed("the listening socket reported an error")
            return
        for _ in range(self._transport.limits.accepts_per_event_max):
            try:
                sock, peer = self.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._failed(f"accept failed: {errno.errorcode.get(error.errno, error.errno)} ({error.strerror})")
                return
            self._transport.incoming_socket(sock, peer)

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        closed = self._transport.close_unauthenticated()
        self.unbind()
        self._rebind_at = monotonic_time() + self._rebind_delay_ms / 1000
        logger.error("raft listener on %s:%s stopped: %s; closed %d unauthenticated connections, rebinding in %d ms",
                     self._host, self._port, reason, closed, self._rebind_delay_ms)

    def stop_rebinding(self) -> None:
        self._rebind_at = None

    def maintain(self) -> None:
        """From the tick: rebind if a failure unbound the listener."""
        if self.listening or self._rebind_at is None or monotonic_time() < self._rebind_at:
            return
        try:
            self.bind()
        except OSError as error:
            self._rebind_delay_ms = min(self._rebind_delay_ms * 2, self._transport.limits.listener_rebind_delay_max_ms)
            self._rebind_at = monotonic_time() + self._rebind_delay_ms / 1000
            self.last_error = f"rebind failed: {error.strerror}"
            logger.error("raft listener on %s:%s could not rebind (%s); next try in %d ms", self._host, self._port,
                         error.strerror, self._rebind_delay_ms)
            return
        self.rebinds += 1
        self._rebind_at = None
        self._rebind_delay_ms = self._transport.limits.listener_rebind_delay_ms
        logger.warning("raft listener on %s:%s is listening again (rebind %d after %d failures)", self._host,
                       self._port, self.rebinds, self.failures)
