"""
What a run is configured with: the modes (`MODES`), and the TOML the bench's gateway runs with
(`gateway_config`: the default configuration, only ``max_calls`` raised, plus what a mode or an
option adds).
"""

from __future__ import annotations

import json
from typing import NamedTuple, Sequence

from gateway.config import DEFAULT_CHAIN
from plugins import BUILTINS

__all__ = ["Mode", "MODES", "CHAIN_EXTRAS", "gateway_config"]


class Mode(NamedTuple):
    """What a mode changes: transcoding, TLS towards the Deepgram side, and who does the TLS."""

    #: Deepgram's side in linear16 16 kHz (the gateway transcodes both ways).
    transcode: bool
    #: ``wss://`` to the Deepgram side.
    tls: bool
    #: The TLS is originated by a local HAProxy (deploy/haproxy-deepgram-tls.cfg): the gateway
    #: (and the floor) speak ``ws://`` to it on loopback; its CPU counts as the gateway's.
    proxy: bool = False


MODES = {"relay": Mode(False, False), "transcode": Mode(True, False), "tls": Mode(False, True),
         "tls-transcode": Mode(True, True), "tls-haproxy": Mode(False, True, True)}

#: The gateway's configuration in the bench: the default one (idle timer, caller pings, every
#: default stage), with only ``max_calls`` raised so that admission never refuses a step.
CONFIG = """\
# written by gateway-bench: the default configuration, max_calls raised
[gateway]
max_calls = 100000
{gateway_extra}{chain}
"""

#: Transcoding modes: Deepgram's side in linear16 16 kHz. Transcoded audio carries no stamps, so
#: the peer learns which call a connection is from the Settings greeting, which the load
#: generator's ``customParameters.greeting`` ("bench-<index>") sets (once per call, at start).
TRANSCODE = """
[settings]
parameters = { greeting = "agent.greeting" }

[transcoder]
deepgram_input = "linear16/16000"
deepgram_output = "linear16/16000"
"""

#: ``--legacy-config``: the bench's configuration before issue 21 (issue 8's and 15's figures):
#: no caller idle timer, the greeting mapped in every mode, a 5 s drain.
LEGACY_GATEWAY = "drain_deadline_s = 5.0\n"
LEGACY = """
[settings]
parameters = { greeting = "agent.greeting" }

[keepalive]
caller_idle_timeout_s = 0
"""
LEGACY_TRANSCODE = """
[transcoder]
deepgram_input = "linear16/16000"
deepgram_output = "linear16/16000"
"""

#: Appended with --coalesce-ms: the coalesce stage after keepalive (see plugins/coalesce.py).
COALESCE = """
[coalesce]
ms = {ms}
"""
_CHAIN = list(DEFAULT_CHAIN)
CHAIN_WITH_COALESCE = "chain = {}\n".format(json.dumps(
    _CHAIN[:_CHAIN.index("keepalive") + 1] + ["coalesce"] + _CHAIN[_CHAIN.index("keepalive") + 1:]))


#: ``--chain-extra``: the built-in plugins, off by default, that the bench can add to the chain,
#: and the section each gets (record writes into the bench's directory).
CHAIN_EXTRAS = {"record": '\n[record]\ndirectory = "{dir}/recordings"\n', "redact": ""}


def _chain_line(coalesce_ms: int, chain_extra: Sequence[str]) -> str:
    """The ``chain =`` line: the default chain plus coalesce and the extras, each where the
    built-in registry (``plugins.BUILTINS``, in chain order) puts it; "" for the default."""
    if not chain_extra:
        return CHAIN_WITH_COALESCE if coalesce_ms else ""
    wanted = set(DEFAULT_CHAIN) | set(chain_extra) | ({"coalesce"} if coalesce_ms else set())
    return "chain = {}\n".format(json.dumps([p.name for p in BUILTINS if p.name in wanted]))


def gateway_config(transcode: bool, legacy: bool = False, coalesce_ms: int = 0,
                   chain_extra: Sequence[str] = (), directory: str = ".") -> str:
    """The TOML the bench's gateway runs with (see `CONFIG`)."""
    text = CONFIG.format(gateway_extra=LEGACY_GATEWAY if legacy else "",
                         chain=_chain_line(coalesce_ms, chain_extra))
    for name in chain_extra:
        text += CHAIN_EXTRAS[name].format(dir=directory)
    if legacy:
        text += LEGACY + (LEGACY_TRANSCODE if transcode else "")
    elif transcode:
        text += TRANSCODE
    if coalesce_ms:
        text += COALESCE.format(ms=coalesce_ms)
    return text
