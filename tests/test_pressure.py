"""Backpressure: Twisted's own buffer accounting drives the congested flag, and the call drops audio."""

from __future__ import annotations

from twisted.internet import abstract, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.events import Audio, DeepgramEvent
from gateway.legs.pressure import attach
from tests.test_call import CallHarness


class _Stuck(abstract.FileDescriptor):
    """A transport whose peer never reads: every write stays buffered."""

    def __init__(self) -> None:
        super().__init__(reactor=_NoReactor())
        self.connected = True

    def writeSomeData(self, data: bytes) -> int:
        return 0

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass


class _RecordingSocket:
    """Enough of a socket for a ``tcp.Connection``: records the sizes asked of ``recv``."""

    def __init__(self) -> None:
        self.recv_sizes: list[int] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def recv(self, size: int) -> bytes:
        self.recv_sizes.append(size)
        return b"x"


class _NoReactor:
    def callLater(self, *a, **k):  # pragma: no cover - not used
        raise AssertionError


class PressureTests(SynchronousTestCase):
    """The budget limits the send buffer only; a producer left by twisted.web is replaced."""

    def test_pause_at_budget(self) -> None:
        """Congested once more than the budget waits; not before."""
        transport = _Stuck()
        pressure = attach(transport, 4096)
        transport.write(b"x" * 4096)
        self.assertFalse(pressure.congested)
        transport.write(b"x")
        self.assertTrue(pressure.congested)
        pressure.resumeProducing()
        self.assertFalse(pressure.congested)

    def test_budget_is_write_side_only(self) -> None:
        """
        The transport's read size stays Twisted's 64 KiB: only what waits to be written is
        held to the budget (a 1 MiB read buffer made every recv an mmap and a munmap).
        """
        transport = _Stuck()
        attach(transport, 1024 * 1024)
        self.assertEqual(transport.bufferSize, abstract.FileDescriptor.bufferSize)
        self.assertEqual(transport.bufferSize, 64 * 1024)

    def test_tcp_reads_keep_twisted_size(self) -> None:
        """A leg's TCP connection asks recv for 64 KiB, and still pauses only past the budget."""
        sock = _RecordingSocket()
        transport = tcp.Connection(sock, Protocol(), _NoReactor())
        transport.connected = True
        transport.startWriting = lambda: None  # type: ignore[method-assign]
        pressure = attach(transport, 200 * 1024)
        transport.doRead()
        self.assertEqual(sock.recv_sizes, [64 * 1024])
        transport.write(b"x" * (200 * 1024))
        self.assertFalse(pressure.congested)
        transport.write(b"x")
        self.assertTrue(pressure.congested)

    def test_replaces_http_channel(self) -> None:
        """The HTTP channel registered by twisted.web gives way."""
        transport = StringTransport()
        old = object()
        transport.registerProducer(old, True)
        pressure = attach(transport, 1000)
        self.assertIs(transport.producer, pressure)


class CallDropTests(SynchronousTestCase):
    """The call's policy: drop audio towards a congested peer, count it, keep control messages."""

    def test_drops(self) -> None:
        """Audio both ways is dropped and counted while its peer is congested."""
        h = CallHarness()
        h.start()
        h.open_upstream()
        h.call.from_upstream(DeepgramEvent("SettingsApplied", {"type": "SettingsApplied"}))
        h.upstream.congested = True
        h.caller.congested = True
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.call.upstream_audio(Audio(b"\x02" * 160, "outbound"))
        h.call.from_upstream(DeepgramEvent("UserStartedSpeaking", {"type": "UserStartedSpeaking"}))
        self.assertEqual(h.upstream.audio(), b"")
        self.assertIn(("clear", None), h.caller.sent)
        self.assertNotIn("audio", [k for k, _ in h.caller.sent])
        counters = h.call.info.counters
        self.assertEqual(counters[("frames_dropped", (("reason", "deepgram_backpressure"),))], 1)
        self.assertEqual(counters[("frames_dropped", (("reason", "caller_backpressure"),))], 1)
        h.upstream.congested = False
        h.call.caller_audio(Audio(b"\x03" * 160))
        self.assertEqual(h.upstream.audio(), b"\x03" * 160)
