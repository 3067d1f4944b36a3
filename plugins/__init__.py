"""
The built-in stream plugins, one module each, and the registry of them.

The default chain is ``auth -> handover -> settings -> empty_frames -> transcoder -> keepalive ->
call_control -> close_codes`` (inbound events in that order, outbound in reverse); ``coalesce``,
``record``, ``live_events`` and ``redact`` are built in but off unless a chain names them. Drop-in
plugins are not found here: they live in a configured directory (see `gateway.plugin`).
"""

from plugins.auth import plugin as auth
from plugins.call_control import plugin as call_control
from plugins.close_codes import plugin as close_codes
from plugins.coalesce import plugin as coalesce
from plugins.empty_frames import plugin as empty_frames
from plugins.handover import plugin as handover
from plugins.keepalive import plugin as keepalive
from plugins.live_events import plugin as live_events
from plugins.record import plugin as record
from plugins.redact import plugin as redact
from plugins.settings import plugin as settings
from plugins.transcoder import plugin as transcoder

__all__ = ["BUILTINS"]

#: Every built-in plugin, in the default chain's order (those not in it where they would go).
BUILTINS = (auth, handover, settings, empty_frames, record, transcoder, keepalive, coalesce, call_control,
            close_codes, live_events, redact)
