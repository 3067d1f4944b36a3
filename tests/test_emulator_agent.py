"""
The emulator's Voice Agent endpoint, driven by the ``websockets`` sync client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.emulator.voice import agent_audio
from tests.test_emulator import Client, EmulatorTestCase, clip, frames, run_client, settings

ORDER = clip("caller-order-8k-mulaw.wav")
SILENCE = b"\xff" * 8000  # 1 s of mu-law silence


def speak(client: Client, audio: bytes = ORDER, silence: bytes = SILENCE, size: int = 1600) -> None:
    """Send ``audio`` then ``silence`` in frames, as fast as the socket takes them."""
    for frame in frames(audio + silence, size):
        client.send(frame)


class AgentConversationTests(EmulatorTestCase):
    """The happy path: Welcome, Settings, greeting, turns."""

    @defer.inlineCallbacks
    def test_greeting(self) -> None:
        """Welcome, SettingsApplied, then the greeting spoken in the output format and AgentAudioDone."""

        def script(client: Client) -> None:
            client.send_json(settings(greeting="Hello there!"))
            client.until("AgentAudioDone")

        outcome = yield run_client(self.emu.url("agent"), script)
        session = self.emu.sessions[0]
        yield session.closed
        self.assertEqual(outcome.types[:2], ["Welcome", "SettingsApplied"])
        self.assertIn({"type": "ConversationText", "role": "assistant", "content": "Hello there!",
                       "conversational_behavior": "default"}, outcome.texts)
        self.assertLess(outcome.types.index("AgentStartedSpeaking"), outcome.types.index("AgentAudioDone"))
        self.assertEqual(outcome.audio, agent_audio("mulaw", 8000))
        self.assertEqual(outcome.audio, clip("agent-greeting-8k-mulaw.wav"))
        chunk_sizes = {len(m) for m in outcome.messages[:-2] if isinstance(m, bytes)}
        self.assertEqual(chunk_sizes, {480})  # 60 ms of mu-law 8 kHz
        self.assertEqual(session.settings["agent"]["greeting"], "Hello there!")
        self.assertEqual(session.received[0], ("text", settings(greeting="Hello there!")))

    @defer.inlineCallbacks
    def test_output_formats(self) -> None:
        """linear16 at 8, 16 and 24 kHz: whole samples, the clip's duration at that rate."""
        for rate in (8000, 16000, 24000):
            def script(client: Client, rate: int = rate) -> None:
                client.send_json(settings(greeting="Hi", output={"encoding": "linear16", "sample_rate": rate}))
                client.until("AgentAudioDone")

            outcome = yield run_client(self.emu.url("agent"), script)
            self.assertEqual(outcome.audio, agent_audio("linear16", rate))
            self.assertLess(abs(len(outcome.audio) / 2 / rate - 2.27), 0.02)
            self.assertTrue(all(len(m) % 2 == 0 for m in outcome.messages if isinstance(m, bytes)))
        self.assertEqual(clip("agent-greeting-16k-s16le.wav"), agent_audio("linear16", 16000))

    @defer.inlineCallbacks
    def test_user_turn(self) -> None:
        """Speech in the caller audio: UserStartedSpeaking, the user's text, thinking, the answer."""

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            speak(client)
            client.until("AgentAudioDone")

        outcome = yield run_client(self.emu.url("agent"), script)
        types = outcome.types
        expected = ["UserStartedSpeaking", "ConversationText", "History", "AgentThinking",
                    "AgentStartedSpeaking", "ConversationText", "History", "AgentAudioDone"]
        self.assertEqual(types[types.index("UserStartedSpeaking"):], expected)
        texts = [m for m in outcome.texts if m["type"] == "ConversationText"]
        self.assertEqual([(t["role"], t["content"]) for t in texts],
                         [("user", "Hello, I would like to check the status of my order."),
                          ("assistant", "Sure, I can help with that.")])
        self.assertEqual(outcome.audio, agent_audio("mulaw", 8000))
        self.assertEqual(self.emu.sessions[0].audio, ORDER + SILENCE)

    @defer.inlineCallbacks
    def test_context_continues_the_script(self) -> None:
        """A Settings carrying a conversation (a call taken up elsewhere): the next lines, not the first."""
        carried = settings()
        carried["agent"]["context"] = {"messages": [
            {"type": "History", "role": "assistant", "content": "Hello! How can I help?"},
            {"type": "History", "role": "user", "content": "Hello, I would like to check the status of my order."},
            {"type": "History", "role": "assistant", "content": "Sure, I can help with that."},
        ]}

        def script(client: Client) -> None:
            client.send_json(carried)
            client.until("SettingsApplied")
            speak(client)
            client.until("AgentAudioDone")

        outcome = yield run_client(self.emu.url("agent"), script)
        texts = [m for m in outcome.texts if m["type"] == "ConversationText"]
        self.assertEqual([(t["role"], t["content"]) for t in texts],
                         [("user", "The number is four five six seven."),
                          ("assistant", "Thanks, let me look that up for you.")])

    @defer.inlineCallbacks
    def test_linear16_input(self) -> None:
        """Speech is detected in linear16 16 kHz input too (decoded in the declared encoding)."""
        audio = clip("caller-yes-16k-s16le.wav")

        def script(client: Client) -> None:
            client.send_json(settings(input={"encoding": "linear16", "sample_rate": 16000}))
            client.until("SettingsApplied")
            speak(client, audio, b"\x00" * 32000, 640)
            return client.until("ConversationText")

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.value["role"], "user")
        self.assertIn("UserStartedSpeaking", outcome.types)

    @defer.inlineCallbacks
    def test_silence_is_not_speech(self) -> None:
        """Silence (mu-law 0xFF) never starts a user turn."""

        def script(client: Client) -> list[Any]:
            client.send_json(settings())
            client.until("SettingsApplied")
            speak(client, b"", SILENCE * 3)
            return client.quiet(0.3)

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.types, ["Welcome", "SettingsApplied"])

    @defer.inlineCallbacks
    def test_barge_in(self) -> None:
        """Speech while the agent talks stops its audio and sends UserStartedSpeaking."""
        self.emu.options = self.emu.options.__class__(speed=1.0)  # real-time pacing for this test

        def script(client: Client) -> None:
            client.send_json(settings(greeting="A long greeting"))
            client.until("AgentStartedSpeaking")
            speak(client, ORDER[:4000], b"")
            client.until("UserStartedSpeaking")
            return client.quiet(0.4)

        outcome = yield run_client(self.emu.url("agent"), script)
        after = outcome.value
        self.assertEqual([m for m in after if isinstance(m, bytes)], [])
        self.assertNotIn("AgentAudioDone", outcome.types)
        self.assertLess(len(outcome.audio), len(agent_audio("mulaw", 8000)))

    @defer.inlineCallbacks
    def test_no_welcome(self) -> None:
        """send_welcome=False: nothing before SettingsApplied."""
        self.emu.options = self.emu.options.__class__(speed=50.0, send_welcome=False)

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.types, ["SettingsApplied"])


