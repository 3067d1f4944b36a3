"""Tests for gateway.codecs.client (the ``/client`` protocol) and gateway.codecs.bounded_json."""

from __future__ import annotations

import ast
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs import bounded_json, client
from gateway.errors import CallerProtocolError
from gateway.events import Audio, CallerControl, ClientHello

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HelloTests(SynchronousTestCase):
    """The first message: a token, optional string parameters, or a refusal with a reason."""

    def assertRefused(self, payload: bytes, reason: str, binary: bool = False) -> ClientHello:
        hello = client.parse_hello(payload, binary)
        self.assertEqual((hello.token, hello.reason), ("", reason))
        self.assertTrue(hello.problem)
        self.assertIn(reason, client.HELLO_REASONS)
        return hello

    def test_token_and_parameters(self) -> None:
        """A well-formed hello carries the token and the parameters; no problem, no reason."""
        hello = client.parse_hello(b'{"token": "t.x", "parameters": {"greeting": "hi"}}', False)
        self.assertEqual(hello, ClientHello("t.x", {"greeting": "hi"}))
        self.assertIsNone(hello.problem)
        self.assertIsNone(hello.reason)

    def test_refusals(self) -> None:
        """Each way a first message is not a hello, with its reason."""
        self.assertRefused(b"\x00\x01", "binary_frame", binary=True)
        self.assertRefused(b"{nope", "bad_json")
        self.assertRefused(b'{"token": "\xff"}', "bad_utf8")
        self.assertRefused(b'["token"]', "not_object")
        self.assertRefused(b'{"tok": "x"}', "missing_field")
        self.assertRefused(b'{"token": 5}', "wrong_type")
        self.assertRefused(b'{"token": "x", "parameters": {"a": 1}}', "wrong_type")
        self.assertRefused(b'{"token": "x", "parameters": [1]}', "wrong_type")
        self.assertRefused(b" " * (client.MAX_TEXT_BYTES + 1), "too_big")

    def test_deep_nesting(self) -> None:
        """Nesting past the limit is refused before decoding (it used to raise RecursionError)."""
        hello = self.assertRefused(b'{"token": "x", "p": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
                                   "too_deep")
        self.assertIn("20001 levels", hello.problem)

    def test_lone_surrogate(self) -> None:
        """A token or parameter with a lone surrogate is refused, naming the field only."""
        hello = self.assertRefused(b'{"token": "ab\\ud800"}', "bad_unicode")
        self.assertIn("in token", hello.problem)
        self.assertRefused(b'{"token": "x", "parameters": {"g": "\\udfff"}}', "bad_unicode")
        # a proper pair is fine
        self.assertEqual(client.parse_hello(b'{"token": "\\ud83d\\ude00"}', False).token, "\U0001f600")

    def test_not_finite_numbers(self) -> None:
        """NaN, Infinity and numbers that overflow a float are not JSON."""
        for text in (b'{"token": "x", "n": NaN}', b'{"token": "x", "n": -Infinity}',
                     b'{"token": "x", "n": 1e999}'):
            self.assertRefused(text, "bad_json")


class ControlTests(SynchronousTestCase):
    """Later text frames: a JSON object, or CallerProtocolError with a reason."""

    def assertRejected(self, payload: bytes, reason: str) -> CallerProtocolError:
        with self.assertRaises(CallerProtocolError) as cm:
            client.parse_control(payload)
        self.assertEqual(cm.exception.reason, reason)
        self.assertIn(reason, client.CONTROL_REASONS)
        return cm.exception

    def test_object(self) -> None:
        """An object becomes CallerControl."""
        self.assertEqual(client.parse_control(b'{"type": "Ping"}'), CallerControl({"type": "Ping"}))

    def test_rejections(self) -> None:
        """Every refusal has its reason."""
        self.assertRejected(b"{nope", "bad_json")
        self.assertRejected(b"[1]", "not_object")
        self.assertRejected(b"\xff", "bad_utf8")
        self.assertRejected(b"[" * 5000, "too_deep")
        self.assertRejected(b'{"type": "\\udc00"}', "bad_unicode")
        self.assertRejected(b"1" * 5000, "bad_json")  # int() refuses more than 4,300 digits
        self.assertRejected(b" " * (client.MAX_TEXT_BYTES + 1), "too_big")


class SerialiseTests(SynchronousTestCase):
    """What clients get."""

    def test_error_and_event(self) -> None:
        """Errors and forwarded events are JSON text."""
        self.assertEqual(json.loads(client.error_message("AUTH_TIMEOUT", "late")),
                         {"type": "Error", "source": "gateway", "code": "AUTH_TIMEOUT",
                          "description": "late", "message": "late"})
        self.assertEqual(json.loads(client.event_message({"type": "Welcome", "x": "é"})),
                         {"type": "Welcome", "x": "é"})

    def test_one_error_shape(self) -> None:
        """The gateway's and Deepgram's Errors share one shape: source, code, description, message."""
        gateway = json.loads(client.error_message("UNKNOWN_MESSAGE", "message.type: ..."))
        deepgram = json.loads(client.event_message(
            {"type": "Error", "description": "Settings rejected.", "code": "INVALID_SETTINGS"}))
        self.assertEqual(deepgram, {"type": "Error", "source": "deepgram", "code": "INVALID_SETTINGS",
                                    "description": "Settings rejected.", "message": "Settings rejected."})
        self.assertEqual(set(gateway), set(deepgram))
        self.assertEqual((gateway["source"], gateway["description"]), ("gateway", gateway["message"]))

    def test_forwarded_events_come_from_the_sdk(self) -> None:
        """Every server message of the agent, listen and Flux endpoints is forwarded."""
        from gateway.codecs.deepgram_messages import server_messages

        for endpoint in ("agent", "listen", "flux"):
            self.assertLessEqual(set(server_messages(endpoint)), client.FORWARDED_EVENTS)
        self.assertLessEqual({"PromptUpdated", "InjectionRefused", "FunctionCallCancelled", "TurnInfo",
                              "ConfigureSuccess", "LatencyReport"}, client.FORWARDED_EVENTS)


