"""
The house's layers, checked from the source: no import circle, the plugins above the core, and
modules of a readable size.

Imports are read with `ast` (nothing is imported), at module level and inside functions alike:
a circle hidden behind a function-local import is still a circle. Imports under
``if TYPE_CHECKING:`` are not followed (they never run).
"""

from __future__ import annotations

import ast
import os
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("gateway", "plugins")

#: The entry points: the modules that assemble a gateway, and so may hand the built-in plugins in.
ENTRY_POINTS = {"gateway.tap", "gateway.cli", "gateway.testing"}
ENTRY_PACKAGES = ("gateway.bench",)

#: Modules allowed over `MAX_LINES`, each with its reason.
LONG_MODULES = {
    "gateway/call.py": "the facade every leg and stage talks to: the media path both ways and the "
    "ending, which share every field; its other parts are modules of their own (lifecycle, gate, "
    "sessions, observe, context, callinfo, handover.record)",
    "gateway/cli.py": "one subcommand per function (demo, check-config, doctor); each short",
    "gateway/simulator/call.py": "the simulated Twilio call's script, one scenario step per method",
    "plugins/record.py": "a plugin's configuration, stage and process-wide sweep, kept together for "
    "drop-in authors to read as one example",
    "plugins/settings.py": "the settings plugin: its options, template merge and per-call stage",
}
MAX_LINES = 420


def _modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[module.removesuffix(".__init__")] = path
    return found


def _imports(module: str, path: str, modules: dict[str, str]) -> Iterator[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in child.names]
            else:
                yield from visit(child)
                continue
            for name in names:
                target = resolve(name)
                if target is not None and target != module:
                    yield target

    yield from visit(tree)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: set(_imports(module, path, modules)) for module, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


class LayerTests(SynchronousTestCase):
    """The import graph of gateway/ and plugins/."""

    def test_no_import_circle(self) -> None:
        """No module reaches itself through imports, module-level or function-local."""
        self.assertEqual(_cycles(_graph()), [])

    def test_a_circle_would_be_found(self) -> None:
        """The check itself: a circle of three is reported."""
        self.assertEqual(_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])

    def test_plugins_stand_above_the_core(self) -> None:
        """Only the entry points import the built-in plugins; the core never does."""
        importers = {
            module for module, targets in _graph().items()
            if module.startswith("gateway") and any(t == "plugins" or t.startswith("plugins.") for t in targets)
        }
        core = {m for m in importers if m not in ENTRY_POINTS and not m.startswith(ENTRY_PACKAGES)}
        self.assertEqual(core, set())

    def test_codecs_import_no_core(self) -> None:
        """The sans-IO codecs import nothing of the gateway but other codecs and its values."""
        values = {"gateway.errors", "gateway.events"}
        graph = _graph()
        for module, targets in graph.items():
            if module.startswith("gateway.codecs"):
                outside = {t for t in targets if not t.startswith("gateway.codecs") and t not in values}
                self.assertEqual(outside, set(), module)

    def test_modules_are_readable_in_size(self) -> None:
        """No module over ~400 lines without a stated reason (LONG_MODULES)."""
        long = {}
        for path in _modules().values():
            with open(path) as f:
                lines = sum(1 for _ in f)
            relative = os.path.relpath(path, ROOT)
            if lines > MAX_LINES and relative not in LONG_MODULES:
                long[relative] = lines
        self.assertEqual(long, {})

    def test_every_warning_has_a_stable_code(self) -> None:
        """
        Every warning, error and failure the gateway logs carries ``log_category``, an UPPER_SNAKE
        code that operators filter on and tests assert instead of prose (crossbar's convention).
        """
        missing = []
        for path in _modules().values():
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr not in ("warn", "error", "critical", "failure"):
                    continue
                if "log" not in ast.unparse(node.func.value).lower():
                    continue
                codes = [k.value for k in node.keywords if k.arg == "log_category"]
                ok = len(codes) == 1 and isinstance(codes[0], ast.Constant) and isinstance(
                    codes[0].value, str) and codes[0].value.isupper() and codes[0].value.isidentifier()
                if not ok:
                    missing.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
        self.assertEqual(missing, [])

