"""
redact: mask digits, card numbers and configured patterns in what Deepgram says was said.

Off unless the chain names it; put it **last** in ``[gateway] chain`` so that it is the first
stage outbound events meet, and every stage, the caller and everything the call keeps see only the
masked text. The call records its transcript and logs the conversation after the chain
(`gateway.call.Call._record`), so the masking reaches the ``/client`` caller, the conversation
log lines (``log_conversation``), the call report and its webhook.

What is masked, in outbound Deepgram messages:

- ``ConversationText`` and ``History`` ``content`` (roles in ``roles``: both by default, as the
  agent often repeats a number back);
- ``/v1/listen`` ``Results``: each alternative's ``transcript`` and its ``words``' ``word`` and
  ``punctuated_word``;
- Flux ``TurnInfo``: ``transcript`` and its ``words``' ``word``.

The rules (``[redact]``): ``digits`` (runs of at least ``min_digits`` digits), ``cards`` (13 to
19 digits, spaces or hyphens between them allowed, passing the Luhn check: a card number even
with ``digits`` off), ``number_words`` (two or more spoken digits in a row, "four five six
seven"), and ``patterns`` (Python regular expressions, e.g. e-mail addresses). Every character
of a match except spaces becomes ``mask`` (``#``), so lengths and word boundaries stay and the
``words`` of a result stay aligned with its transcript: a match that spans words masks the part
of each word it covers.

Not masked: function-call arguments (``FunctionCallRequest``: the function needs the real order
number) and what ``debug_calls`` logs, which is every message as it arrives, before any stage.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.section import Section
from gateway.events import DeepgramEvent
from gateway.plugin import IStreamPlugin, Routes, StageContext

__all__ = ["plugin", "Redactor", "RedactStage", "luhn_valid"]

_DIGIT_WORD = r"(?:zero|one|two|three|four|five|six|seven|eight|nine)"
_NUMBER_WORDS = re.compile(rf"\b{_DIGIT_WORD}(?:[\s,-]+{_DIGIT_WORD})+\b", re.IGNORECASE)
_CARD_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a string of digits (card numbers pass it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


@attrs.frozen
class Redactor:
    """The rules, pure: `spans` finds what to mask, `apply` masks it."""

    digits: bool = True
    min_digits: int = 1
    cards: bool = True
    number_words: bool = True
    patterns: tuple[re.Pattern[str], ...] = ()
    mask: str = "#"

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """The (start, end, rule) of every match in ``text``, in order (they may overlap)."""
        found: list[tuple[int, int, str]] = []
        if self.cards:
            for m in _CARD_CANDIDATE.finditer(text):
                if luhn_valid(re.sub(r"\D", "", m.group())):
                    found.append((m.start(), m.end(), "card"))
        if self.digits:
            for m in re.finditer(r"\d{%d,}" % self.min_digits, text):
                found.append((m.start(), m.end(), "digits"))
        if self.number_words:
            for m in _NUMBER_WORDS.finditer(text):
                found.append((m.start(), m.end(), "number_words"))
        for pattern in self.patterns:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    found.append((m.start(), m.end(), "pattern"))
        return sorted(found)

    def masked(self, text: str, spans: Iterable[tuple[int, int, str]]) -> str:
        """``text`` with every non-space character inside ``spans`` replaced by ``mask``."""
        chars = list(text)
        for start, end, _ in spans:
            for i in range(start, end):
                if not chars[i].isspace():
                    chars[i] = self.mask
        return "".join(chars)

    def apply(self, text: str) -> tuple[str, list[str]]:
        """``text`` masked, and the rules that matched (one entry per match)."""
        spans = self.spans(text)
        if not spans:
            return text, []
        return self.masked(text, spans), [rule for _, _, rule in spans]

    def apply_words(self, words: Sequence[str]) -> tuple[list[str], list[str]]:
        """
        Each of ``words`` masked as if they were one text joined by spaces, so a match that spans
        words (a card number read in groups) masks its part of each.
        """
        joined = " ".join(words)
        spans = self.spans(joined)
        if not spans:
            return list(words), []
        masked = self.masked(joined, spans)
        out, at = [], 0
        for word in words:
            out.append(masked[at : at + len(word)])
            at += len(word) + 1
        return out, [rule for _, _, rule in spans]


@attrs.define
class RedactStage:
    """The per-call stage: rewrites outbound transcripts, counts what it masked."""

    ctx: StageContext
    redactor: Redactor
    roles: frozenset[str]

    def routes(self) -> Routes:
        return Routes(outbound={DeepgramEvent: self.on_event})

    def on_event(self, event: DeepgramEvent) -> Any:
        kind = event.type
        if kind in ("ConversationText", "History"):
            message = self._content(event.message)
        elif kind == "Results":
            message = self._results(event.message)
        elif kind == "TurnInfo":
            message = self._turn_info(event.message)
        else:
            return event
        return event if message is None else attrs.evolve(event, message=message)

    def _count(self, rules: list[str]) -> None:
        for rule in rules:
            self.ctx.count("redacted", rule=rule)

    def _content(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        content = message.get("content")
        if not isinstance(content, str) or message.get("role") not in self.roles:
            return None
        masked, rules = self.redactor.apply(content)
        if not rules:
            return None
        self._count(rules)
        return {**message, "content": masked}

    def _words(self, words: Any, keys: Sequence[str]) -> tuple[Any, list[str]]:
        """``words`` (a list of dicts) with each of ``keys`` masked across the list."""
        if not isinstance(words, list) or not all(isinstance(w, dict) for w in words):
            return words, []
        out = [dict(w) for w in words]
        rules: list[str] = []
        for key in keys:
            if not all(isinstance(w.get(key), str) for w in words):
                continue
            masked, found = self.redactor.apply_words([w[key] for w in words])
            rules = rules or found  # the same speech under two keys: count it once
            for w, text in zip(out, masked):
                w[key] = text
        return out, rules

    def _results(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        channel = message.get("channel")
        if not isinstance(channel, dict):
            return None
        alternatives = channel.get("alternatives")
        if not isinstance(alternatives, list):
            return None
        changed, rules = False, []
        new_alternatives = []
        for alternative in alternatives:
            if not isinstance(alternative, dict):
                new_alternatives.append(alternative)
                continue
            alternative = dict(alternative)
            transcript = alternative.get("transcript")
            if isinstance(transcript, str):
                masked, found = self.redactor.apply(transcript)
                if found:
                    alternative["transcript"] = masked
                    rules += found
                    changed = True
            words, found = self._words(alternative.get("words"), ("word", "punctuated_word"))
            if found:
                alternative["words"] = words
                changed = True
            new_alternatives.append(alternative)
        if not changed:
            return None
        self._count(rules)
        return {**message, "channel": {**channel, "alternatives": new_alternatives}}

    def _turn_info(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        out = dict(message)
        rules: list[str] = []
        transcript = message.get("transcript")
        if isinstance(transcript, str):
            out["transcript"], rules = self.redactor.apply(transcript)
        words, found = self._words(message.get("words"), ("word",))
        if found:
            out["words"] = words
        if not rules and not found:
            return None
        self._count(rules or found)
        return out

    def close(self) -> None:
        pass


def _patterns(section: Section) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for i, text in enumerate(section.str_list("patterns", [])):
        try:
            pattern = re.compile(text)
        except re.error as e:
            raise ConfigError(section.key(f"patterns[{i}]"), f"not a valid regular expression: {e}")
        if pattern.match(""):
            raise ConfigError(section.key(f"patterns[{i}]"), f"matches the empty string: {text!r}")
        compiled.append(pattern)
    return tuple(compiled)


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class RedactPlugin:
    """The redact plugin (off unless the chain names it; put it last)."""

    name: str = "redact"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        mask = section.str("mask", "#")
        if len(mask) != 1 or mask.isspace():
            raise ConfigError(section.key("mask"), f"expected one visible character, got {mask!r}")
        redactor = Redactor(
            digits=section.bool("digits", True),
            min_digits=section.int("min_digits", 1, minimum=1),
            cards=section.bool("cards", True),
            number_words=section.bool("number_words", True),
            patterns=_patterns(section),
            mask=mask,
        )
        roles = section.str_list("roles", ["user", "assistant"])
        for i, role in enumerate(roles):
            if role not in ("user", "assistant"):
                raise ConfigError(section.key(f"roles[{i}]"), f"expected 'user' or 'assistant', got {role!r}")
        frozen = frozenset(roles)
        return lambda ctx: RedactStage(ctx, redactor, frozen)


plugin = RedactPlugin()
