"""Whole-gateway tests: the real stack on loopback."""
