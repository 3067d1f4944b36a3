"""
The two legs of a call, as thin Autobahn protocols: they turn frames into events for the
`gateway.call.Call` and events into frames, and hold no decisions.

- `gateway.legs.caller`: Twilio Media Streams (``/twilio``) and raw-audio clients (``/client``).
- `gateway.legs.deepgram`: the Deepgram leg (Voice Agent or ``/v1/listen``).
- `gateway.legs.tls`: the Deepgram leg's ``wss://``, on the stdlib's ``ssl`` memory BIOs.
- `gateway.legs.wire`: the fast lane both share for whole data frames (Autobahn keeps the rest).
- `gateway.legs.pressure`: backpressure, the send budget per leg.
"""
