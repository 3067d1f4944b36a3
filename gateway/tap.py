"""
``twistd gateway``: the command-line options and the service they make; this entry point hands
the built-in plugins (``plugins.BUILTINS``) to the assembly.

A configuration error writes one line naming the key (or the drop-in file) to stderr and exits
with status 1 before the reactor starts (``SystemExit`` from ``postOptions``).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

import plugins
from gateway.assembly import ConfiguredGateway, load_config
from gateway.errors import ConfigError, PluginLoadError

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """``twistd gateway [--config PATH] [--port ENDPOINT] [--demo]``."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (optional: every key has a default)"],
        ["port", "p", "tcp:8080", "endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1"],
    ]
    optFlags = [["demo", None, "serve the browser demo page at /demo/"]]

    configured: ConfiguredGateway

    def postOptions(self) -> None:
        try:
            self.configured = load_config(self["config"], builtins=plugins.BUILTINS, demo=bool(self["demo"]))
        except (ConfigError, PluginLoadError) as e:
            sys.stderr.write(f"gateway: configuration error: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1)


def makeService(options: Options) -> service.IService:
    """The gateway's service tree."""
    from gateway.service import GatewayService  # here, not above: it imports the reactor (ops-notes §1.4)

    top = service.MultiService()
    GatewayService(options.configured, options["port"], handle_second_signal=True).setServiceParent(top)
    return top