class AgentMessageTests(EmulatorTestCase):
    """The client messages besides Settings and audio."""

    @defer.inlineCallbacks
    def test_updates_and_keepalive(self) -> None:
        """KeepAlive gets no answer; Update* messages get their acknowledgements."""

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            client.send_json({"type": "KeepAlive"})
            client.send_json({"type": "UpdatePrompt", "prompt": "Be terse."})
            client.send_json({"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram",
                                                                            "model": "aura-2-zeus-en"}}})
            client.send_json({"type": "UpdateThink", "think": {"provider": {"type": "open_ai", "model": "gpt-4o"}}})
            client.send_json({"type": "UpdateListen", "listen": {"provider": {"type": "deepgram"}}})
            client.send_json({"type": "UpdateThink_Live", "think_live": {"provider": {"type": "deepgram"}}})
            client.send_json({"type": "ForceEndTurn"})
            client.until("ThinkLiveUpdated")

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.types[2:], ["PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated",
                                             "ThinkLiveUpdated"])


    @defer.inlineCallbacks
    def test_inject_messages(self) -> None:
        """InjectUserMessage makes a user turn; InjectAgentMessage is spoken (or refused mid-speech)."""

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            client.send_json({"type": "InjectAgentMessage", "message": "Are you still there?"})
            client.send_json({"type": "InjectAgentMessage", "message": "Second", "behavior": "default"})
            client.until("InjectionRefused")
            client.until("AgentAudioDone")
            client.send_json({"type": "InjectUserMessage", "content": "Pressed 5"})
            client.until("AgentAudioDone")

        outcome = yield run_client(self.emu.url("agent"), script)
        texts = [(m["role"], m["content"]) for m in outcome.texts if m["type"] == "ConversationText"]
        self.assertEqual(texts, [("assistant", "Are you still there?"), ("user", "Pressed 5"),
                                 ("assistant", "Sure, I can help with that.")])

    @defer.inlineCallbacks
    def test_function_call(self) -> None:
        """A user turn naming a client-side function: FunctionCallRequest; the response leads to an answer."""
        with_function = settings()
        with_function["agent"]["think"]["functions"] = [
            {"name": "transfer_call", "description": "Transfer the call", "parameters": {"type": "object"}}]

        def script(client: Client) -> None:
            client.send_json(with_function)
            client.until("SettingsApplied")
            client.send_json({"type": "InjectUserMessage", "content": "Please transfer call to sales"})
            request = client.until("FunctionCallRequest")
            (function,) = request["functions"]
            client.send_json({"type": "FunctionCallResponse", "id": function["id"],
                              "name": function["name"], "content": "transferred"})
            client.until("AgentAudioDone")
            return function

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual((outcome.value["name"], outcome.value["arguments"], outcome.value["client_side"]),
                         ("transfer_call", "{}", True))
        self.assertIn("AgentStartedSpeaking", outcome.types)