class BoundedJsonTests(SynchronousTestCase):
    """The bounded decoder all caller codecs use."""

    def test_depth_counts_brackets_outside_strings(self) -> None:
        """Brackets inside strings, escaped quotes included, do not count."""
        self.assertEqual(bounded_json.nesting_depth('{"a": "[[[[", "b": [{}]}'), 3)
        self.assertEqual(bounded_json.nesting_depth('["\\"[[[", [[]]]'), 3)
        self.assertEqual(bounded_json.nesting_depth('"unterminated [[[['), 0)
        self.assertEqual(bounded_json.nesting_depth("[" * 100), 100)

    def test_limit_is_inclusive(self) -> None:
        """MAX_DEPTH levels decode; one more is refused."""
        limit = bounded_json.MAX_DEPTH
        expected: list = []
        for _ in range(limit - 1):
            expected = [expected]
        self.assertEqual(bounded_json.loads("[" * limit + "]" * limit), expected)
        with self.assertRaises(ValueError):
            bounded_json.loads("[" * (limit + 1) + "]" * (limit + 1))

    def test_brackets_in_strings_are_not_depth(self) -> None:
        """A string full of brackets is a string, not nesting."""
        self.assertEqual(bounded_json.loads('{"a": "' + "[" * 5000 + '"}'), {"a": "[" * 5000})

    def test_linear_on_quotes_and_backslashes(self) -> None:
        """Text of quotes and backslashes (a regex trap) is scanned quickly."""
        for text in ('"' * 60_000 + "[" * 40, '"\\' * 30_000 + "[" * 40, '["\\"' * 15_000):
            bounded_json.nesting_depth(text)

    def test_replace_mode(self) -> None:
        """Deepgram's text keeps its message: lone surrogates become U+FFFD."""
        self.assertEqual(bounded_json.loads(b'{"t": "a\\ud800"}', surrogates="replace"),
                         {"t": "a\ufffd"})

    def test_str_input_with_surrogate(self) -> None:
        """A str frame holding a surrogate is refused like an escaped one."""
        with self.assertRaises(ValueError) as cm:
            bounded_json.loads('{"t": "\ud800"}')
        self.assertIn("bad_unicode", str(cm.exception))


class StreamTests(SynchronousTestCase):
    """`client.ClientStream`: the hello first, then audio and control, sans-IO."""

    def test_order(self) -> None:
        """The first message is the hello; then binary is audio and text is control."""
        stream = client.ClientStream()
        hello = stream.receive(b'{"token": "t"}', False)
        self.assertEqual((type(hello), hello.token), (ClientHello, "t"))
        self.assertEqual(stream.receive(b"\x01\x02", True), Audio(b"\x01\x02"))
        self.assertEqual(stream.receive(b'{"type": "KeepAlive"}', False),
                         CallerControl({"type": "KeepAlive"}))
        self.assertEqual(stream.receive(b'{"token": "again"}', False),
                         CallerControl({"token": "again"}), "a second hello is only control")

    def test_a_bad_hello_is_still_the_hello(self) -> None:
        """A first message that is not a hello is a ClientHello with its reason, never an error."""
        stream = client.ClientStream()
        self.assertEqual(stream.receive(b"\x00", True).reason, "binary_frame")
        self.assertEqual(stream.receive(b"\x00", True), Audio(b"\x00"))

    def test_bad_control_and_its_answer(self) -> None:
        """A bad control message raises with a reason; the answer is an INVALID_MESSAGE error."""
        stream = client.ClientStream()
        stream.receive(b'{"token": "t"}', False)
        with self.assertRaises(CallerProtocolError) as cm:
            stream.receive(b"[1]", False)
        self.assertIn(cm.exception.reason, client.CONTROL_REASONS)
        self.assertEqual(stream.reply_to(cm.exception),
                         client.error_message("INVALID_MESSAGE", cm.exception.message))

    def test_frames_out(self) -> None:
        """Audio as it came, in binary; events and errors as JSON; clear and mark are nothing."""
        stream = client.ClientStream()
        self.assertTrue(stream.audio_binary)
        self.assertEqual(stream.media(b"\x01\x00"), b"\x01\x00")
        self.assertEqual(stream.event({"type": "Welcome"}), client.event_message({"type": "Welcome"}))
        self.assertEqual(stream.error("X", "y"), client.error_message("X", "y"))
        self.assertEqual((stream.clear(), stream.mark("m")), (None, None))


class SansIOTests(SynchronousTestCase):
    """Codecs import nothing that does I/O (STYLE §2)."""

    def test_codecs_import_no_twisted_internet_or_autobahn(self) -> None:
        """No module in gateway/codecs imports twisted.internet or autobahn."""
        folder = os.path.join(ROOT, "gateway", "codecs")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    self.assertFalse(module.startswith(("twisted.internet", "autobahn")),
                                     f"gateway/codecs/{name} imports {module}")
