"""
TLS for the Deepgram leg on the stdlib's ``ssl`` module: memory BIOs under a thin Twisted protocol.

Every real call reaches Deepgram over ``wss://``. Twisted's own TLS (``TLSMemoryBIOProtocol``,
pyOpenSSL memory BIOs through cffi) cost 12.1-12.6 µs per 166-byte record pair (a 20 ms audio
frame out and one in, encrypt + decrypt) against 2.0-2.1 µs for the stdlib's ``ssl.SSLObject``
over ``ssl.MemoryBIO`` (C end to end; ``python -m gateway.bench.unitcost``). Around the records it
added more: its ``BufferingTLSTransport`` schedules a ``callLater(0)`` per small write to gather
them (11.5 % of the gateway's samples under py-spy at 150 calls), and its ciphertext went through
the TCP transport's buffered ``write``, registering the socket for writability and unregistering
it again for every frame (``EPollReactor._add``, 4.6 %), since the fast lane's `write_now` only
writes straight to plain TCP. So the gateway's TLS mode cost 1.31-1.57x its plain relay per call
(BENCHMARKS.md, issue 21 items 3-4).

`TLSClientProtocol` is the leg's transport and the TCP connection's protocol. A write is encrypted
at once (``SSLObject.write``: one frame, one TLS record) and the ciphertext goes to the socket
with `write_now`, in the same call: no reactor turn, no ``callLater``, no ``epoll_ctl`` while the
socket takes it. A read feeds the incoming BIO and decrypts every complete record in one loop,
handing the leg one string per read.

Measured (issue 21, item 3; Twisted's TLS at e739dc7 against this layer):

- per 166-byte record pair, ``python -m gateway.bench.unitcost``: Twisted's TLS 12.8 µs, this
  layer 3.3 µs (encrypt 1.4, decrypt 1.8), the bare ``SSLObject`` under it 2.0 µs;
- instructions per relayed frame pair, one call, ``python -m gateway.bench.hotpath --callgrind
  --frames 1000 [--mode tls]`` (the harness's own server-side TLS included): relay 154.8k-156.3k;
  ``wss://`` on Twisted's TLS 326.0k (2.11x relay), on this layer 203.6k (1.30x relay): what TLS
  adds per frame pair fell from 171k to 47k instructions (about 30k of the 47k are OpenSSL's
  own record work, the harness's included). Ten calls per reactor turn (``--calls 10 --frames
  200``): relay 137.3k / 134.4k, ``wss://`` 303.2k (2.21x) -> 183.7k (1.37x);
- memory, RSS per call with 100 calls open in the harness's process (its own TLS included):
  relay 74 KB, ``wss://`` on Twisted's TLS 128 KB, on this layer 103 KB;
- system calls per frame pair (``strace -f -c``, harness included): relay 10; ``wss://`` on
  Twisted's TLS 13 (two ``epoll_ctl`` per frame pair, one more ``read`` by the harness's ssl
  socket), on this layer 11 (the harness's ``read`` only): the gateway makes the same system
  calls on ``wss://`` as on ``ws://``.

What it keeps from Twisted's ``twisted/protocols/tls.py``:

- the inner protocol is connected at once and its writes wait, in order, until the handshake is
  done (Autobahn writes its upgrade request in ``connectionMade``); data that came with the last
  handshake flight is read at once; TLS 1.3 post-handshake messages (session tickets) are read
  by OpenSSL and ignored;
- a failed handshake (certificate refused, wrong host name) sends OpenSSL's alert, closes the
  TCP connection and reaches the inner protocol's ``connectionLost`` with the ``ssl.SSLError``
  (e.g. ``ssl.SSLCertVerificationError``) as the reason; an error after the handshake likewise;
- ``loseConnection`` sends close_notify first (before the handshake is done: abort, as Twisted
  does, since nothing could be said), writes after it are dropped; a close_notify from the peer
  is answered with ours and the connection closes cleanly (``ConnectionDone``); a peer that
  closes TCP without close_notify is ``ConnectionLost`` (a truncation, as Twisted reports it);
- ``abortConnection`` delivers nothing more and aborts the TCP connection;
- producers pass through to the TCP transport (`gateway.legs.pressure` registers the leg's
  `Pressure` there and gives the TCP transport the send budget: ``tcp_transport``).

What it leaves out: server side, renegotiation initiated by us, ALPN, client certificates,
``ISSLTransport`` (Autobahn would then ask for a pyOpenSSL handle to compute ``tls-unique``, which
nothing in the gateway uses) and non-streaming producers. After loseConnection it does not wait
for the peer's close_notify (RFC 8446 §6.1 allows closing at once): the TCP connection closes once
its buffer is written. Twisted waits, and with a producer registered (the leg's `Pressure`) it
does not even send close_notify until the producer is unregistered (by its code). No case was
found that needs Twisted's TLS on this leg, so it is not kept as a fallback; ``twisted[tls]``
stays a dependency for the simulator's ``wss://`` client and ``ssl:`` listening ports.

Verification is as before: the platform's trust store (``ssl.create_default_context``, which
reads ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, as the tests and the bench do), SNI and the
host name checked against the URL's host, TLS 1.2 at least. One ``SSLContext`` per host per
process (`client_context`): a context holds the loaded trust store (hundreds of kilobytes with a
full CA bundle), which per call would cost memory and slow every handshake.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.legs.wire import write_now

__all__ = ["TLSClientProtocol", "TLSClientFactory", "client_context"]

#: Plaintext read per ``SSLObject.read``: one full TLS record (a read returns at most one).
_RECORD_MAX = 16384


@lru_cache(maxsize=16)
def client_context(host: str) -> ssl.SSLContext:
    """
    The client ``SSLContext`` used for ``host``, made once per process and shared by every call:
    the platform's trust store (or ``SSL_CERT_FILE``), certificate and host name required, TLS
    1.2 or later. (``host`` only keys the cache, as ``client_tls_options`` did before: the name
    checked is given per connection.)
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@implementer(ITransport)
class TLSClientProtocol(Protocol):
    """
    The TLS client side of one TCP connection: the TCP transport's protocol, and the transport
    of ``wrapped`` (the Deepgram leg's Autobahn protocol).
    """

    #: The TCP transport (a ``tcp.Client``; typed loosely: ITransport lacks what TCP has).
    transport: Any = None
    #: The inner protocol asked to close (or aborted): its later writes are dropped.
    disconnecting = False
    #: True from ``makeConnection`` until the TCP connection is lost.
    connected = False
    #: The TLS handshake has completed.
    handshake_done = False
    #: The TLS session is over (closed, failed or aborted): nothing more is encrypted or read.
    _tls_over = False
    _aborted = False
    #: The peer's close_notify came: its end of the TLS session is a clean one.
    _peer_closed = False
    #: The failure the inner protocol's ``connectionLost`` gets instead of the TCP one.
    _reason: Failure | None = None

    def __init__(self, context: ssl.SSLContext, host: str, wrapped: IProtocol) -> None:
        self._context = context
        self._host = host
        self.wrapped = wrapped
        self._pending: list[bytes] = []
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None

    @property
    def tcp_transport(self) -> Any:
        """The TCP transport under the TLS layer: its buffer is what waits to be sent."""
        return self.transport

    # --- the TCP side ----------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.connected = True
        self.transport = transport
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing,
                                           server_hostname=self._host)
        # As Twisted: the inner protocol first (its writes wait for the handshake), then the
        # ClientHello.
        self.wrapped.makeConnection(self)
        self._handshake()

    def dataReceived(self, data: bytes) -> None:
        if self._tls_over:
            return
        self._incoming.write(data)
        if not self.handshake_done:
            self._handshake()
            if not self.handshake_done:
                return
        self._read()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._tls_over:
            # The TCP connection ended under a live TLS session: decrypt what came before it,
            # then see how it ended. Without the peer's close_notify OpenSSL reports an EOF in
            # violation of the protocol, a truncation: ConnectionLost, as Twisted reports it.
            self._incoming.write_eof()
            if self.handshake_done:
                self._read(eof=True)
            else:
                self._handshake()
            if not self._tls_over and self._reason is None and not self._peer_closed:
                self._reason = Failure(ConnectionLost("the TLS peer closed without close_notify"))
            self._tls_over = True
        self.connected = False
        reason, self._reason = self._reason or reason, None
        self.wrapped.connectionLost(reason)

    # --- TLS -------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand whatever OpenSSL wrote (handshake, alerts, records) to the socket."""
        out = self._outgoing.read()
        if out:
            write_now(self.transport, out)

    def _handshake(self) -> None:
        if self._aborted:
            return
        tls: Any = self._tls
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError:
            self._failed(Failure())
            return
        self.handshake_done = True
        pending, self._pending = self._pending, []
        if pending:
            self._encrypt(b"".join(pending))
        else:
            self._flush()  # the client's Finished
        if self.disconnecting and not self._tls_over:
            self._close_notify()

    def _encrypt(self, data: bytes) -> None:
        tls: Any = self._tls
        try:
            tls.write(data)
        except ssl.SSLWantReadError:
            # OpenSSL waits for the peer (a renegotiation): keep the bytes, in order.
            self._pending.append(data)
            self._flush()
            return
        except ssl.SSLError:
            self._failed(Failure())
            return
        out = self._outgoing.read()
        if out:
            write_now(self.transport, out)

    def _read(self, eof: bool = False) -> None:
        """
        Decrypt every complete record the incoming BIO holds; deliver them as one string. The
        loop stops when the BIO is empty rather than on OpenSSL's "want read" (an exception per
        read costs as much as the decryption); OpenSSL does not read ahead, so what it has not
        consumed is still in the BIO. With ``eof`` (the TCP connection is gone) it reads until
        OpenSSL says how the session ended.
        """
        read = self._tls.read  # type: ignore[union-attr]
        incoming = self._incoming
        chunks = []
        ended: Failure | None = None
        closed = False
        while eof or incoming.pending:
            try:
                chunk = read(_RECORD_MAX)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = self._peer_closed = True
                break
            except ssl.SSLError:
                ended = Failure()
                break
            if not chunk:
                # The peer's close_notify (CPython returns b"" for it, or raises the above
                # once we have sent ours).
                closed = self._peer_closed = True
                break
            chunks.append(chunk)
        if self._pending and not closed and ended is None:
            # A read may have completed what a write waited for.
            pending, self._pending = self._pending, []
            self._encrypt(b"".join(pending))
            if self.disconnecting and not self._pending and not self._tls_over:
                self._close_notify()
        if self._outgoing.pending:
            self._flush()  # e.g. a KeyUpdate's answer
        if chunks and not self._aborted:
            self.wrapped.dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if closed and not self._tls_over:
            # The peer's close_notify: answer with ours, then close TCP (ConnectionDone).
            self._close_notify()
        elif ended is not None and not self._tls_over:
            self._failed(ended)

    def _close_notify(self) -> None:
        """Send close_notify and close the TCP connection once its buffer is written."""
        self._tls_over = True
        try:
            self._tls.unwrap()  # type: ignore[union-attr]
        except ssl.SSLError:
            pass  # SSLWantReadError: the peer's close_notify has not come (we do not wait)
        self._flush()
        self.transport.loseConnection()

    def _failed(self, failure: Failure) -> None:
        """A TLS error: send OpenSSL's alert, close TCP; the inner protocol gets ``failure``."""
        if self._reason is None:
            if isinstance(failure.value, ssl.SSLEOFError):
                failure = Failure(ConnectionLost("the TLS peer closed without close_notify"))
            self._reason = failure
        self._tls_over = True
        self._flush()
        self.transport.loseConnection()

    # --- the inner protocol's transport ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self._tls_over or not data:
            return
        if not self.handshake_done or self._pending:
            self._pending.append(data)
            return
        tls: Any = self._tls
        try:
            tls.write(data)
        except ssl.SSLError:
            self._encrypt(data)  # the uncommon paths, with their handling
            return
        write_now(self.transport, self._outgoing.read())

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        if self._tls_over:
            self.transport.loseConnection()
        elif not self.handshake_done:
            # As Twisted: a close_notify cannot be sent before the handshake is done.
            if not self._pending:
                self.abortConnection()
            # else: the pending writes go once the handshake is done, then close_notify
        elif not self._pending:
            self._close_notify()

    def abortConnection(self) -> None:
        self._aborted = True
        self.disconnecting = True
        self._tls_over = True
        if self.connected:
            self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return bool(self.transport.getTcpNoDelay())

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Straight to the TCP transport: the TLS layer buffers nothing once the handshake is done."""
        if not self.connected:
            producer.stopProducing()
            return
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def logPrefix(self) -> str:
        return "TLSClientProtocol"


@implementer(IProtocolFactory)
class TLSClientFactory(Factory):
    """Wraps each protocol of ``wrapped`` (a client factory) in a `TLSClientProtocol` for ``host``."""

    noisy = False

    def __init__(self, wrapped: Any, host: str, context: ssl.SSLContext | None = None) -> None:
        self.wrapped = wrapped
        self.host = host
        self.context = context if context is not None else client_context(host)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> TLSClientProtocol | None:  # type: ignore[override]
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        return TLSClientProtocol(self.context, self.host, inner)
