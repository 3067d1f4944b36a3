"""
The fast lane of a leg's WebSocket: whole data frames in and out without Autobahn's per-frame
machinery, everything else through Autobahn.

A call is 50 small frames a second in each direction on each leg. For each one Autobahn runs a
frame parser that copies its buffer twice, a masker object created through cffi, nine callbacks,
eager log formatting (``hltype``/``hlval``) and a Deferred for the ``message`` observers; writing
one goes through four methods, the same log formatting and Twisted's buffer, which costs two
``epoll_ctl`` calls per frame (perf-notes §4.3, BENCHMARKS.md profile). That is most of the
gateway's CPU.

`FastLane` is mixed into the legs' Autobahn protocols. Once the connection is open it takes the
common case itself:

- **In**: a read that starts at a frame boundary (nothing buffered in Autobahn, no message in
  progress) is scanned for complete, unfragmented text or binary frames (FIN set, no RSV bits,
  masked from clients, unmasked from servers, within the leg's size limits; text checked to be
  UTF-8). Each goes straight to ``onMessage``. At the first frame that is anything else (a
  control frame, a fragment, a partial frame, a violation, an oversize or invalid-UTF-8 message)
  the rest of the read is handed to Autobahn, which parses it, answers pings and closes, and
  fails the connection with the right code exactly as it would have. The next read that starts
  at a frame boundary is the fast lane's again.
- **Out**: ``sendMessage`` of an unfragmented message builds the frame itself (masked with a
  fresh random key on the client side, RFC 6455 §5.3) and writes it with `write_now`.

The lane reaches into Autobahn's internals (its parser's state, send queue, options and traffic
counters), so it opens only on the Autobahn releases it was written and tested against,
`AUTOBAHN_RANGE`: on any other, every frame takes Autobahn's own path (the same behaviour, at
Autobahn's cost) and the first connection logs a warning, ``WIRE_AUTOBAHN_UNSUPPORTED``. Widen the
range once ``tests/test_wire.py`` (differential against stock Autobahn) passes on the new release.

What is not reproduced: Autobahn's ``message`` observers (``protocol.on("message", ...)``,
which nothing in the gateway uses), per-frame ``logFrames``/``logOctets``/``trackTimings``
(when any of those is on, or per-message compression was negotiated, the lane stays closed and
Autobahn does everything), and Autobahn's ``trafficStats``, which then count only what Autobahn
itself handled (the call keeps its own counters of frames and bytes per leg).
"""

from __future__ import annotations

import errno
import re
from random import getrandbits
from struct import Struct
from typing import Any, Callable

import autobahn
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.logger import Logger

__all__ = ["FastLane", "write_now", "mask", "mask_python", "MASKER", "frame_header",
           "AUTOBAHN_RANGE", "autobahn_supported"]

#: The Autobahn releases the lane was written and tested against (26.10.2, 26.11.1): from the
#: first (year, month) up to, not including, the second.
AUTOBAHN_RANGE = ((26, 10), (27, 0))

_log = Logger(namespace="gateway.legs.wire")
#: Whether the fallback has been logged (once per process).
_fallback_logged = False

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_HEADER_16 = Struct("!BBH")
_MASKED_HEADER_16 = Struct("!BBHI")
_MASKED_HEADER_7 = Struct("!BBI")
#: Larger messages (which need a 64-bit length) always go through Autobahn.
_LANE_LIMIT = 0xFFFF
_RETRY_LATER = (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOBUFS, errno.EINTR)


