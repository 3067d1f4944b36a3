"""Defines nothing."""
X = 1
