"""
The browser demo in real headless Chromium, driven by Selenium, against a whole gateway and the
Deepgram emulator on loopback.

Chromium's fake microphone plays a 48 kHz speech clip (looped); the page's AudioWorklet turns it
into PCM s16le 16 kHz mono and the emulator records what arrives. That audio is compared with a
reference resampling of the same clip (`gateway.codecs.resample.Resampler`), in half-second
blocks each aligned by cross-correlation to a fraction of a sample: the figure is the median
block's signal-to-error ratio after a least-squares gain.

Selenium is blocking, so every WebDriver call runs in a thread (`deferToThread`) while the
reactor serves the gateway and the emulator. Needs /usr/bin/chromium and /usr/bin/chromedriver:
with ``CI=true`` their absence fails the test; elsewhere it skips, saying why.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SkipTest, TestCase

from gateway.codecs.resample import Resampler
from tests.system.harness import DATA, clip, start_emulator, start_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLIP_48K = os.path.join(DATA, "caller-order-48k-s16le.wav")

#: Minimum signal-to-error ratio (dB) between what the emulator received and the reference
#: resampling. The worklet's resampler and the reference agree to ~62 dB on this clip (checked
#: offline, outside the browser); through Chromium the median block measured 61-69 dB. A block
#: must beat this; the median must beat it by 10 dB. A missing low-pass, a
#: wrong rate, lost or repeated frames or byte-order mistakes all score far below 30.
MIN_MATCH_DB = 30.0


def _browser_or_skip() -> None:
    """Fail under CI without Chromium and chromedriver; skip elsewhere, saying why."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    why = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        raise AssertionError(f"CI=true and {why}")
    raise SkipTest(why)


