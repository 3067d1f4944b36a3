"""
An example drop-in plugin: an ``order_status`` function the Voice Agent can call.

Copy this directory next to your configuration, then:

    [gateway]
    dropin_dirs = ["order_status"]
    chain = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control",
             "order_status", "close_codes"]

    [order_status]
    service_url = "https://orders.internal.example.com"   # GET {service_url}/orders/{number}
    timeout_s = 4.0

When the caller asks about an order, the agent calls ``order_status`` with the number; this
plugin asks the order service over HTTP (treq, never blocking the call) and hands the agent a
short JSON answer to speak from. Errors become words the agent can say.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.plugin import FunctionSpec
from gateway.plugin import IStreamPlugin, Routes

ORDER_STATUS = FunctionSpec(
    "Look up the status of a customer's order by its number.",
    {
        "type": "object",
        "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{3,12}$",
                                        "description": "the digits of the order number"}},
        "required": ["order_number"],
        "additionalProperties": False,
    },
)


@attrs.define
class OrderStatusStage:
    """Serves ``order_status`` for one call."""

    ctx: Any
    service_url: str
    timeout_s: float
    http: Any = None

    def routes(self) -> Routes:
        return Routes()  # no events: this stage only answers function calls

    @defer.inlineCallbacks
    def call_function(self, name: str, arguments: dict) -> Any:
        import treq

        http = self.http or treq
        number = arguments["order_number"]
        url = f"{self.service_url.rstrip('/')}/orders/{number}"
        response = yield http.get(url, timeout=self.timeout_s, persistent=False)
        if response.code == 404:
            yield response.content()
            return {"found": False, "order_number": number}
        if response.code != 200:
            yield response.content()
            raise RuntimeError(f"the order service answered HTTP {response.code}")
        order = yield response.json()
        self.ctx.count("order_lookups")
        return {"found": True, "order_number": number, "status": order.get("status"),
                "eta": order.get("eta")}

    def close(self) -> None:
        pass


@attrs.frozen
class OrderStatusFactory:
    service_url: str
    timeout_s: float

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return {"order_status": ORDER_STATUS}

    def __call__(self, ctx: Any) -> OrderStatusStage:
        return OrderStatusStage(ctx, self.service_url, self.timeout_s)


@implementer(IPlugin, IStreamPlugin)
class OrderStatusPlugin:
    name = "order_status"

    def configure(self, section: Any, gateway: Any) -> OrderStatusFactory:
        url = section.str("service_url")
        if not url.startswith(("http://", "https://")):
            from gateway.errors import ConfigError

            raise ConfigError(section.key("service_url"), f"expected an http(s) URL, got {url!r}")
        return OrderStatusFactory(url, section.float("timeout_s", 4.0, minimum=0.1))


order_status = OrderStatusPlugin()
