"""
The production shapes' unit costs (issue 21, item 3), measured in one process:

* **TLS per record**, both ways, for a 166-byte record (a 160-byte binary audio frame with its
  WebSocket header, what the gateway sends Deepgram 50 times a second per call): Twisted's
  `TLSMemoryBIOProtocol` (what the gateway's ``wss://`` ran before: pyOpenSSL memory BIOs under a
  Python protocol), bare pyOpenSSL memory BIOs (its floor: the cffi calls only), and the stdlib's
  ``ssl.SSLObject`` memory BIOs (what a C-level TLS costs from Python), and the Deepgram leg's
  own layer on them (`gateway.legs.tls`, what the gateway's ``wss://`` runs since issue 21's
  item 3: the stdlib's BIOs under a thin Twisted protocol);
* **the transcoder per 20 ms frame** each way (`gateway.codecs.transcode.Transcoder`: mu-law 8 kHz
  to linear16 16 kHz, and back), and the resampler alone;
* **batching the 8 -> 16 kHz resampler across calls**: the same filter arithmetic for K calls' frames
  in one BLAS product (K x 160 windows) against K calls of `Resampler.process`, to see whether
  gathering a reactor tick's frames would pay.

    python -m gateway.bench.unitcost [--repeat 7] [--json out.json]

Medians of ``repeat`` timings of this process's CPU time, in microseconds; single-threaded, on
whatever CPU it is given (``taskset -c 0``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

__all__ = ["main", "tls_costs", "transcode_costs", "batching_costs"]

RECORD = bytes(6) + bytes(range(160))  # a 160-byte binary frame with its 6-byte masked header


def _per_call(fn: Callable[[Any], None], n: int, repeat: int,
              prepare: Callable[[int], Any] | None = None) -> float:
    """
    Median over ``repeat`` of the CPU time of ``fn(n)`` (or of ``fn(prepare(n))``, ``prepare``
    untimed: fresh records to decrypt) divided by ``n``, in µs. CPU time, not wall time: the host
    is shared, and a process waiting for a core is not working.
    """
    def arg(k: int) -> Any:
        return prepare(k) if prepare is not None else k

    fn(arg(max(1, n // 10)))  # warm
    times = []
    for _ in range(repeat):
        a = arg(n)
        t0 = time.process_time()
        fn(a)
        times.append((time.process_time() - t0) / n * 1e6)
    return round(statistics.median(times), 3)


def _pki() -> tuple[str, str, str]:
    from gateway.bench.certificates import make_certificates

    return make_certificates(tempfile.mkdtemp(prefix="unitcost-"))


def tls_costs(repeat: int = 7, n: int = 20000) -> dict[str, Any]:
    """Per-record encrypt and decrypt costs (µs) of the four TLS stacks (see the docstring)."""
    import ssl

    from OpenSSL import SSL
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    ca, cert, key = _pki()
    out: dict[str, Any] = {"record_bytes": len(RECORD)}

    # pyOpenSSL server in memory, shared by the two pyOpenSSL-based clients.
    def server() -> Any:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_file(cert)
        ctx.use_privatekey_file(key)
        conn = SSL.Connection(ctx, None)
        conn.set_accept_state()
        return conn

    def pump(client_out: Callable[[], bytes], client_in: Callable[[bytes], object],
             srv: Any) -> None:
        for _ in range(10):
            data = client_out()
            if data:
                srv.bio_write(data)
            try:
                srv.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                back = srv.bio_read(65536)
            except SSL.WantReadError:
                back = b""
            if back:
                client_in(back)

    def records(srv: Any, count: int) -> list[bytes]:
        made = []
        for _ in range(count):
            srv.send(RECORD)
            made.append(srv.bio_read(65536))
        return made

    # 1. Twisted's TLSMemoryBIOProtocol, as the gateway's wss:// leg runs it.
    class Sink(Protocol):
        received = 0

        def dataReceived(self, data: bytes) -> None:
            Sink.received += len(data)

    sink = Sink
    with open(ca, "rb") as f:
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(f.read()))
    # Twisted buffers a TLS connection's small writes until the next reactor iteration (its
    # BufferingTLSTransport: a callLater(0) per connection per tick): a Clock stands for the
    # reactor, advanced after each write as the reactor's next turn would.
    clock = Clock()
    factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Sink), clock=clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    srv = server()

    def twisted_out() -> bytes:
        data = transport.value()
        transport.clear()
        return bytes(data)

    pump(twisted_out, proto.dataReceived, srv)

    def tw_encrypt(k: int) -> None:
        write, turn = proto.write, clock.advance
        for _ in range(k):
            write(RECORD)
            turn(0)
        if len(transport.value()) < k * len(RECORD):
            raise RuntimeError("Twisted's TLS wrote less than it was given")
        transport.clear()

    out["twisted_encrypt_us"] = _per_call(tw_encrypt, n, repeat)

    def tw_decrypt(incoming: list[bytes]) -> None:
        receive = proto.dataReceived
        for record in incoming:
            receive(record)

    out["twisted_decrypt_us"] = _per_call(tw_decrypt, n, repeat, lambda k: records(srv, k))
    if transport.disconnecting or sink.received != (n // 10 + repeat * n) * len(RECORD):
        raise RuntimeError("the Twisted TLS connection failed while measuring")

    # 2. Bare pyOpenSSL memory BIOs (what Twisted's protocol calls, without the protocol).
    ctx = SSL.Context(SSL.TLS_METHOD)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    srv = server()

    def bare_out() -> bytes:
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            return bytes(client.bio_read(65536))
        except SSL.WantReadError:
            return b""

    pump(bare_out, client.bio_write, srv)
    bare_out()

    def py_encrypt(k: int) -> None:
        send, read = client.send, client.bio_read
        for _ in range(k):
            send(RECORD)
            read(65536)

    out["pyopenssl_encrypt_us"] = _per_call(py_encrypt, n, repeat)

    def py_decrypt(incoming: list[bytes]) -> None:
        write, recv = client.bio_write, client.recv
        for record in incoming:
            write(record)
            recv(65536)

    out["pyopenssl_decrypt_us"] = _per_call(py_decrypt, n, repeat, lambda k: records(srv, k))

    # 3. The stdlib's ssl.SSLObject over MemoryBIOs (C from end to end).
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=ca)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cobj = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    sobj = sctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (cobj, sobj):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    def ssl_encrypt(k: int) -> None:
        write, read = cobj.write, c_out.read
        for _ in range(k):
            write(RECORD)
            read()

    out["stdlib_encrypt_us"] = _per_call(ssl_encrypt, n, repeat)

    def ssl_records(k: int) -> list[bytes]:
        made = []
        for _ in range(k):
            sobj.write(RECORD)
            made.append(s_out.read())
        return made

    def ssl_decrypt(incoming: list[bytes]) -> None:
        write, read = c_in.write, cobj.read
        for record in incoming:
            write(record)
            read(65536)

    out["stdlib_decrypt_us"] = _per_call(ssl_decrypt, n, repeat, ssl_records)

    # 4. The Deepgram leg's own layer (gateway.legs.tls): the stdlib's memory BIOs under its
    # protocol, as the gateway's wss:// runs it: write -> one record handed on (to the socket
    # in the gateway, to a string transport here, as for Twisted's above); read -> delivered.
    from gateway.legs.tls import TLSClientProtocol

    class LayerSink(Protocol):
        received = 0

        def dataReceived(self, data: bytes) -> None:
            LayerSink.received += len(data)

    layer = TLSClientProtocol(ssl.create_default_context(cafile=ca), "localhost", LayerSink())
    wire = StringTransport()
    layer.makeConnection(wire)
    l_in, l_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    lsrv = sctx.wrap_bio(l_in, l_out, server_side=True)
    for _ in range(10):
        l_in.write(wire.value())
        wire.clear()
        try:
            lsrv.do_handshake()
        except ssl.SSLWantReadError:
            pass
        back = l_out.read()
        if back:
            layer.dataReceived(back)
    if not layer.handshake_done:
        raise RuntimeError("the layer's handshake did not complete")
    wire.clear()

    def layer_encrypt(k: int) -> None:
        write = layer.write
        for _ in range(k):
            write(RECORD)
        if len(wire.value()) < k * len(RECORD):
            raise RuntimeError("the TLS layer wrote less than it was given")
        wire.clear()

    out["layer_encrypt_us"] = _per_call(layer_encrypt, n, repeat)

    def layer_records(k: int) -> list[bytes]:
        made = []
        for _ in range(k):
            lsrv.write(RECORD)
            made.append(l_out.read())
        return made

    def layer_decrypt(incoming: list[bytes]) -> None:
        receive = layer.dataReceived
        for record in incoming:
            receive(record)

    out["layer_decrypt_us"] = _per_call(layer_decrypt, n, repeat, layer_records)
    if wire.disconnecting or LayerSink.received != (n // 10 + repeat * n) * len(RECORD):
        raise RuntimeError("the TLS layer's connection failed while measuring")
    for stack in ("twisted", "pyopenssl", "stdlib", "layer"):
        out[f"{stack}_pair_us"] = round(out[f"{stack}_encrypt_us"] + out[f"{stack}_decrypt_us"], 3)
    return out


def transcode_costs(repeat: int = 7, n: int = 20000) -> dict[str, Any]:
    """The transcoder's and the resampler's cost per 20 ms frame, each way (µs)."""
    from gateway.codecs.formats import AudioFormat
    from gateway.codecs.resample import Resampler
    from gateway.codecs.transcode import make_transcoder

    ulaw, lin16 = AudioFormat.parse("mulaw/8000"), AudioFormat.parse("linear16/16000")
    up, down = make_transcoder(ulaw, lin16), make_transcoder(lin16, ulaw)
    frame_ulaw = bytes((i * 37) & 0xFF for i in range(160))
    frame_lin16 = up.convert(frame_ulaw)
    r_up, r_down = Resampler(8000, 16000), Resampler(16000, 8000)
    frame_8k = bytes(320)

    def loop(fn: Callable[[bytes], bytes], frame: bytes) -> Callable[[int], None]:
        def run(k: int) -> None:
            for _ in range(k):
                fn(frame)
        return run

    out = {"transcode_up_us": _per_call(loop(up.convert, frame_ulaw), n, repeat),
           "transcode_down_us": _per_call(loop(down.convert, frame_lin16), n, repeat),
           "resample_up_us": _per_call(loop(r_up.process, frame_8k), n, repeat),
           "resample_down_us": _per_call(loop(r_down.process, frame_lin16), n, repeat)}
    out["transcode_pair_us"] = round(out["transcode_up_us"] + out["transcode_down_us"], 3)
    return out


def batching_costs(repeat: int = 7, sizes: tuple[int, ...] = (1, 10, 50, 150, 300)) -> dict[str, Any]:
    """
    Per frame (µs): K separate `Resampler.process` calls (8 -> 16 kHz) against one batched product
    for the K frames (the half-band branch as one einsum over (K, 160, taps) windows, plus the
    history shift and the interleave), the arithmetic a per-tick batch would do. The batch leaves
    out the per-call bookkeeping it would also need (gathering the frames, splitting the output),
    so it is a lower bound of what batching costs.
    """
    import numpy as np

    from gateway.codecs.resample import Resampler, design_filter

    out: dict[str, Any] = {}
    # The half-band 8 -> 16 kHz filter's one filtering branch (the other is a pure delay: a
    # single tap of 2**30), scaled as the resampler scales its taps.
    design = design_filter(8000, 16000)
    k = design.taps_per_branch
    filtering = 1 if np.count_nonzero(design.reversed_t[:, 0]) == 1 else 0
    column = np.ascontiguousarray(design.reversed_t[:, filtering]) * 2.0**-30
    frame = np.arange(160, dtype="<i2").tobytes()
    for size in sizes:
        resamplers = [Resampler(8000, 16000) for _ in range(size)]

        def separate(count: int) -> None:
            for _ in range(count):
                for r in resamplers:
                    r.process(frame)

        history = np.zeros((size, k - 1))
        frames = np.frombuffer(frame * size, dtype="<i2").reshape(size, 160)

        def batched(count: int) -> None:
            nonlocal history
            for _ in range(count):
                buf = np.concatenate((history, frames), axis=1)  # (K, k-1+160)
                history = buf[:, 160:]
                # (K, 160, k) windows, a view; einsum reads them in place (a reshape for one
                # BLAS product would copy K*160*k doubles, slower from K ~ 100 on).
                windows = np.lib.stride_tricks.sliding_window_view(buf, k, axis=1)
                y = np.einsum("ntk,k->nt", windows, column)
                res = np.empty((size, 160, 2), dtype="<i2")
                res[:, :, 0] = buf[:, :160]
                np.rint(y, out=res[:, :, 1], casting="unsafe")
                res.tobytes()

        rounds = max(20, 20000 // size)
        out[f"k{size}"] = {"separate_us_per_frame": round(_per_call(separate, rounds, repeat) / size, 3),
                           "batched_us_per_frame": round(_per_call(batched, rounds, repeat) / size, 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.unitcost",
                                     description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    document = {"cpu_affinity": sorted(os.sched_getaffinity(0)),
                "tls": tls_costs(args.repeat), "transcode": transcode_costs(args.repeat),
                "batching": batching_costs(args.repeat)}
    text = json.dumps(document, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
