"""
A built-in plugin's stage for a test: the plugin configured the way start-up configures it (the
real assembly, `gateway.testing.configure`), then made for one call over a `RecordingContext`.
Shared by the per-plugin test modules (``tests/test_plugin_<name>.py``) and any other test that
drives one stage.
"""

from __future__ import annotations

from typing import Any

from gateway.config import GatewayConfig
from gateway.testing import RecordingContext, configure

__all__ = ["SECRET_ENV", "stage_for"]

#: The token secret every stage test runs with (tests mint tokens with ``b"k" * 32``).
SECRET_ENV = {"GATEWAY_TOKEN_SECRET": "k" * 32}


def stage_for(
    name: str, ctx: RecordingContext, config: dict | None = None, env: dict | None = None
) -> tuple[Any, GatewayConfig]:
    """Plugin ``name``'s stage over ``ctx``, with ``config`` shaped like the TOML file."""
    configured = configure(config, {**SECRET_ENV, **(env or {})})
    factory = dict(configured.stages)[name]
    return factory(ctx), configured.config
