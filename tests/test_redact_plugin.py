"""The built-in redact plugin (plugins/redact.py): its rules, its stage, its options."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ConfigError
from gateway.events import DeepgramEvent
from gateway.testing import RecordingContext, configure
from plugins.redact import Redactor, RedactStage, luhn_valid

CARD = "4111 1111 1111 1111"  # a test Visa number: passes Luhn


def dg(kind: str, **fields: object) -> DeepgramEvent:
    return DeepgramEvent(kind, {"type": kind, **fields})


class RulesTests(SynchronousTestCase):
    """Redactor: what each rule masks; every masked character becomes the mask, spaces stay."""

    def test_digits(self) -> None:
        """Every digit by default; runs shorter than min_digits are kept."""
        self.assertEqual(Redactor().apply("Order 12345, 2 items")[0], "Order #####, # items")
        self.assertEqual(Redactor(min_digits=3).apply("Order 12345, 2 items")[0], "Order #####, 2 items")

    def test_luhn(self) -> None:
        """The Luhn check."""
        self.assertTrue(luhn_valid("4111111111111111"))
        self.assertTrue(luhn_valid("79927398713"))
        self.assertFalse(luhn_valid("4111111111111112"))

    def test_cards_without_digits(self) -> None:
        """With digits off, a card number (spaces or hyphens allowed) is masked; other numbers are not."""
        r = Redactor(digits=False, number_words=False)
        self.assertEqual(r.apply(f"card {CARD}.")[0], "card #### #### #### ####.")
        self.assertEqual(r.apply("card 4111-1111-1111-1111")[0], "card ###################")
        self.assertEqual(r.apply("not a card 4111 1111 1111 1112, order 12345")[0],
                         "not a card 4111 1111 1111 1112, order 12345")

    def test_number_words(self) -> None:
        """Two or more spoken digits in a row; a lone one (no one) is kept."""
        r = Redactor()
        self.assertEqual(r.apply("The number is four five six seven.")[0], "The number is #### #### ### #####.")
        self.assertEqual(r.apply("No one called.")[0], "No one called.")
        self.assertEqual(Redactor(number_words=False).apply("four five")[0], "four five")

    def test_patterns(self) -> None:
        """Configured regular expressions, each match masked."""
        r = Redactor(patterns=(re.compile(r"[\w.]+@[\w.]+"),), mask="*")
        self.assertEqual(r.apply("Mail jo.doe@example.com today")[0], "Mail " + "*" * len("jo.doe@example.com") + " today")

    def test_words_stay_aligned(self) -> None:
        """A match spanning words masks its part of each word, whatever the rule."""
        r = Redactor(digits=False, number_words=False)
        words, rules = r.apply_words(["card", "4111", "1111", "1111", "1111.", "thanks"])
        self.assertEqual(words, ["card", "####", "####", "####", "####.", "thanks"])
        self.assertEqual(rules, ["card"])


class StageTests(SynchronousTestCase):
    """The stage rewrites outbound transcripts only, and counts what it masked."""

    def stage(self, roles: tuple = ("user", "assistant"), **rules: object) -> tuple[RedactStage, RecordingContext]:
        ctx = RecordingContext()
        return RedactStage(ctx, Redactor(**rules), frozenset(roles)), ctx

    def test_conversation_text(self) -> None:
        """ConversationText content is masked for the configured roles, and counted by rule."""
        stage, ctx = self.stage()
        handler = stage.routes().outbound[DeepgramEvent]
        out = handler(dg("ConversationText", role="user", content="My order number is 12345."))
        self.assertEqual(out.message, {"type": "ConversationText", "role": "user",
                                       "content": "My order number is #####."})
        self.assertEqual(ctx.counted("redacted", rule="digits"), 1)
        only_user, _ = self.stage(roles=("user",))
        event = dg("ConversationText", role="assistant", content="Order 12345 found.")
        self.assertIs(only_user.on_event(event), event)

    def test_untouched_events_pass_as_they_are(self) -> None:
        """Events without a transcript, and transcripts with nothing to mask, are the same objects."""
        stage, ctx = self.stage()
        for event in (dg("FunctionCallRequest", functions=[{"arguments": '{"order": "12345"}'}]),
                      dg("ConversationText", role="user", content="Hello."),
                      dg("AgentAudioDone")):
            self.assertIs(stage.on_event(event), event)
        self.assertEqual(ctx.counters, {})

    def test_listen_results(self) -> None:
        """Results: each alternative's transcript and its words (word and punctuated_word)."""
        stage, _ = self.stage(digits=False)
        words = [{"word": w, "punctuated_word": p, "start": i} for i, (w, p) in
                 enumerate(zip(["card", "4111", "1111", "1111", "1111"], ["Card", "4111", "1111", "1111", "1111."]))]
        event = dg("Results", is_final=True,
                   channel={"alternatives": [{"transcript": f"Card {CARD}.", "confidence": 0.9, "words": words}]})
        out = stage.on_event(event)
        alternative = out.message["channel"]["alternatives"][0]
        self.assertEqual(alternative["transcript"], "Card #### #### #### ####.")
        self.assertEqual([w["word"] for w in alternative["words"]], ["card", "####", "####", "####", "####"])
        self.assertEqual([w["punctuated_word"] for w in alternative["words"]],
                         ["Card", "####", "####", "####", "####."])
        self.assertEqual([w["start"] for w in alternative["words"]], [0, 1, 2, 3, 4])
        self.assertEqual(alternative["confidence"], 0.9)
        self.assertEqual(event.message["channel"]["alternatives"][0]["transcript"], f"Card {CARD}.")

    def test_flux_turn_info(self) -> None:
        """Flux TurnInfo: transcript and words."""
        stage, _ = self.stage()
        out = stage.on_event(dg("TurnInfo", event="EndOfTurn", transcript="Call 555 0100",
                                words=[{"word": "Call"}, {"word": "555"}, {"word": "0100"}]))
        self.assertEqual(out.message["transcript"], "Call ### ####")
        self.assertEqual([w["word"] for w in out.message["words"]], ["Call", "###", "####"])

    def test_history(self) -> None:
        """History items with content are masked like ConversationText."""
        stage, _ = self.stage()
        out = stage.on_event(dg("History", role="assistant", content="Order 12345 shipped."))
        self.assertEqual(out.message["content"], "Order ##### shipped.")