def _start_chromium(profile_dir: str) -> Any:
    """A headless Chromium whose microphone plays the 48 kHz clip."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile_dir}", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        # %noloop: the clip plays once, then silence, so the caller's turn ends and the agent answers.
        f"--use-file-for-fake-audio-capture={CLIP_48K}%noloop", "--window-size=1100,1300",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _delayed(x: np.ndarray, delay: float) -> np.ndarray:
    """``x`` delayed by ``delay`` samples (fractional: a band-limited shift in the frequency domain)."""
    size = 1 << len(x).bit_length()
    freqs = np.fft.rfftfreq(size)
    return np.fft.irfft(np.fft.rfft(x, size) * np.exp(-2j * np.pi * freqs * delay), size)[: len(x)]


def _ratio_db(received: np.ndarray, ref: np.ndarray) -> float:
    gain = float(np.dot(received, ref) / np.dot(ref, ref))
    error = received - gain * ref
    return float(10 * np.log10(np.dot(gain * ref, gain * ref) / np.dot(error, error)))


def match_db(received: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """
    How well ``received`` matches a stretch of ``reference`` (both float, 16 kHz): the whole-sample
    offset found by FFT cross-correlation, refined to a fraction of a sample (the browser's
    capture starts at any point of the 48 kHz stream, and Chromium may resample it first), then
    10 log10(signal / error) after a least-squares gain. Returns (dB, offset in samples).
    """
    n = len(received) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(received, size)), size)
    margin = 64
    offset = margin + int(np.argmax(corr[margin : len(reference) - len(received) - margin + 1]))
    stretch = reference[offset - margin : offset + len(received) + margin]

    def at(delay: float) -> float:
        return _ratio_db(received, _delayed(stretch, delay)[margin : margin + len(received)])

    best = max((at(d), d) for d in np.arange(-1.5, 1.5001, 0.05))
    best = max((at(d), d) for d in np.arange(best[1] - 0.05, best[1] + 0.0501, 0.005))
    return best[0], offset - best[1]


class BrowserDemoTests(TestCase):
    """The /demo/ page in headless Chromium: microphone to Deepgram, agent audio to the speakers."""

    timeout = 180

    @defer.inlineCallbacks
    def open_page(self, query: str) -> Any:
        """Gateway with the demo on, the emulator, and Chromium on the page; returns them."""
        _browser_or_skip()
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {"gateway": {"demo": True}})
        port = gateway.port.getHost().port
        profile = tempfile.mkdtemp(prefix="gw-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        driver = yield threads.deferToThread(_start_chromium, profile)
        self.addCleanup(threads.deferToThread, driver.quit)
        yield threads.deferToThread(driver.get, f"http://127.0.0.1:{port}/demo/?{query}")
        yield self.wait_for(driver, "return window.demo && window.demo.state.status", "page loaded")
        return emulator, gateway, driver

    @defer.inlineCallbacks
    def wait_for(self, driver: Any, script: str, what: str, timeout_s: float = 40.0) -> Any:
        """Poll ``script`` in the page until it returns something true (bounded)."""
        deadline = reactor.seconds() + timeout_s
        while True:
            value = yield threads.deferToThread(driver.execute_script, script)
            if value:
                return value
            if reactor.seconds() > deadline:
                state = yield threads.deferToThread(driver.execute_script, "return window.demo && window.demo.snapshot()")
                console = yield threads.deferToThread(driver.get_log, "browser")
                for entry in console:
                    print("chromium console:", entry.get("level"), entry.get("message"), file=sys.stderr)
                self.fail(f"timed out after {timeout_s} s waiting for {what}; page state: {state}")
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def converse(self, rate: int) -> Any:
        """A call from the page with the AudioContext at ``rate``: returns (emulator, snapshot, driver)."""
        emulator, gateway, driver = yield self.open_page(f"processing=off&rate={rate}")
        yield threads.deferToThread(lambda: driver.find_element("id", "call").click())
        # The clip is 5.27 s; wait for more than that to reach Deepgram (the greeting is cut
        # short by the caller's speech: a barge-in), then for the agent's reply to the caller's
        # turn to be played to its end.
        yield self.wait_for(driver, "return window.demo.state.framesSent >= 330", "7 s of microphone frames")
        yield self.wait_for(
            driver,
            "const s = window.demo.state; const user = s.conversation.findIndex(t => t.role === 'user');"
            " const events = s.events.map(e => e.type);"
            " return user >= 0 && s.conversation.slice(user).some(t => t.role === 'assistant')"
            " && events.lastIndexOf('AgentAudioDone') > events.lastIndexOf('AgentStartedSpeaking')"
            " && s.playback.queuedSamples === 0 && !s.playback.playing"
            " && s.playback.playedSamples > 0.5 * s.playback.outputRate",
            "the agent's reply to be played to its end",
        )
        yield threads.deferToThread(lambda: driver.find_element("id", "hangup").click())
        yield self.wait_for(driver, "return window.demo.state.close", "the close")
        snapshot = yield threads.deferToThread(driver.execute_script, "return window.demo.snapshot()")
        yield emulator.sessions[0].closed
        return emulator, snapshot, driver

    def assertClipArrived(self, emulator: Any, rate: int) -> float:
        """The emulator got linear16 16 kHz mono matching the clip; returns the match in dB."""
        session = emulator.sessions[0]
        self.assertEqual(session.settings["audio"]["input"], {"encoding": "linear16", "sample_rate": 16000})
        received = np.frombuffer(session.audio[: len(session.audio) // 2 * 2], dtype="<i2").astype(float)
        self.assertGreater(len(received), 16000 * 6)
        source = clip("caller-order-48k-s16le.wav")
        # The clip plays once, from when the microphone opens. Each half second of what arrived
        # (from a quarter second in, skipping silence) is aligned on its own against the clip
        # padded with silence: Chromium's fake capture now and then drops a 10 ms buffer under
        # load, which shifts everything after it; the page cannot see that, so it is not counted
        # against the page. The figure is the median block; nearly every block must match.
        resampled = np.frombuffer(Resampler(48000, 16000).process(source.data), dtype="<i2").astype(float)
        reference = np.concatenate([np.zeros(16000 * 2), resampled, np.zeros(16000 * 10)])
        blocks = []
        for start in range(4000, 16000 * 6, 8000):
            block = received[start : start + 8000]
            if len(block) == 8000 and np.sqrt(np.mean(block**2)) > 300:
                blocks.append(match_db(block, reference)[0])
        self.assertGreaterEqual(len(blocks), 8, "too little of the clip arrived (or it is silent)")
        db = float(np.median(blocks))
        good = sum(b > MIN_MATCH_DB for b in blocks)
        print(f"\nbrowser audio at AudioContext {rate} Hz matches the reference resampling of the "
              f"48 kHz clip: median {db:.1f} dB signal-to-error over {len(blocks)} half-second "
              f"blocks ({good} above {MIN_MATCH_DB:g} dB; worst {min(blocks):.1f} dB)")
        self.assertGreater(db, MIN_MATCH_DB + 10)
        # Chromium's fake capture drops a 10 ms buffer now and then, more often on a loaded host
        # (one CI run had 3 blocks of 10 hit); what the gateway relays is checked byte for byte by
        # assertNothingLost, so a dropped buffer here is the browser's, not ours.
        self.assertGreaterEqual(good, len(blocks) - 3)
        return db

    def assertNothingLost(self, emulator: Any, snapshot: dict) -> None:
        """Every byte the page sent while its socket was open reached Deepgram, through the gateway."""
        self.assertGreater(snapshot["bytesSent"], 0)
        self.assertEqual(len(emulator.sessions[0].audio), snapshot["bytesSent"])

    def assertPlayedAndShown(self, snapshot: dict) -> None:
        """The page played the agent's reply without gaps and shows the conversation and events."""
        playback = snapshot["playback"]
        self.assertGreater(playback["receivedSamples"], 0)
        self.assertGreater(playback["playedSamples"], 0.5 * playback["outputRate"])
        self.assertEqual(playback["underruns"], 0)
        self.assertIn("assistant", [turn["role"] for turn in snapshot["conversation"]])
        types = [event["type"] for event in snapshot["events"]]
        self.assertIn("AgentStartedSpeaking", types)
        self.assertEqual(snapshot["close"]["code"], 1000)
        self.assertEqual(snapshot["capture"]["clipped"], 0)

    @defer.inlineCallbacks
    def test_call_at_48k(self) -> None:
        """At 48 kHz: the clip reaches Deepgram as 16 kHz PCM, the reply plays, a screenshot is saved."""
        emulator, snapshot, driver = yield self.converse(48000)
        self.assertEqual(snapshot["sampleRate"], 48000)
        self.assertClipArrived(emulator, 48000)
        self.assertNothingLost(emulator, snapshot)
        self.assertPlayedAndShown(snapshot)
        text = yield threads.deferToThread(lambda: driver.find_element("id", "conversation").text)
        self.assertIn("Agent:", text)
        shots = tempfile.mkdtemp(prefix="gw-browser-screenshot-")
        path = os.path.join(shots, "demo-call-48k.png")
        saved = yield threads.deferToThread(driver.save_screenshot, path)
        self.assertTrue(saved and os.path.getsize(path) > 0)
        print(f"\nscreenshot of the demo page after the call: {path}")

    @defer.inlineCallbacks
    def test_call_at_44k1(self) -> None:
        """At 44.1 kHz the worklet's resampler (160 phases) still delivers the clip faithfully."""
        emulator, snapshot, _ = yield self.converse(44100)
        self.assertEqual(snapshot["sampleRate"], 44100)
        self.assertEqual(snapshot["capture"]["phases"], 160)
        self.assertClipArrived(emulator, 44100)
        self.assertNothingLost(emulator, snapshot)
        self.assertPlayedAndShown(snapshot)

    @defer.inlineCallbacks
    def test_bad_token(self) -> None:
        """A refused token: the page shows 4003 AUTH_FAILED in plain words and the JSON error."""
        emulator, _, driver = yield self.open_page("token=not-a-real-token")
        yield threads.deferToThread(lambda: driver.find_element("id", "call").click())
        close = yield self.wait_for(driver, "return window.demo.state.close", "the close")
        self.assertEqual(close["code"], 4003)
        self.assertEqual(close["error"]["code"], "AUTH_FAILED")
        shown = yield threads.deferToThread(lambda: driver.find_element("id", "close").text)
        self.assertIn("Closed: 4003 AUTH_FAILED", shown)
        self.assertIn("The token was refused", shown)
        self.assertIn("The gateway said: AUTH_FAILED", shown)
        self.assertEqual(emulator.upgrade_attempts, 0)
