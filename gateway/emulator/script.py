"""
What the emulator "hears" and "says": scripted utterances and word timings from real audio spans.

The emulator does no ASR. Each detected utterance takes the next line of a script (cycling); its
words are spread evenly over the span of audio in which speech was detected, so ``start``,
``duration`` and word times follow the audio actually received.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

__all__ = ["DEFAULT_SCRIPT", "DEFAULT_REPLIES", "Script", "words_for"]

#: What callers are heard saying, in turn.
DEFAULT_SCRIPT = (
    "Hello, I would like to check the status of my order.",
    "The number is four five six seven.",
    "Yes, that's right.",
    "Thank you, goodbye.",
)

#: What the agent answers, in turn (the audio is always the bundled clip).
DEFAULT_REPLIES = (
    "Sure, I can help with that.",
    "Thanks, let me look that up for you.",
    "Is there anything else I can help you with?",
)


@attrs.define
class Script:
    """A cycling list of lines; `next` returns the next one."""

    lines: Sequence[str]
    _index: int = 0

    def next(self) -> str:
        """The next line, wrapping round at the end."""
        line = self.lines[self._index % len(self.lines)]
        self._index += 1
        return line


def _bare(word: str) -> str:
    return word.strip(".,!?;:\"'").lower() or word.lower()


def words_for(text: str, start_s: float, end_s: float, count: int | None = None) -> list[dict[str, Any]]:
    """
    Deepgram ``words`` for ``text`` spread evenly over ``[start_s, end_s]``.

    With ``count``, only the first ``count`` words, spread over the span (an interim result).
    """
    tokens = text.split()
    if count is not None:
        tokens = tokens[:max(1, count)]
    if not tokens:
        return []
    span = max(end_s - start_s, 0.0) / len(tokens)
    return [
        {
            "word": _bare(token),
            "start": round(start_s + i * span, 3),
            "end": round(start_s + (i + 1) * span, 3),
            "confidence": 0.99,
            "punctuated_word": token,
        }
        for i, token in enumerate(tokens)
    ]
