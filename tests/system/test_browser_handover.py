"""
The browser demo follows a handover, in real headless Chromium (as tests/system/test_browser.py):
two gateways in this process sharing an SQLite handover store, behind the demo's local front
(`gateway.front.LocalFront`, their ``GATEWAY_PUBLIC_URL``); the page talks to the first, which
drains mid-call. The page gets the ``Handover`` message, reconnects through the front to the
second with the resume token, and the call goes on there: no close shown, no error, the
conversation restored at Deepgram (the emulator) without a second greeting.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from gateway.front import LocalFront
from gateway.testing import temp_path
from tests.system.harness import start_emulator, start_gateway, wait_until
from tests.system.test_browser import _browser_or_skip, _start_chromium


class BrowserHandoverTests(TestCase):
    """The /demo/ page across a drain of the process it talks to."""

    timeout = 180

    @defer.inlineCallbacks
    def wait_for(self, driver: Any, script: str, what: str, timeout_s: float = 40.0) -> Any:
        """Poll ``script`` in the page until it returns something true (bounded)."""
        deadline = reactor.seconds() + timeout_s
        while True:
            value = yield threads.deferToThread(driver.execute_script, script)
            if value:
                return value
            if reactor.seconds() > deadline:
                state = yield threads.deferToThread(driver.execute_script, "return window.demo.snapshot()")
                self.fail(f"timed out after {timeout_s} s waiting for {what}; page state: {state}")
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def test_page_follows_the_handover(self) -> None:
        _browser_or_skip()
        emulator = yield start_emulator(self)
        front = LocalFront()
        self.addCleanup(front.close)
        config = {"gateway": {"demo": True}, "handover": {"store": f"sqlite:{temp_path(self, 'h.sqlite')}"}}
        env = {"GATEWAY_TOKEN_SECRET": "b" * 32, "GATEWAY_PUBLIC_URL": front.url}
        a = yield start_gateway(self, emulator, config, env)
        b = yield start_gateway(self, emulator, config, env)
        for gateway in (a, b):
            self.addCleanup(lambda g=gateway: defer.maybeDeferred(g.stopService).addCallback(
                lambda _: g.gateway.handover.close_store()))
        front.backends = [a.port.getHost().port, b.port.getHost().port]
        profile = tempfile.mkdtemp(prefix="gw-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        driver = yield threads.deferToThread(_start_chromium, profile)
        self.addCleanup(threads.deferToThread, driver.quit)
        yield threads.deferToThread(driver.get, f"{front.url}/demo/?processing=off&rate=48000")
        yield self.wait_for(driver, "return window.demo && window.demo.state.status", "page loaded")
        yield threads.deferToThread(lambda: driver.find_element("id", "call").click())

        # The caller's question and the agent's answer, on A.
        yield self.wait_for(
            driver,
            "const s = window.demo.state; const user = s.conversation.findIndex(t => t.role === 'user');"
            " const events = s.events.map(e => e.type);"
            " return user >= 0 && s.conversation.slice(user).some(t => t.role === 'assistant')"
            " && events.lastIndexOf('AgentAudioDone') > events.lastIndexOf('AgentStartedSpeaking')",
            "the agent's answer")
        self.assertEqual(len(a.gateway.calls), 1)
        stopping = a.stopService()  # the drain of a rolling restart
        yield self.wait_for(driver, "const h = window.demo.state.handovers;"
                                    " return h.length === 1 && h[0].openedAt !== null", "the move to B")
        yield wait_until(lambda: len(emulator.sessions) == 2 and len(emulator.sessions[1].audio) > 32000, 30)
        yield stopping
        self.assertEqual(len(b.gateway.calls), 1, "the call goes on in B")
        # The user saw no close, only the status saying the call moved.
        shown = yield threads.deferToThread(driver.execute_script,
                                            "return [document.getElementById('close').hidden,"
                                            " document.getElementById('status').textContent]")
        self.assertEqual(shown, [True, "connected: speak (the call moved to another gateway process)"])
        yield threads.deferToThread(lambda: driver.find_element("id", "hangup").click())
        yield self.wait_for(driver, "return window.demo.state.close", "the close")
        snapshot = yield threads.deferToThread(driver.execute_script, "return window.demo.snapshot()")

        self.assertEqual(snapshot["close"]["code"], 1000)
        self.assertIsNone(snapshot["lastError"])
        [moved] = snapshot["handovers"]
        self.assertEqual((moved["url"], moved["attempts"]), (front.url.replace("http", "ws") + "/client", 0))
        self.assertIn("Handover", [e["type"] for e in snapshot["events"]])
        s1, s2 = emulator.sessions
        yield s2.closed
        self.assertIn("greeting", s1.settings["agent"])
        self.assertNotIn("greeting", s2.settings["agent"])
        remembered = s2.settings["agent"]["context"]["messages"]
        self.assertTrue(any(m.get("role") == "user" for m in remembered), remembered)
        # Every frame the page sent on the second socket reached the second session.
        self.assertGreater(snapshot["bytesSent"], len(s1.audio))
        self.assertLessEqual(len(s1.audio) + len(s2.audio), snapshot["bytesSent"])
        yield wait_until(lambda: not b.gateway.calls, 10)
