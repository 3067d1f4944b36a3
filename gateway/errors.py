"""
The gateway's exceptions: one hierarchy, each class's docstring being the explanation a user reads.

Exceptions carry fields (the key path, the file, the field, the close code the other side should
get) so that callers decide from data, not by parsing messages.
"""

from __future__ import annotations

__all__ = [
    "GatewayError",
    "ConfigError",
    "PluginLoadError",
    "CallerProtocolError",
    "UpstreamProtocolError",
    "AuthError",
    "SettingsError",
]


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """
    The configuration (TOML file or environment) is wrong; start-up stops with exit status 1.

    ``key`` is the full dotted key path (or the environment variable) at fault.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class PluginLoadError(GatewayError):
    """A drop-in plugin file could not be loaded; start-up stops naming ``path``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CallerProtocolError(GatewayError):
    """
    The caller (Twilio or a raw-audio client) sent something the protocol does not allow.

    ``reason`` is a short stable label used as a metric label (``bad_json``, ``missing_field``...);
    ``field`` names the offending field where there is one.
    """

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


class UpstreamProtocolError(GatewayError):
    """Deepgram sent something the gateway could not understand (``reason`` as above)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class AuthError(GatewayError):
    """
    A stream failed authentication.

    ``code`` is the stable diagnosis code (``AUTH_FAILED``...), ``http_status`` the status of a
    refused handshake, ``close_code`` the WebSocket close code for a stream already open.
    """

    def __init__(
        self, code: str, message: str, http_status: int = 403, close_code: int = 4003
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.close_code = close_code


class SettingsError(GatewayError):
    """The Deepgram configuration built for a call is invalid; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
