# The `reuseport:` server endpoint string (gateway/reuseport.py), e.g.
#     twistd -n --pidfile= gateway --port reuseport:8080:interface=127.0.0.1
# Imported by every `twistd` run and every endpoint-string lookup: import nothing heavy and
# never the reactor here (ops-notes §1, pitfall 4); the implementation is imported when used.
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from gateway.reuseport import parse_reuseport

        return parse_reuseport(reactor, *args, **kwargs)


reuseport = _ReusePortParser()
