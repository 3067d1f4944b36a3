"""Tests of the gateway: codecs and plugins first, then whole-gateway tests over loopback."""
