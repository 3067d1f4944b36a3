"""
The configuration: a TOML file plus environment variables, validated into frozen values.

Values only: `parse_config` turns the TOML data (a dict, so tests need no file on disk) and the
environment into a `GatewayConfig`; it loads no plugin. Loading the plugins of ``gateway.chain``
and configuring them is `gateway.assembly`'s job, one layer up.

Every problem names its key: unknown keys (with the nearest valid one), wrong types and missing
required values raise `ConfigError`, which the command line turns into one line and exit status 1.
Secrets come only from the environment and have redacting reprs.
"""

from __future__ import annotations

import os
import tomllib
import xml.etree.ElementTree as ET
from typing import Any, Mapping

import attrs

from gateway.admission import AdmissionOptions, admission_options
from gateway.codecs.deepgram import DEFAULT_AGENT_URL, DEFAULT_FLUX_URL, DEFAULT_LISTEN_URL
from gateway.errors import ConfigError
from gateway.httplimits import HttpLimits, http_limits
from gateway.section import Section, type_name

__all__ = [
    "GatewayConfig",
    "parse_config",
    "read_toml",
    "CORE_SECTIONS",
    "DEFAULT_CHAIN",
    "REQUIRED_STAGES",
]

DEFAULT_CHAIN = (
    "auth", "handover", "settings", "empty_frames", "transcoder", "keepalive", "call_control",
    "close_codes",
)

#: Stages the chain cannot do without: no unauthenticated stream may reach Deepgram (auth), and
#: settings is what opens the Deepgram leg with a validated configuration.
REQUIRED_STAGES = ("auth", "settings")

#: The TOML tables the core reads; every other table belongs to a plugin of that name.
CORE_SECTIONS = ("gateway", "deepgram", "report", "twiml", "admission", "http")

@attrs.frozen
class GatewayConfig:
    """The gateway-wide configuration (sections ``[gateway]`` and ``[deepgram]`` and the environment)."""

    mode: str = "agent"
    chain: tuple[str, ...] = DEFAULT_CHAIN
    dropin_dirs: tuple[str, ...] = ()
    agent_url: str = DEFAULT_AGENT_URL
    listen_url: str = DEFAULT_LISTEN_URL
    flux_url: str = DEFAULT_FLUX_URL
    api_key: str = attrs.field(default="", repr=False)
    twilio_auth_token: str | None = attrs.field(default=None, repr=False)
    public_url: str | None = None
    require_signature: bool = False
    require_stream_token: bool = False
    stream_token_ttl_s: float = 60.0
    token_secret: bytes = attrs.field(default=b"", repr=False)
    token_secret_is_random: bool = True
    gateway_api_key: str | None = attrs.field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    reconnect_attempts: int = 3
    reconnect_max_s: float = 20.0
    reconnect_backoff_s: float = 0.5
    reconnect_backoff_max_s: float = 8.0
    reconnect_window_s: float = 60.0
    reconnect_window_max: int = 5
    reconnect_max_per_call: int = 10
    replay_ms: int = 400
    drain_deadline_s: float = 30.0
    max_calls: int = 200
    handshake_timeout_s: float = 10.0
    admission: AdmissionOptions = AdmissionOptions()
    http: HttpLimits = HttpLimits()
    send_budget_bytes: int = 1024 * 1024
    end_timeout_s: float = 5.0
    demo: bool = False
    log_conversation: bool = False
    debug_calls: bool = False
    debug_parameter: str = "debug"
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 3
    webhook_secret: bytes | None = attrs.field(default=None, repr=False)
    twiml_parameters: Mapping[str, str] = attrs.field(factory=dict)
    twiml_forward: tuple[str, ...] = ("From", "To", "CallSid")
    twiml_after_connect: str = ""
    config_dir: str = "."
    warnings: tuple[str, ...] = ()

    @property
    def upstream_url(self) -> str:
        """The Deepgram URL of this gateway's mode."""
        return {"agent": self.agent_url, "flux": self.flux_url}.get(self.mode, self.listen_url)

    @property
    def stream_url(self) -> str | None:
        """The public ``wss://`` URL Twilio dials (and signs), from ``public_url``."""
        if not self.public_url:
            return None
        base = self.public_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + "/twilio"


