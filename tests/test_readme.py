"""The README documents every diagnosis code and every configuration key."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from gateway.diagnostics import DIAGNOSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DocumentationTests(SynchronousTestCase):
    """Docs that must not drift from the code."""

    def test_every_diagnosis_in_readme(self) -> None:
        """Each diagnosis code has a row in the README's table."""
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        for code, entry in DIAGNOSES.items():
            self.assertIn(f"| `{code}` |", readme)

    def test_example_config_is_valid_and_complete(self) -> None:
        """deploy/gateway.example.toml loads, and sets every key the gateway reads."""
        from gateway.section import Section
        from gateway.testing import load_config

        path = os.path.join(ROOT, "deploy", "gateway.example.toml")
        env = {"DEEPGRAM_API_KEY": "k", "TWILIO_AUTH_TOKEN": "t", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        seen: dict[str, set] = {}
        original = Section._get

        def recording(self, name, *args, **kwargs):
            seen.setdefault(self.path, set()).add(name)
            return original(self, name, *args, **kwargs)

        Section._get = recording
        try:
            load_config(path, env)
        finally:
            Section._get = original
        with open(path) as f:
            text = f.read()
        for section, keys in seen.items():
            for key in keys:
                if section == "" or key in ("template",):
                    continue
                self.assertTrue(re.search(rf"^#? ?{re.escape(key)} =|^\[{re.escape(section)}\.{re.escape(key)}\]",
                                          text, re.M) or f"[{section}.{key}]" in text,
                                f"{section}.{key} is not documented in the example")


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


class ReadmeLinksTests(SynchronousTestCase):
    """Every internal link of the README lands somewhere."""

    def test_anchors_exist(self) -> None:
        """Each [text](#anchor) names a heading of the README (GitHub's anchors, duplicates -1...)."""
        readme = _readme()
        anchors: set[str] = set()
        in_code = False
        for line in readme.splitlines():
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                base = github_anchor(line.lstrip("#"))
                anchor, n = base, 0
                while anchor in anchors:
                    n += 1
                    anchor = f"{base}-{n}"
                anchors.add(anchor)
        links = re.findall(r"\]\(#([^)]+)\)", readme)
        self.assertIn("audio-formats", links)
        for link in links:
            self.assertIn(link, anchors, f"README links to #{link}, which no heading has")

    def test_relative_links_exist(self) -> None:
        """Each [text](path) to a file of the repository names a file that exists."""
        for target in re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", _readme()):
            self.assertTrue(os.path.exists(os.path.join(ROOT, target)), f"README links to missing {target}")

    def test_anchor_rules(self) -> None:
        """The anchor function follows GitHub's rules on this README's kinds of headings."""
        self.assertEqual(github_anchor(" Checking a setup: `gateway doctor`"), "checking-a-setup-gateway-doctor")
        self.assertEqual(github_anchor("The `/client` protocol"), "the-client-protocol")
        self.assertEqual(github_anchor("Audio formats"), "audio-formats")


class EndpointsTableTests(SynchronousTestCase):
    """The README's endpoints table lists what the gateway's port serves, and nothing else."""

    def served_paths(self) -> tuple[set[str], dict[str, set[str]]]:
        """The paths of the resource tree (demo on), and each directory's own children."""
        from twisted.internet.task import Clock
        from twisted.web import resource

        from gateway.service import Gateway
        from gateway.testing import configure

        root = Gateway(configure({"gateway": {"demo": True}}), Clock()).make_site().resource
        paths: set[str] = set()
        directories: dict[str, set[str]] = {}

        def walk(node: resource.Resource, prefix: str) -> None:
            for name, child in node.children.items():
                path = f"{prefix}/{name.decode()}"
                if b"" in child.children:
                    # A directory with an index page (the demo): listed with a slash; its files
                    # are not endpoints, its other children are named in its row.
                    paths.add(path + "/")
                    directories[path + "/"] = {f"{path}/{c.decode()}" for c in child.children
                                               if c and b"." not in c}
                    continue
                if type(child) is not resource.Resource:  # a plain Resource only groups (/v1)
                    paths.add(path)
                walk(child, path)

        walk(root, "")
        return paths, directories

    def table(self) -> dict[str, str]:
        """The endpoints table: path -> its row."""
        readme = _readme()
        section = readme.split("## Endpoints (one port)", 1)[1].split("\n#", 1)[0]
        rows = {}
        for line in section.splitlines():
            match = re.match(r"\| `(/[^`]*)` \|", line)
            if match:
                rows[match.group(1)] = line
        return rows

    def test_table_matches_the_resources(self) -> None:
        """Every served path has a row, every row is served; a directory's row names its endpoints."""
        paths, directories = self.served_paths()
        rows = self.table()
        self.assertIn("/metrics", paths)
        self.assertIn("/v1/tokens", paths)
        self.assertEqual(set(rows), paths)
        for directory, children in directories.items():
            for child in children:
                self.assertIn(child, rows[directory])