class AgentErrorTests(EmulatorTestCase):
    """Deepgram's fatal errors: an Error, then a Close frame without a status code."""

    options = {"client_message_timeout_s": 0.3}

    def fatal(self, messages: list[Any]) -> defer.Deferred:
        def script(client: Client) -> None:
            client.until("Welcome")
            for message in messages:
                if isinstance(message, bytes):
                    client.send(message)
                else:
                    client.send_json(message)
            client.drain()

        def check(outcome: Any) -> dict[str, Any]:
            self.assertTrue(outcome.close_frame)
            self.assertEqual(outcome.close_code, 1005)  # a Close frame with no status code
            self.assertEqual(outcome.types[-1], "Error")
            self.assertEqual(self.emu.sessions[-1].sent_close, (None, None))
            return outcome.texts[-1]

        return run_client(self.emu.url("agent"), script).addCallback(check)

    @defer.inlineCallbacks
    def test_message_before_settings(self) -> None:
        """A KeepAlive or audio before Settings: NON_SETTINGS_MESSAGE_BEFORE_SETTINGS."""
        error = yield self.fatal([{"type": "KeepAlive"}])
        self.assertEqual(error["code"], "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS")
        error = yield self.fatal([b"\xff" * 160])
        self.assertEqual(error["code"], "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS")

    @defer.inlineCallbacks
    def test_update_checked_by_sdk_types(self) -> None:
        """An Update* the SDK's types refuse (a speak provider without model) is UNPARSABLE, naming it."""
        error = yield self.fatal([settings(), {"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}}])
        self.assertEqual(error["code"], "UNPARSABLE_CLIENT_MESSAGE")
        self.assertIn("UpdateSpeak.speak.provider.model", error["description"])

    @defer.inlineCallbacks
    def test_unparsable(self) -> None:
        """Bad JSON, an unknown type or a schema violation: UNPARSABLE_CLIENT_MESSAGE naming the field."""
        error = yield self.fatal(["{not json"])
        self.assertEqual(error["code"], "UNPARSABLE_CLIENT_MESSAGE")
        bad = settings()
        bad["agent"]["listen"]["endpointing"] = 300
        error = yield self.fatal([bad])
        self.assertEqual(error["code"], "UNPARSABLE_CLIENT_MESSAGE")
        self.assertIn("agent.listen.endpointing", error["description"])
        error = yield self.fatal([settings(), {"type": "Bogus"}])
        self.assertEqual(error["code"], "UNPARSABLE_CLIENT_MESSAGE")

    @defer.inlineCallbacks
    def test_invalid_settings(self) -> None:
        """A sample rate out of range, an output the emulator cannot make, a bad fault tag: INVALID_SETTINGS."""
        error = yield self.fatal([settings(input={"encoding": "mulaw", "sample_rate": 123})])
        self.assertEqual(error["code"], "INVALID_SETTINGS")
        self.assertIn("audio.input.sample_rate", error["description"])
        error = yield self.fatal([settings(output={"encoding": "mp3", "sample_rate": 24000})])
        self.assertIn("audio.output.encoding", error["description"])
        tagged = dict(settings(), tags=["emulator-fault:explode"])
        error = yield self.fatal([tagged])
        self.assertIn("unknown fault kind 'explode'", error["description"])
        self.assertIsNone(self.emu.sessions[-1].settings)

    @defer.inlineCallbacks
    def test_second_settings(self) -> None:
        """A second Settings: SETTINGS_ALREADY_APPLIED."""
        error = yield self.fatal([settings(), settings()])
        self.assertEqual(error["code"], "SETTINGS_ALREADY_APPLIED")

    @defer.inlineCallbacks
    def test_audio_format(self) -> None:
        """A WAV header on declared raw mu-law: USER_AUDIO_FORMAT."""
        error = yield self.fatal([settings(), b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\xff" * 100])
        self.assertEqual(error["code"], "USER_AUDIO_FORMAT")

    @defer.inlineCallbacks
    def test_client_message_timeout(self) -> None:
        """No client message within the window: CLIENT_MESSAGE_TIMEOUT with Deepgram's description."""
        error = yield self.fatal([settings()])
        self.assertEqual(error["code"], "CLIENT_MESSAGE_TIMEOUT")
        self.assertIn("We waited too long for a websocket message", error["description"])

    @defer.inlineCallbacks
    def test_audio_keeps_session_alive(self) -> None:
        """Audio (or KeepAlive) inside the window keeps the session open past it."""

        def script(client: Client) -> list[str]:
            client.send_json(settings())
            client.until("SettingsApplied")
            for i in range(8):
                client.send(b"\xff" * 800) if i % 2 else client.send_json({"type": "KeepAlive"})
                client.quiet(0.1)
            return [m.get("type") for m in client.outcome.texts]

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertNotIn("Error", outcome.value)
        self.assertEqual(outcome.close_code, 1000)
        self.assertEqual(self.emu.sessions[0].close_code, 1000)

    @defer.inlineCallbacks
    def test_empty_frame_ends_session(self) -> None:
        """An empty binary frame ends the agent session with a normal close."""

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            client.send(b"")
            client.drain()

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.close_code, 1000)
