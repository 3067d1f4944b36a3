"""
The load side's event loop: plain epoll, non-blocking sockets (optionally TLS), a heap of 20 ms
deadlines and a JSON-lines control channel on stdin/stdout. Deliberately not Twisted: the load
side must stay far cheaper than the gateway it measures (perf-notes §4.1).
"""

from __future__ import annotations

import errno
import heapq
import json
import os
import select
import socket
import ssl
import sys
import time
from typing import Any, Callable

__all__ = ["Loop", "Conn", "Commands", "percentiles", "FRAME_NS", "BURST_SLOTS", "phase_ns"]

FRAME_NS = 20_000_000
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_GOLDEN = 0.6180339887498949
_WANT = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError)
#: Bytes asked of each recv. Under glibc's mmap threshold (128 KiB until a larger block is
#: freed): a 256 KiB request made every recv mmap, mremap and munmap its buffer and fault its
#: first page, about 20 µs of kernel time per read, which dwarfed the floor's own work.
_READ = 65536


#: ``--burst``: the calls' frames leave in this many slots of the 20 ms period (2 ms apart).
BURST_SLOTS = 10


def phase_ns(index: int, offset: float = 0.0, burst: bool = False) -> int:
    """
    Where in the 20 ms period call ``index`` sends: a golden-ratio spread, even for any count;
    with ``burst``, one of `BURST_SLOTS` slots 2 ms apart (call ``index`` in slot ``index % 10``),
    so that the frames of a tenth of the calls leave together. ``offset`` is a fraction of the
    period (of a slot with ``burst``), so the peer's slots fall between the load generator's.
    """
    if burst:
        return int(((index % BURST_SLOTS + offset) % BURST_SLOTS) * FRAME_NS / BURST_SLOTS)
    return int(((index * _GOLDEN + offset) % 1.0) * FRAME_NS)


