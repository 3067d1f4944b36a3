"""
The handover stores against the real thing: SQLite files shared by two store objects (as two
processes on one host share one), and a real ``redis-server`` started by the test (Debian's
package; `.ci/run` installs it). A store that is down fails with `StoreError`, never hangs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.handover.store import RedisStore, SqliteStore, StoreError, open_store
from gateway.testing import temp_path

RECORD = {"call_id": "c-1", "states": {"settings": {"history": [{"role": "user", "content": "Hi"}]}}}


class _StoreContract:
    """What every store does; a subclass makes ``self.stores`` (two handles on one store)."""

    timeout = 30

    @inlineCallbacks
    def test_put_take_once(self) -> None:
        """A record put by one handle is taken by another, once; a second take finds nothing."""
        a, b = self.stores
        yield a.put("CA1", RECORD, 60)
        self.assertTrue((yield b.exists("CA1")))
        self.assertEqual((yield b.take("CA1")), RECORD)
        self.assertIsNone((yield a.take("CA1")))
        self.assertFalse((yield a.exists("CA1")))

    @inlineCallbacks
    def test_expired_record_is_gone(self) -> None:
        """A record past its TTL is never taken up."""
        a, b = self.stores
        yield a.put("CA2", RECORD, 1)
        yield self.expire("CA2")
        self.assertFalse((yield b.exists("CA2")))
        self.assertIsNone((yield b.take("CA2")))


class SqliteStoreTests(_StoreContract, TestCase):
    def setUp(self) -> None:
        path = temp_path(self, "handover.sqlite")
        self.stores = [SqliteStore(reactor, path), SqliteStore(reactor, path)]
        for store in self.stores:
            self.addCleanup(store.close)

    def expire(self, key: str) -> None:
        import sqlite3

        db = sqlite3.connect(self.stores[0].path)
        db.execute("UPDATE handover SET expires = ? WHERE key = ?", (time.time() - 1, key))
        db.commit()
        db.close()

    @inlineCallbacks
    def test_unwritable_path_fails_cleanly(self) -> None:
        """A store it cannot open fails with StoreError naming it."""
        store = SqliteStore(reactor, "/proc/nope/handover.sqlite")
        self.addCleanup(store.close)
        with self.assertRaises(StoreError) as cm:
            yield store.put("CA", RECORD, 60)
        self.assertIn("sqlite:/proc/nope/handover.sqlite", str(cm.exception))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on 127.0.0.1, in a temporary directory, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SkipTest("redis-server is not installed (Debian's redis-server; .ci/run installs it)")
        self.port = _free_port()
        self.directory = tempfile.mkdtemp(prefix="gw-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, True)


class RedisStoreTests(_StoreContract, TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        self.stores = [open_store(self.redis.url, reactor), open_store(self.redis.url, reactor)]
        for store in self.stores:
            self.addCleanup(store.close)

    def expire(self, key: str) -> None:
        import redis

        client = redis.Redis.from_url(self.redis.url)
        client.pexpireat("gateway:handover:" + key, 1)  # a moment long past: gone at once
        client.close()

    @inlineCallbacks
    def test_down_fails_cleanly(self) -> None:
        """Redis stopped: StoreError naming the store, within the timeout."""
        self.redis.stop()
        store = RedisStore(reactor, self.redis.url, timeout_s=1)
        self.addCleanup(store.close)
        with self.assertRaises(StoreError) as cm:
            yield store.put("CA", RECORD, 60)
        self.assertIn(f"redis://127.0.0.1:{self.redis.port}", str(cm.exception))
        self.redis.stop = lambda: None  # already stopped
