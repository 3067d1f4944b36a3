"""
The handover store: an existing store, not a home-made one.

- ``sqlite:PATH`` (the default, ``sqlite:/tmp/gateway-handover.sqlite``): one SQLite file that
  every gateway process on the host opens (supervisord running several ``twistd``), in WAL mode
  with a busy timeout, so concurrent processes neither corrupt nor block each other. No server.
- ``redis://HOST:PORT/DB`` (several hosts, Kubernetes): Redis through ``redis-py``, Redis's own
  client, with connect and socket timeouts. ``txredisapi`` would fit the reactor without threads,
  but it is far less maintained; a handover costs two store operations per call, so a thread hop
  per operation is no cost worth a less-kept client.

Every operation runs on a small thread pool of the store's own and returns a Deferred bounded by
``timeout_s`` (a store that hangs fails like one that is down: `StoreError`). Every record has a
TTL: a record nobody takes up expires by itself. ``take`` reads and deletes in one step, so a
record can be taken up once, by one process, whatever the number of processes asking.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

__all__ = [
    "HandoverStore", "SqliteStore", "RedisStore", "MemoryStore", "StoreError", "open_store", "DEFAULT_STORE",
]

DEFAULT_STORE = "sqlite:/tmp/gateway-handover.sqlite"


class StoreError(Exception):
    """The store could not do what was asked (down, timed out, refused); ``str`` says why."""


class HandoverStore(Protocol):
    description: str

    def put(self, key: str, record: dict[str, Any], ttl_s: float) -> defer.Deferred: ...
    def take(self, key: str) -> defer.Deferred: ...
    def exists(self, key: str) -> defer.Deferred: ...
    def close(self) -> None: ...


class _Threaded:
    """Runs blocking store calls on a pool of at most two threads, with a timeout."""

    description = ""

    def __init__(self, reactor: Any, timeout_s: float) -> None:
        self._reactor = reactor
        self._timeout_s = timeout_s
        self._pool: ThreadPool | None = None

    def _run(self, what: str, fn: Callable[[], Any]) -> defer.Deferred:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=2, name="handover-store")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)

        def call() -> Any:
            try:
                return fn()
            except StoreError:
                raise
            except Exception as e:  # the client library's own errors, named for the log
                raise StoreError(f"{self.description}: {what} failed: {type(e).__name__}: {e}") from None

        d = threads.deferToThreadPool(self._reactor, self._pool, call)
        d.addTimeout(self._timeout_s, self._reactor)

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise StoreError(f"{self.description}: {what} timed out after {self._timeout_s:g} s")

        return d.addErrback(timed_out)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


class SqliteStore(_Threaded):
    """The embedded store: one SQLite file shared by the processes of one host."""

    def __init__(self, reactor: Any, path: str, timeout_s: float = 2.0) -> None:
        super().__init__(reactor, timeout_s)
        self.path = path
        self.description = f"sqlite:{path}"
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS handover "
                       "(key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)")
            self._local.db = db
        return db

    def put(self, key: str, record: dict[str, Any], ttl_s: float) -> defer.Deferred:
        body = json.dumps(record)

        def put() -> None:
            db = self._db()
            now = time.time()
            db.execute("DELETE FROM handover WHERE expires <= ?", (now,))
            db.execute("INSERT OR REPLACE INTO handover VALUES (?, ?, ?)", (key, body, now + ttl_s))

        return self._run("put", put)

    def take(self, key: str) -> defer.Deferred:
        def take() -> dict[str, Any] | None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT record, expires FROM handover WHERE key = ?", (key,)).fetchone()
                db.execute("DELETE FROM handover WHERE key = ?", (key,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if row is None or row[1] <= time.time():
                return None
            return json.loads(row[0])

        return self._run("take", take)

    def exists(self, key: str) -> defer.Deferred:
        def exists() -> bool:
            row = self._db().execute("SELECT expires FROM handover WHERE key = ?", (key,)).fetchone()
            return row is not None and row[0] > time.time()

        return self._run("exists", exists)


class RedisStore(_Threaded):
    """Redis (several hosts): ``SET key value EX ttl`` and ``GETDEL``."""

    def __init__(self, reactor: Any, url: str, timeout_s: float = 2.0, prefix: str = "gateway:handover:") -> None:
        super().__init__(reactor, timeout_s)
        import redis

        parts = urlsplit(url)
        self.description = f"redis://{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            retry_on_timeout=False)
        self._prefix = prefix

    def put(self, key: str, record: dict[str, Any], ttl_s: float) -> defer.Deferred:
        body = json.dumps(record)
        return self._run("put", lambda: self._client.set(self._prefix + key, body, ex=max(1, int(ttl_s + 0.999))))

    def take(self, key: str) -> defer.Deferred:
        def take() -> dict[str, Any] | None:
            body = self._client.getdel(self._prefix + key)
            return None if body is None else json.loads(body)

        return self._run("take", take)

    def exists(self, key: str) -> defer.Deferred:
        return self._run("exists", lambda: bool(self._client.exists(self._prefix + key)))

    def close(self) -> None:
        super().close()
        self._client.close()


def open_store(spec: str, reactor: Any, timeout_s: float = 2.0) -> HandoverStore:
    """The store ``spec`` names (``sqlite:PATH`` or ``redis://...``); ValueError if it names none."""
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if not path:
            raise ValueError("sqlite: needs a path, e.g. sqlite:/var/lib/gateway/handover.sqlite")
        return SqliteStore(reactor, path, timeout_s)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(reactor, spec, timeout_s)
    raise ValueError(f"expected sqlite:PATH or redis://HOST:PORT/DB, got {spec!r}")


class MemoryStore:
    """
    A store in this process's memory, answering at once: for tests and single-process trials (a
    record put here is seen by no other process, so it hands nothing over in production).
    ``down`` makes every operation fail as a store that is down does.
    """

    description = "memory"

    def __init__(self, clock: Any = None) -> None:
        self.records: dict[str, tuple[dict[str, Any], float]] = {}
        self.down = False
        self._clock = clock

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def _check(self, what: str) -> None:
        if self.down:
            raise StoreError(f"memory: {what} failed: the store is down")

    def put(self, key: str, record: dict[str, Any], ttl_s: float) -> defer.Deferred:
        return defer.maybeDeferred(self._put, key, record, ttl_s)

    def _put(self, key: str, record: dict[str, Any], ttl_s: float) -> None:
        self._check("put")
        self.records[key] = (json.loads(json.dumps(record)), self._now() + ttl_s)

    def take(self, key: str) -> defer.Deferred:
        def take() -> dict[str, Any] | None:
            self._check("take")
            record, expires = self.records.pop(key, (None, 0.0))
            return record if record is not None and expires > self._now() else None

        return defer.maybeDeferred(take)

    def exists(self, key: str) -> defer.Deferred:
        def exists() -> bool:
            self._check("exists")
            return key in self.records and self.records[key][1] > self._now()

        return defer.maybeDeferred(exists)

    def close(self) -> None:
        pass
