"""
Tests of the installed package: twistd lists the gateway, every module imports, ``plugins`` is
ours; after an editable install (the test environment's) and after a plain ``pip install .``
into a fresh virtualenv.

They run in subprocesses whose working directory is outside the checkout and whose PYTHONPATH is
removed: both test runners put the checkout first on ``sys.path``, so the same checks in-process
would pass with nothing installed (STYLE.md §5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv

from twisted.trial.unittest import TestCase

from gateway.testing import temp_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import importlib, pkgutil, sys, os
import gateway, plugins
expected_root = sys.argv[1]
bad = []
names = ["gateway", "plugins"]
for pkg in (gateway, plugins):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        names.append(info.name)
for name in names:
    module = importlib.import_module(name)
    where = os.path.realpath(module.__file__)
    if not where.startswith(os.path.realpath(expected_root)):
        bad.append(f"{name} from {where}")
from twisted.plugin import IPlugin, getPlugins
from twisted.application.service import IServiceMaker
import twisted.plugins
makers = [p.tapname for p in getPlugins(IServiceMaker)]
assert "gateway" in makers, makers
print("modules", len(names))
if bad:
    raise SystemExit("not from the expected place: " + "; ".join(bad))
"""


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


class InstalledCopyTests(TestCase):
    """The project as installed."""


    timeout = 300

    def run_in(self, python: str, args: list[str]) -> subprocess.CompletedProcess:
        workdir = temp_path(self)
        os.makedirs(workdir)
        return subprocess.run([python, *args], cwd=workdir, env=_env(), capture_output=True, text=True,
                              timeout=240)

    def test_editable_install(self) -> None:
        """In the test environment: twistd --help lists gateway; every module imports from here."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = self.run_in(twistd, ["--help"])
        self.assertIn("gateway", result.stdout, result.stderr)
        result = self.run_in(sys.executable, ["-c", CHECK, ROOT])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_plain_install(self) -> None:
        """``pip install .`` into a fresh virtualenv: the same, from that virtualenv's copy."""
        base = tempfile.mkdtemp(prefix="gw-install-")
        self.addCleanup(shutil.rmtree, base, True)
        source = os.path.join(base, "src")
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
            ".venv", ".git", "_trial_temp*", "*.egg-info", "build", "dist", "__pycache__", ".hypothesis",
            ".pytest_cache", "dropin.cache"))
        target = os.path.join(base, "venv")
        venv.create(target, with_pip=False)
        python = os.path.join(target, "bin", "python")
        # The fresh venv borrows this environment's dependencies (no network), but not its .pth
        # files: a .pth line is not itself a site directory, so the editable checkout stays out.
        purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(purelib, "borrowed.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        install = subprocess.run(
            [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", source],
            capture_output=True, text=True, env=_env(), cwd=base, timeout=240)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        result = self.run_in(python, ["-c", CHECK, purelib])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        result = self.run_in(python, ["-c", "from twisted.scripts.twistd import run; run()", "--help"])
        self.assertIn("gateway", result.stdout, result.stderr)
