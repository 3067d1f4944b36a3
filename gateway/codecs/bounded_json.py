"""
JSON from peers, decoded within bounds: strict UTF-8, a bounded nesting depth, finite numbers and
valid Unicode in every string, or an error naming which rule the message broke.

Sans-IO. Two things in a message under the 64 KiB limit used to end a call instead of being
refused (issue 19): Python's ``json`` and msgspec both recurse once per nesting level and raise
`RecursionError` near 1,000 levels, which 2 KB of ``[`` reach; and a lone UTF-16 surrogate escape
(``"\\ud800"``) decodes to a ``str`` that cannot be encoded as UTF-8 again, so it failed later,
when the gateway wrote it to Deepgram. Here the depth is measured before any decoder sees the
text, and strings are checked right after decoding, so every value a codec hands on can be
written anywhere.

The reasons are stable labels (metric labels, test assertions): ``bad_utf8``, ``too_deep``,
``bad_json``, ``bad_unicode``.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any, Callable

__all__ = [
    "MAX_DEPTH",
    "REASONS",
    "loads",
    "decode_text",
    "nesting_depth",
    "check_depth",
    "lone_surrogate_path",
    "replace_lone_surrogates",
    "is_valid_unicode",
]

#: Deepest nesting accepted. Twilio's messages nest 3 levels, a client hello 2, Deepgram's
#: ``Results`` 5; the decoders fail near 1,000.
MAX_DEPTH = 32

REASONS = frozenset({"bad_utf8", "too_deep", "bad_json", "bad_unicode"})

#: ``error(reason, message)`` builds the exception to raise: `CallerProtocolError` for callers,
#: `UpstreamProtocolError` for Deepgram (both take those two arguments first).
ErrorFactory = Callable[[str, str], Exception]

# A JSON string from its opening quote: escape pairs and other characters up to the closing
# quote, or to the end of the text for an unterminated one (never fails, so never backtracks:
# linear even on text made of quotes and backslashes).
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# Opening brackets count +1, closing ones -1 (0xFF read as a signed byte).
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# Any of the ten escapes that begin a UTF-16 surrogate (\uD800-\uDFFF), in either case.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _default_error(reason: str, message: str) -> Exception:
    return ValueError(f"{message} [{reason}]")


def decode_text(frame: bytes | str, error: ErrorFactory = _default_error) -> str:
    """
    ``frame`` as text: bytes must be strict UTF-8 (which has no surrogates; ``json.loads``
    would decode CESU-8 surrogates with ``surrogatepass``), text must hold no surrogate.
    """
    if isinstance(frame, str):
        if not frame.isascii() and _SURROGATE.search(frame):
            raise error("bad_unicode", "the message contains a lone UTF-16 surrogate")
        return frame
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error("bad_utf8", f"message is not valid UTF-8 (byte {e.start})")


def _may_exceed(text: str, limit: int) -> bool:
    """A cheap upper bound: fewer opening brackets than ``limit`` cannot nest deeper."""
    return text.count("[") + text.count("{") > limit


def nesting_depth(text: str) -> int:
    """
    How deep ``text``'s arrays and objects nest, brackets inside strings not counted.

    Exact for JSON; for broken JSON never less than the depth a decoder reaches before it
    meets the fault (up to there the text is a prefix of valid JSON). All loops run in C.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    return max(accumulate(array("b", brackets.translate(_SIGNS))), default=0)


def check_depth(text: str, limit: int = MAX_DEPTH, error: ErrorFactory = _default_error) -> None:
    """Raise ``too_deep`` if ``text`` nests deeper than ``limit``."""
    if _may_exceed(text, limit):
        depth = nesting_depth(text)
        if depth > limit:
            raise error("too_deep", f"message nests {depth} levels deep, limit {limit}")


class _NotFinite(ValueError):
    """NaN, Infinity or a number too large for a float: not JSON (RFC 8259 §6)."""


def _constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"number {text[:20]} is out of range")
    return value


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """
    Where in a decoded ``value`` the first string (or object key) with a lone surrogate is, as
    a dotted path (``""`` for the value itself); None if there is none. The path never contains
    the offending text: a key holding a surrogate is named by its parent's path.
    """
    if isinstance(value, str):
        return path if not value.isascii() and _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.isascii() and _SURROGATE.search(key):
                return f"a key of {path or 'the message'}"
            found = lone_surrogate_path(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def replace_lone_surrogates(value: Any) -> Any:
    """A copy of a decoded ``value`` with each lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        if value.isascii() or not _SURROGATE.search(value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    return value


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it holds no lone surrogate)."""
    return text.isascii() or not _SURROGATE.search(text)


def loads(
    frame: bytes | str,
    error: ErrorFactory = _default_error,
    limit: int = MAX_DEPTH,
    surrogates: str = "refuse",
    finite_floats: bool = True,
) -> Any:
    """
    Decode one JSON message from a peer, or raise ``error(reason, message)``.

    ``surrogates`` is ``"refuse"`` (``bad_unicode``, naming the field) or ``"replace"`` (with
    U+FFFD: for text Deepgram's models wrote, which is better shown damaged than dropped).
    ``finite_floats`` refuses numbers that overflow a float (``1e999``); it costs a Python call
    per float, which a trusted peer's ``Results`` (four floats a word) need not pay. ``NaN`` and
    ``Infinity`` are always refused. The size limit is the caller's: each leg has its own.
    """
    text = decode_text(frame, error)
    check_depth(text, limit, error)
    try:
        value = json.loads(
            text, parse_constant=_constant, parse_float=_float if finite_floats else None
        )
    except RecursionError:
        # Not reachable within the depth limit; kept so a decoder change cannot end a call.
        raise error("too_deep", f"message nests too deep to decode, limit {limit}")
    except ValueError as e:
        # json.JSONDecodeError, our _NotFinite, and int() refusing more than 4,300 digits
        raise error("bad_json", f"message is not JSON: {e}")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        path = lone_surrogate_path(value)
        if path is not None:
            if surrogates == "replace":
                return replace_lone_surrogates(value)
            where = f" in {path[:80]}" if path else ""
            raise error("bad_unicode", f"a lone UTF-16 surrogate{where} is not valid Unicode")
    return value