def mask_python(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` repeated (RFC 6455 §5.3); self-inverse."""
    n = len(payload)
    if not n:
        return b""
    keys = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


# Masking is the largest per-frame cost the lane has left in Python: the big-integer XOR above
# converts every byte twice (about 20k instructions for a 382-byte Twilio media message, 10k for
# 160 bytes of audio towards Deepgram: 14 % of a relayed frame pair, issue 21). The `websockets`
# package ships the same operation in C (``websockets.speedups.apply_mask``: about 1.2k for
# either); it is used when installed, with the same result for every input (tests/test_wire.py).
_apply_mask: Callable[[Any, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask

    _apply_mask = _c_apply_mask
except ImportError:  # not installed, or a build without its C extension
    _apply_mask = None

#: ``mask(payload, key)``: `mask_python`, or the C one of ``websockets`` when it is installed.
mask = _apply_mask if _apply_mask is not None else mask_python
#: Which masking the lane uses ("websockets.speedups" or "python"), for the bench's records.
MASKER = "websockets.speedups" if _apply_mask is not None else "python"


def frame_header(opcode: int, length: int, key: int | None = None) -> bytes:
    """The header of a final, unfragmented frame of ``length`` bytes (at most 65535)."""
    b0 = 0x80 | opcode
    if key is None:
        if length < 126:
            return bytes((b0, length))
        return _HEADER_16.pack(b0, 126, length)
    if length < 126:
        return _MASKED_HEADER_7.pack(b0, 0x80 | length, key)
    return _MASKED_HEADER_16.pack(b0, 0xFE, length, key)


def write_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``, straight to the socket when nothing is queued before it.

    Twisted's ``write`` always buffers and asks the reactor to watch the socket for writability,
    then stops watching once it is written: two ``epoll_ctl`` system calls and a reactor turn for
    every 20 ms frame. A TCP connection whose buffer is empty can take the bytes now; whatever
    the kernel does not take (or any socket error, which Twisted then reports as it always does)
    goes through ``transport.write``, so ordering, backpressure (the leg's `Pressure` producer)
    and connection loss behave as before. Other transports always use ``write``; on ``wss://``
    that is the Deepgram leg's TLS layer (`gateway.legs.tls`), which encrypts at once and hands
    the record to ``write_now`` with the TCP transport beneath it.
    """
    if (
        type(transport) is not tcp.Server and type(transport) is not tcp.Client
    ) or transport._tempDataLen or transport.dataBuffer or transport.disconnecting \
            or not transport.connected or transport._writeDisconnected:
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError as e:
        if e.errno not in _RETRY_LATER:
            # Let Twisted meet the error on its own write and close the connection its way.
            transport.write(data)
            return
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


def autobahn_supported(version: str, supported: tuple = AUTOBAHN_RANGE) -> bool:
    """Whether Autobahn ``version`` (``"26.11.1"``) is within ``supported`` (`AUTOBAHN_RANGE`)."""
    found = re.match(r"(\d+)\.(\d+)(?:\.|$)", version)
    if found is None:
        return False
    release = (int(found.group(1)), int(found.group(2)))
    return bool(supported[0] <= release < supported[1])


def _log_fallback() -> None:
    global _fallback_logged
    if _fallback_logged:
        return
    _fallback_logged = True
    low, high = AUTOBAHN_RANGE
    _log.warn(
        "WebSocket fast lane off: Autobahn {autobahn_version} is outside the releases it was "
        "written against ({low} up to {high}); every frame takes Autobahn's own path (same "
        "behaviour, more CPU per frame)",
        autobahn_version=autobahn.__version__,
        low="{}.{}".format(*low),
        high="{}.{}".format(*high),
        log_category="WIRE_AUTOBAHN_UNSUPPORTED",
    )


def _lane_limit(*limits: int) -> int:
    """The lane's size limit under Autobahn's options ``limits`` (0 means none)."""
    return min([_LANE_LIMIT] + [value for value in limits if value > 0])


class FastLane:
    """
    Mixed into an Autobahn ``WebSocketServerProtocol`` or ``WebSocketClientProtocol`` subclass
    (before it in the bases). The leg calls `open_fast_lane` from ``onOpen``.
    """

    #: Largest payload taken in by the lane (0 while the lane is closed: nothing is taken).
    _lane_in_limit = 0
    #: Largest payload sent out by the lane (-1 while closed, so that even an empty message
    #: goes through Autobahn: with 0, ``b""`` passed ``len > limit`` and went out unmasked).
    _lane_out_limit = -1
    #: Server side: frames in are masked, frames out are not; client side the other way round.
    _lane_server = True
    #: False outside `AUTOBAHN_RANGE`: everything goes through Autobahn, reads and writes alike.
    _lane_allowed = autobahn_supported(autobahn.__version__)

    def open_fast_lane(self) -> None:
        """Open the lane if nothing this connection negotiated or enabled needs Autobahn's path."""
        p: Any = self
        if not self._lane_allowed:
            _log_fallback()
            return
        self._lane_server = bool(p.factory.isServer)
        if (
            p._perMessageCompress is not None
            or p.logFrames
            or p.logOctets
            or p.trackedTimings
            or not p.applyMask
            or p.websocket_version == 0
        ):
            return
        self._lane_in_limit = _lane_limit(p.maxFramePayloadSize, p.maxMessagePayloadSize)
        out_limit = _lane_limit(p.maxMessagePayloadSize, p.autoFragmentSize)
        # Server frames go out unmasked unless Autobahn was told to mask them.
        if self._lane_server and p.maskServerFrames:
            return
        if not self._lane_server and not p.maskClientFrames:
            return
        self._lane_out_limit = out_limit

    # --- in ---------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own dataReceived only adds an eagerly formatted debug log line.
        if not self._lane_allowed:
            super().dataReceived(data)  # type: ignore[misc]
            return
        self._dataReceived(data)

    def _dataReceived(self, data: bytes) -> None:
        p: Any = self
        if (
            not self._lane_in_limit
            or p.state != _STATE_OPEN
            or p.data
            or p.current_frame is not None
            or p.inside_message
        ):
            super()._dataReceived(data)  # type: ignore[misc]
            return
        taken = self._take_frames(data)
        if taken < len(data) and p.state != WebSocketProtocol.STATE_CLOSED:
            # Not ours: Autobahn parses the rest (already counted at wire level).
            p.data = data[taken:] if taken else data
            p.consumeData()

    def _take_frames(self, data: bytes) -> int:
        """Deliver the whole data frames at the start of ``data``; return the bytes used."""
        p: Any = self
        limit = self._lane_in_limit
        masked = 0x80 if self._lane_server else 0
        validate = p.utf8validateIncoming
        end = len(data)
        pos = 0
        while p.state == _STATE_OPEN and end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            # FIN, no RSV, text (0x81) or binary (0x82); masking as the side requires.
            if (b0 != 0x81 and b0 != 0x82) or (b1 & 0x80) != masked:
                break
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not the minimal encoding: a violation Autobahn reports
                start = pos + 4
            elif length == 127:
                break
            if length > limit:
                break
            if masked:
                stop = start + 4 + length
                if stop > end:
                    break
                payload = mask(data[start + 4 : stop], data[start : start + 4])
            else:
                stop = start + length
                if stop > end:
                    break
                payload = data[start:stop]
            binary = b0 == 0x82
            if not binary and validate and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection with 1007
            pos = stop
            if p.autoPingTimeoutCall and p.autoPingRestartOnAnyTraffic:
                p._cancelAutoPingTimeoutCall()
            p.onMessage(payload, binary)
        return pos

    # --- out --------------------------------------------------------------------------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Autobahn's own writes (the handshake response, pings, pongs, close frames) through
        `write_now` as well. Besides saving the reactor turn, this keeps a close frame from being
        lost: when both sides close at once, Autobahn's server side aborts the TCP connection as
        soon as the peer's close arrives, which discarded our own close frame if it was still in
        Twisted's buffer, and the peer saw 1006 instead of the code we sent.
        """
        p: Any = self
        if not self._lane_allowed or sync or chopsize or p.send_queue or p.logOctets:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        write_now(p.transport, data)
        if p.state == _STATE_OPEN:
            p.trafficStats.outgoingOctetsWireLevel += len(data)
        elif p.state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING):
            p.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        p: Any = self
        length = len(payload)
        if (
            length > self._lane_out_limit
            or fragmentSize is not None
            or sync
            or p.state != _STATE_OPEN
            or p.send_queue
            or type(payload) is not bytes
        ):
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[misc]
            return
        # The header is `frame_header`'s, built here: a call less per frame.
        b0 = 0x82 if isBinary else 0x81
        if self._lane_server:
            if length < 126:
                frame = bytes((b0, length)) + payload
            else:
                frame = _HEADER_16.pack(b0, 126, length) + payload
        else:
            key = getrandbits(32)
            if length < 126:
                head = _MASKED_HEADER_7.pack(b0, 0x80 | length, key)
            else:
                head = _MASKED_HEADER_16.pack(b0, 0xFE, length, key)
            frame = head + mask(payload, key.to_bytes(4, "big"))
        write_now(p.transport, frame)
