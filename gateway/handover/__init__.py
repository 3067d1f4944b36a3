"""
Handing a live call to another gateway process (issue 17).

- `gateway.handover.store`: where a handed-over call's resumable state waits for the process that
  takes the call up: an embedded SQLite file for one host, Redis for several.
- `gateway.handover.record`: what is saved (the resume token that names it is `gateway.tokens`'s).
"""

__all__ = ["HANDOVER_PARAMETER", "RESUME_PARAMETER"]

#: The ``<Parameter>`` marking a stream Twilio will come back for (``<Connect action>``).
HANDOVER_PARAMETER = "gateway_handover"
#: The ``<Parameter>`` carrying the resume token of a handed-over call.
RESUME_PARAMETER = "gateway_resume"