def percentiles(samples: list[int] | Any, points: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds."""
    data = sorted(samples)
    out: dict[str, float | None] = {}
    for p in points:
        key = f"p{p:g}"
        if not data:
            out[key] = None
            continue
        rank = max(0, min(len(data) - 1, int(round(p / 100.0 * len(data) + 0.5)) - 1))
        out[key] = data[rank] / 1e6
    out["n"] = len(data)
    out["max"] = data[-1] / 1e6 if data else None
    return out


class Conn:
    """A non-blocking stream socket with a write buffer; subclasses implement ``data_received``."""

    def __init__(self, loop: "Loop", sock: socket.socket, connecting: bool = False,
                 tls: ssl.SSLContext | None = None, server_side: bool = False) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.wbuf = b""
        self.closed = False
        self.connecting = connecting
        self.tls = tls
        self.server_side = server_side
        self.handshaking = False
        if tls is not None and not connecting:
            self._wrap()
        loop.add(self.fd, self, _IN | _OUT if (connecting or self.handshaking) else _IN)

    def _wrap(self) -> None:
        self.sock = self._tls().wrap_socket(self.sock, server_side=self.server_side,
                                            do_handshake_on_connect=False)
        self.handshaking = True

    def _tls(self) -> ssl.SSLContext:
        """The TLS context (only called on a TLS connection)."""
        if self.tls is None:
            raise RuntimeError("not a TLS connection")
        return self.tls

    # -- hooks
    def connection_made(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, why: str) -> None:
        pass

    # -- I/O
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.wbuf or self.connecting or self.handshaking:
            self.wbuf += data
            return
        try:
            n = self.sock.send(data)
        except _WANT:
            n = 0
        except OSError as e:
            self.close(f"send: {e}")
            return
        if n < len(data):
            self.wbuf = data[n:]
            self.loop.modify(self.fd, _IN | _OUT)

    def close(self, why: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.connection_lost(why)

    def on_event(self, events: int) -> None:
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.close(f"connect: {os.strerror(err)}")
                return
            if not events & (_OUT | _ERR):
                return
            self.connecting = False
            if self.tls is not None:
                self._wrap()
            else:
                self.loop.modify(self.fd, _IN | _OUT if self.wbuf else _IN)
                self.connection_made()
        if self.handshaking and isinstance(self.sock, ssl.SSLSocket):
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.loop.modify(self.fd, _IN)
                return
            except ssl.SSLWantWriteError:
                self.loop.modify(self.fd, _IN | _OUT)
                return
            except (OSError, ssl.SSLError) as e:
                self.close(f"tls: {e}")
                return
            self.handshaking = False
            self.loop.modify(self.fd, _IN | _OUT if self.wbuf else _IN)
            self.connection_made()
            events |= _IN
        if events & _OUT and self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except _WANT:
                n = 0
            except OSError as e:
                self.close(f"send: {e}")
                return
            self.wbuf = self.wbuf[n:]
            if not self.wbuf:
                self.loop.modify(self.fd, _IN)
        if events & (_IN | _ERR):
            tls = self.tls is not None
            while not self.closed:
                try:
                    data = self.sock.recv(_READ)
                except _WANT:
                    return
                except OSError as e:
                    self.close(f"recv: {e}")
                    return
                if not data:
                    self.close("eof")
                    return
                self.data_received(data)
                if not tls and len(data) < _READ:
                    return


class Loop:
    """epoll plus a deadline heap plus the control channel (one JSON object per line)."""

    def __init__(self, on_command: Callable[[dict], Any], control: bool = True) -> None:
        """``control``: read commands from stdin (False: a loop driven in-process, `turn`)."""
        self.ep = select.epoll()
        self.handlers: dict[int, Any] = {}
        self.timers: list[tuple[int, int, Any]] = []
        self._tie = 0
        self.running = True
        self.on_command = on_command
        self._stdin_fd = -1
        self._cmd_buf = b""
        if control:
            self._stdin_fd = sys.stdin.fileno()
            os.set_blocking(self._stdin_fd, False)
            self.ep.register(self._stdin_fd, _IN)

    def add(self, fd: int, obj: Any, mask: int) -> None:
        self.handlers[fd] = obj
        self.ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        try:
            self.ep.modify(fd, mask)
        except OSError:
            pass

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def call_at(self, when_ns: int, func: Any) -> None:
        """Run ``func(now_ns, when_ns)`` at ``when_ns`` (monotonic); it may return a next deadline."""
        self._tie += 1
        heapq.heappush(self.timers, (when_ns, self._tie, func))

    def reply(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def _read_commands(self) -> None:
        try:
            chunk = os.read(self._stdin_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.running = False
            return
        self._cmd_buf += chunk
        while b"\n" in self._cmd_buf:
            line, self._cmd_buf = self._cmd_buf.split(b"\n", 1)
            if line.strip():
                answer = self.on_command(json.loads(line))
                if answer is not None:
                    self.reply(answer)

    def run(self) -> None:
        timers = self.timers
        handlers = self.handlers
        poll = self.ep.poll
        now_ns = time.monotonic_ns
        while self.running:
            self._turn(timers, handlers, poll, now_ns)

    def turn(self, timeout: float = 0.0) -> None:
        """One pass: the timers due, then one poll of at most ``timeout`` s (the caps apply)."""
        self._turn(self.timers, self.handlers, self.ep.poll, time.monotonic_ns, timeout)

    def _turn(self, timers: list, handlers: dict, poll: Any, now_ns: Any,
              cap: float = 0.1) -> None:
        now = now_ns()
        while timers and timers[0][0] <= now:
            when, _, func = heapq.heappop(timers)
            nxt = func(now, when)
            if nxt is not None:
                self._tie += 1
                heapq.heappush(timers, (nxt, self._tie, func))
        if timers:
            timeout = max(0.0, (timers[0][0] - now_ns()) / 1e9)
            timeout = min(timeout, cap)
        else:
            timeout = cap
        try:
            events = poll(timeout)
        except InterruptedError:
            return
        for fd, ev in events:
            if fd == self._stdin_fd:
                self._read_commands()
                continue
            obj = handlers.get(fd)
            if obj is not None:
                obj.on_event(ev)


class Commands:
    """
    The command base of the load-side processes (load generator, peer, floor): a `Loop` whose
    control channel dispatches ``{"cmd": NAME, ...}`` to the method ``cmd_NAME``, which returns
    the answer (or None to answer later, through ``loop.reply``). Every process answers
    ``exit``; the measuring sides (`measures`) also ``mark`` and ``endwindow``: a measured
    window's own CPU, scheduling lateness of the 20 ms deadlines (``lateness``, appended by the
    subclass while ``in_window``) and the one-way latencies it saw (``latency``), reported under
    `latency_key`.
    """

    #: The name ``endwindow`` gives the latencies this side measures.
    latency_key = "latency"

    def __init__(self, control: bool = True) -> None:
        self.loop = Loop(self.command, control)
        self.in_window = False
        self.lateness: list[int] = []
        self.latency: list[int] = []
        self._cpu0 = 0.0
        self._t0 = 0.0

    def command(self, cmd: dict) -> dict | None:
        handler = getattr(self, "cmd_" + str(cmd.get("cmd")), None)
        if handler is None:
            return {"error": f"unknown command {cmd.get('cmd')!r}"}
        answer: dict | None = handler(cmd)
        return answer

    def cmd_exit(self, cmd: dict) -> dict:
        self.loop.running = False
        return {"ok": True}

    def cmd_mark(self, cmd: dict) -> dict:
        self.lateness, self.latency = [], []
        self.in_window = True
        self._cpu0 = time.process_time()
        self._t0 = time.monotonic()
        return {"ok": True}

    def cmd_endwindow(self, cmd: dict) -> dict:
        self.in_window = False
        cpu = time.process_time() - self._cpu0
        wall = time.monotonic() - self._t0
        return {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100.0 * cpu / wall,
                "lateness": percentiles(self.lateness),
                self.latency_key: percentiles(self.latency)}


def connect_nonblocking(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, os.strerror(err))
    return sock
