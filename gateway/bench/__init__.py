"""
``gateway-bench``: the gateway under paced load, measured (issue 8, issue 21).

The gateway runs as one or more real ``twistd`` children; a lean Deepgram-side peer
(`gateway.bench.peer`) and a Twilio-side load generator (`gateway.bench.loadgen`) run as processes
of their own with hand-rolled WebSocket framing on a plain epoll loop (`gateway.bench.loop`, whose
`Commands` is their common control channel), so that one core drives a few hundred calls. By job:

* `gateway.bench.cli`: the command line, the steps and repeats, gateway and floor alternating;
* `gateway.bench.orchestrate`: `Bench`, the processes of one mode kept up across its steps;
* `gateway.bench.step`: one step (ramp, window, counts) and its figures;
* `gateway.bench.summary`: medians over repeats, ratios to the floor, the knee;
* `gateway.bench.workers`, `certificates`, `configs`, `proxy`: starting children, the TLS test
  PKI, the gateway's configuration per mode, HAProxy for ``--mode tls-haproxy``;
* `gateway.bench.floor`: the floor, a minimal Python relay on the same traffic;
* `gateway.bench.report`, `procstat`, `sampling`: the table and JSON, /proc, py-spy;
* `gateway.bench.hotpath` (instructions per frame pair), `unitcost` (TLS per record, the
  transcoder per frame, resampler batching), `soak` (memory over an hour).

The method is in BENCHMARKS.md.
"""