def _ws_url(key: str, value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise ConfigError(key, f"expected a ws:// or wss:// URL, got {value!r}")
    return value


def _public_url(key: str, value: str) -> str:
    if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
        raise ConfigError(
            key, f"expected https://host[:port][/prefix] with no query, got {value!r}"
        )
    return value.rstrip("/")


#: Twilio's limit on one ``<Parameter>``: name and value together under 500 characters.
TWIML_PARAMETER_MAX_CHARS = 500


def _twiml_section(twiml: Section) -> tuple[dict[str, str], tuple[str, ...], str]:
    """``[twiml]``: extra ``<Parameter>``s, the forwarded webhook fields, TwiML after ``</Connect>``."""
    parameters = twiml.table("parameters", {})
    for name, value in parameters.items():
        key = twiml.key(f"parameters.{name}")
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {type_name(value)}")
        if not name:
            raise ConfigError(key, "expected a non-empty parameter name")
        if len(name) + len(value) >= TWIML_PARAMETER_MAX_CHARS:
            raise ConfigError(
                key, f"name and value must stay under {TWIML_PARAMETER_MAX_CHARS} characters (Twilio's limit)"
            )
    forward = tuple(twiml.str_list("forward", ["From", "To", "CallSid"]))
    for i, name in enumerate(forward):
        if not name:
            raise ConfigError(f"{twiml.key('forward')}[{i}]", "expected a non-empty field name")
        if name in parameters:
            raise ConfigError(
                twiml.key(f"parameters.{name}"), f"{name!r} is also in twiml.forward; name it once"
            )
    after_connect = twiml.str("after_connect", "").strip()
    if after_connect:
        try:
            ET.fromstring(f"<Response>{after_connect}</Response>")
        except ET.ParseError as e:
            raise ConfigError(twiml.key("after_connect"), f"is not well-formed TwiML: {e}")
    return dict(parameters), forward, after_connect


def read_toml(path: str) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; `ConfigError` (key ``--config``) if missing or invalid."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file: {path}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}")