class OptionsTests(SynchronousTestCase):
    """[redact] is validated at start-up, naming the key."""

    def chain(self, section: dict) -> dict:
        return {"gateway": {"chain": ["auth", "settings", "close_codes", "redact"]}, "redact": section}

    def test_defaults(self) -> None:
        """The plugin is built in: naming it in the chain is enough."""
        configure(self.chain({}))

    def test_bad_pattern(self) -> None:
        """An invalid regular expression or one that matches nothing at all is refused."""
        with self.assertRaises(ConfigError) as caught:
            configure(self.chain({"patterns": ["ok", "(unclosed"]}))
        self.assertIn("redact.patterns[1]", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            configure(self.chain({"patterns": [".*"]}))
        self.assertIn("matches the empty string", str(caught.exception))

    def test_bad_role_and_mask(self) -> None:
        """Roles are user or assistant; the mask is one visible character."""
        with self.assertRaises(ConfigError) as caught:
            configure(self.chain({"roles": ["caller"]}))
        self.assertIn("redact.roles[0]", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            configure(self.chain({"mask": "xx"}))
        self.assertIn("redact.mask", str(caught.exception))

    def test_unknown_key(self) -> None:
        """A typo in [redact] stops start-up like any other section's."""
        with self.assertRaises(ConfigError) as caught:
            configure(self.chain({"digitz": False}))
        self.assertIn("redact.digitz", str(caught.exception))
