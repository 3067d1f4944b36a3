"""
``gateway-bench``: the gateway under paced load, measured (issue 8).

The gateway runs as a real ``twistd`` child; a lean Deepgram-side peer (`gateway.bench.peer`) and a
Twilio-side load generator (`gateway.bench.loadgen`) run as processes of their own with hand-rolled
WebSocket framing on a plain epoll loop, so that one core drives a few hundred calls. The
orchestrator (`gateway.bench.orchestrate`) ramps calls step by step and reads the gateway's own CPU
and memory accounting from ``/proc``; `gateway.bench.report` prints the table and the JSON. The
method is in BENCHMARKS.md.
"""