def parse_config(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    path: str | None = None,
    demo: bool = False,
    require_api_key: bool = True,
) -> GatewayConfig:
    """
    The core's tables of ``data`` (the parsed TOML; ``path`` is where it came from, for relative
    directories) and ``environ`` (default ``os.environ``) as a `GatewayConfig`. The plugins'
    tables are not read here (`gateway.assembly` hands each to its plugin). Raises `ConfigError`
    naming the key.
    """
    env = os.environ if environ is None else environ
    root = Section("", data)
    gw = root.section("gateway")
    dg = root.section("deepgram")
    report = root.section("report")
    twiml = root.section("twiml")
    admission_section = root.section("admission")
    http_section = root.section("http")
    warnings: list[str] = []

    mode = gw.str("mode", "agent", choices=("agent", "listen", "flux"))
    chain = tuple(gw.str_list("chain", list(DEFAULT_CHAIN)))
    for required in REQUIRED_STAGES:
        if required not in chain:
            raise ConfigError("gateway.chain", f"must include {required!r}")
    if len(set(chain)) != len(chain):
        raise ConfigError("gateway.chain", "names a plugin twice")
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    dropin_dirs = tuple(
        os.path.normpath(os.path.join(base, d)) for d in gw.str_list("dropin_dirs", [])
    )
    require_signature = gw.bool("require_signature", False)
    require_stream_token = gw.bool("require_stream_token", False)
    stream_token_ttl_s = gw.float("stream_token_ttl_s", 60.0, minimum=1.0)
    public_url = gw.str("public_url", "") or None
    drain = gw.float("drain_deadline_s", 30.0, minimum=0)
    max_calls = gw.int("max_calls", 200, minimum=1)
    handshake_timeout_s = gw.float("handshake_timeout_s", 10.0, minimum=0.1)
    send_budget_bytes = gw.int("send_budget_bytes", 1024 * 1024, minimum=4096)
    end_timeout = gw.float("end_timeout_s", 5.0, minimum=0.1)
    demo = gw.bool("demo", False) or demo
    log_conversation = gw.bool("log_conversation", False)
    debug_calls = gw.bool("debug_calls", False)
    debug_parameter = gw.str("debug_parameter", "debug")
    gw.finish()

    agent_url = _ws_url("deepgram.agent_url", dg.str("agent_url", DEFAULT_AGENT_URL))
    listen_url = _ws_url("deepgram.listen_url", dg.str("listen_url", DEFAULT_LISTEN_URL))
    flux_url = _ws_url("deepgram.flux_url", dg.str("flux_url", DEFAULT_FLUX_URL))
    connect_timeout = dg.float("connect_timeout_s", 10.0, minimum=0.1)
    reconnect_attempts = dg.int("reconnect_attempts", 3, minimum=0)
    reconnect_max_s = dg.float("reconnect_max_s", 20.0, minimum=0)
    reconnect_backoff_s = dg.float("reconnect_backoff_s", 0.5, minimum=0.01)
    reconnect_backoff_max_s = dg.float("reconnect_backoff_max_s", 8.0, minimum=0.01)
    reconnect_window_s = dg.float("reconnect_window_s", 60.0, minimum=1)
    reconnect_window_max = dg.int("reconnect_window_max", 5, minimum=0)
    reconnect_max_per_call = dg.int("reconnect_max_per_call", 10, minimum=0)
    replay_ms = dg.int("replay_ms", 400, minimum=0)
    dg.finish()

    webhook_url = report.str("webhook_url", "") or None
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        raise ConfigError("report.webhook_url", f"expected an http(s) URL, got {webhook_url!r}")
    webhook_timeout = report.float("webhook_timeout_s", 5.0, minimum=0.1)
    webhook_attempts = report.int("webhook_attempts", 3, minimum=1)
    report.finish()

    twiml_parameters, twiml_forward, twiml_after_connect = _twiml_section(twiml)
    twiml.finish()

    admission = admission_options(admission_section)
    admission_section.finish()
    http = http_limits(http_section, head_timeout_s=handshake_timeout_s)
    http_section.finish()

    if env.get("DEEPGRAM_AGENT_URL"):
        agent_url = _ws_url("DEEPGRAM_AGENT_URL", env["DEEPGRAM_AGENT_URL"])
    if env.get("DEEPGRAM_LISTEN_URL"):
        listen_url = _ws_url("DEEPGRAM_LISTEN_URL", env["DEEPGRAM_LISTEN_URL"])
    if env.get("DEEPGRAM_FLUX_URL"):
        flux_url = _ws_url("DEEPGRAM_FLUX_URL", env["DEEPGRAM_FLUX_URL"])
    api_key = env.get("DEEPGRAM_API_KEY", "")
    if require_api_key and not api_key:
        raise ConfigError("DEEPGRAM_API_KEY", "missing: set it to your Deepgram API key")
    twilio_token = env.get("TWILIO_AUTH_TOKEN") or None
    if env.get("GATEWAY_PUBLIC_URL"):
        public_url = env["GATEWAY_PUBLIC_URL"]
    if public_url:
        public_url = _public_url(
            "GATEWAY_PUBLIC_URL" if env.get("GATEWAY_PUBLIC_URL") else "gateway.public_url",
            public_url,
        )
    if require_signature and not twilio_token:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN", "missing, and gateway.require_signature is true"
        )
    if twilio_token and not public_url:
        raise ConfigError(
            "GATEWAY_PUBLIC_URL",
            "missing: it is required when TWILIO_AUTH_TOKEN is set (signatures cover the public URL)",
        )
    if not twilio_token:
        warnings.append(
            "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked on /twilio and /twilio/voice"
        )
    secret = env.get("GATEWAY_TOKEN_SECRET", "")
    if secret:
        token_secret, random_secret = secret.encode(), False
    else:
        token_secret, random_secret = os.urandom(32), True
        warnings.append(
            "GATEWAY_TOKEN_SECRET is not set: client tokens verify only on the process that minted them"
        )

    config = GatewayConfig(
        mode=mode,
        chain=chain,
        dropin_dirs=dropin_dirs,
        agent_url=agent_url,
        listen_url=listen_url,
        flux_url=flux_url,
        api_key=api_key,
        twilio_auth_token=twilio_token,
        public_url=public_url,
        require_signature=require_signature,
        require_stream_token=require_stream_token,
        stream_token_ttl_s=stream_token_ttl_s,
        token_secret=token_secret,
        token_secret_is_random=random_secret,
        gateway_api_key=env.get("GATEWAY_API_KEY") or None,
        connect_timeout_s=connect_timeout,
        reconnect_attempts=reconnect_attempts,
        reconnect_max_s=reconnect_max_s,
        reconnect_backoff_s=reconnect_backoff_s,
        reconnect_backoff_max_s=reconnect_backoff_max_s,
        reconnect_window_s=reconnect_window_s,
        reconnect_window_max=reconnect_window_max,
        reconnect_max_per_call=reconnect_max_per_call,
        replay_ms=replay_ms,
        drain_deadline_s=drain,
        max_calls=max_calls,
        handshake_timeout_s=handshake_timeout_s,
        admission=admission,
        http=http,
        send_budget_bytes=send_budget_bytes,
        end_timeout_s=end_timeout,
        demo=demo,
        log_conversation=log_conversation,
        debug_calls=debug_calls,
        debug_parameter=debug_parameter,
        webhook_url=webhook_url,
        webhook_timeout_s=webhook_timeout,
        webhook_attempts=webhook_attempts,
        webhook_secret=(env.get("GATEWAY_WEBHOOK_SECRET") or "").encode() or None,
        twiml_parameters=twiml_parameters,
        twiml_forward=twiml_forward,
        twiml_after_connect=twiml_after_connect,
        config_dir=base,
        warnings=tuple(warnings),
    )
    return config
