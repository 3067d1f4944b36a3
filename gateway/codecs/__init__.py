"""
Sans-IO codecs: Twilio and Deepgram messages, close codes, audio formats and G.711.

Nothing in this package imports ``twisted.internet`` or ``autobahn``: every function works on
``bytes``, ``str`` and ``dict`` and is testable without a reactor.
"""
