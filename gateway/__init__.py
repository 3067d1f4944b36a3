"""
A production bridge between phone calls and Deepgram.

Twilio Media Streams (or raw-audio clients) connect to the gateway; for each stream the gateway
opens a WebSocket to Deepgram (the Voice Agent API or streaming speech-to-text) and relays audio
and control messages both ways through an ordered chain of small per-call plugins.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
