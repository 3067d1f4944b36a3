"""
`Section`: one TOML table being validated, the reader every plugin's ``configure`` uses.

Typed getters name the dotted key on error (``settings.agent.listen.model: expected a string,
got integer 3``); `Section.finish` rejects every key nobody asked for, suggesting the nearest.
Values only: this module imports nothing of the gateway but its errors.
"""

from __future__ import annotations

import builtins
import difflib
from typing import Any, Mapping, Sequence

from gateway.errors import ConfigError

__all__ = ["Section", "type_name"]

_MISSING = object()


def type_name(value: object) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


class Section:
    """
    A TOML table being validated: typed getters that name the key on error, and `finish` that
    rejects every key nobody asked for.
    """

    def __init__(self, path: builtins.str, data: Mapping[builtins.str, Any] | None) -> None:
        self.path = path
        self.data = dict(data or {})
        self._known: set[builtins.str] = set()

    def key(self, name: builtins.str) -> builtins.str:
        """The full dotted path of ``name`` in this section."""
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: builtins.str, default: Any, types: tuple[type, ...], expected: str) -> Any:
        self._known.add(name)
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(self.key(name), "missing required value")
            return default
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(
                self.key(name), f"expected {expected}, got {type_name(value)} {value!r:.60}"
            )
        return value

    def str(self, name: builtins.str, default: Any = _MISSING, choices: Sequence[builtins.str] | None = None) -> builtins.str:
        value = self._get(name, default, (str,), "a string")
        if choices is not None and value not in choices:
            raise ConfigError(
                self.key(name), f"expected one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value

    def int(self, name: builtins.str, default: Any = _MISSING, minimum: builtins.int | None = None) -> builtins.int:
        value = self._get(name, default, (int,), "an integer")
        if minimum is not None and value < minimum:
            raise ConfigError(self.key(name), f"expected at least {minimum}, got {value}")
        return value

    def float(self, name: builtins.str, default: Any = _MISSING, minimum: builtins.float | None = None) -> builtins.float:
        value = float(self._get(name, default, (int, float), "a number"))
        if minimum is not None and value < minimum:
            raise ConfigError(self.key(name), f"expected at least {minimum}, got {value}")
        return value

    def bool(self, name: builtins.str, default: Any = _MISSING) -> builtins.bool:
        return self._get(name, default, (bool,), "true or false")

    def str_list(self, name: builtins.str, default: Any = _MISSING) -> list[builtins.str]:
        value = self._get(name, default, (list,), "an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.key(name)}[{i}]", f"expected a string, got {type_name(item)}"
                )
        return list(value)

    def table(self, name: builtins.str, default: Any = _MISSING) -> dict[builtins.str, Any]:
        return dict(self._get(name, default, (dict,), "a table"))

    def section(self, name: builtins.str) -> Section:
        """A sub-table as a `Section` of its own (empty when absent)."""
        return Section(self.key(name), self.table(name, {}))

    def finish(self) -> None:
        """Raise `ConfigError` for the first key nobody asked for, suggesting the nearest."""
        for name in self.data:
            if name not in self._known:
                near = difflib.get_close_matches(name, sorted(self._known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                valid = ", ".join(sorted(self._known)) or "none"
                raise ConfigError(self.key(name), f"unknown key{hint} (valid keys: {valid})")
