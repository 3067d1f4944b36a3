# This module is imported by every `twistd` run to list its commands: import nothing heavy
# and never the reactor here (ops-notes §1, pitfall 4).
from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "gateway", "gateway.tap", "Twilio / raw-audio <-> Deepgram media gateway.", "gateway"
)
