"""The one writer of a serving process: a thread with its own SQLite connection.

The event loop never waits on SQLite's write lock (another process may hold it for seconds,
and `busy_timeout` would then freeze every request): writes are handed to this thread, in
order, and the loop goes on. Reads stay on the loop's connection: in WAL mode a reader never
waits for a writer.

    writer = Writer(path)            # at server start
    register(db, writer)             # the loop's Database -> its writer (see `writer_for`)
    fut = writer.submit(fn, *args)   # fn(writer_db, *args) on the writer thread
    res = await writer.run(fn, *args)
    writer.add_usage(rows)           # usage rows, group-committed
    writer.close()                   # at shutdown: everything queued is written first

Usage rows are group-committed: every row queued while the thread was busy goes into one
transaction (with its roll-ups), however many requests made them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlite_utils import Database

log = logging.getLogger(__name__)

#: at most this many queued jobs are taken in one round (usage rows of a round: one commit)
ROUND_MAX = 4096
#: a write that fails (e.g. the database is locked past busy_timeout) is retried this often
RETRIES = 5

_registry: weakref.WeakKeyDictionary[Database, Writer] = weakref.WeakKeyDictionary()


def register(db: Database, writer: Writer | None) -> None:
    """Route the writes made through `db` (the loop's connection) to `writer` (None: stop)."""
    if writer is None:
        _registry.pop(db, None)
    else:
        _registry[db] = writer


def writer_for(db: Database) -> Writer | None:
    return _registry.get(db)


class Writer:
    """Runs write jobs on one thread over its own connection, in the order submitted."""

    def __init__(self, path: Path | str):
        from llmp.db import connect  # not at the top: llmp.db imports nothing of this module

        self.db = connect(path, migrate=False)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self.rows_written = 0
        self.commits = 0
        self._thread = threading.Thread(target=self._loop, name="llmp-db-writer", daemon=True)
        self._thread.start()

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run `fn(writer_db, *args, **kwargs)` on the writer thread."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(RuntimeError("the database writer is closed"))
            return fut
        self._queue.put(("call", (fn, args, kwargs), fut))
        return fut

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`submit` and wait for the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def add_usage(self, rows: list[dict]) -> None:
        """Queue usage rows (group-committed with every other row queued meanwhile)."""
        if self._closed:  # after close: written at once by the caller's thread
            from llmp.db import usage as db_usage

            db_usage.insert_rows(self.db, rows)
            return
        self._queue.put(("usage", rows, None))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is written."""
        if not self._closed:
            self.submit(lambda db: None).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():  # stuck on a lock held elsewhere: never close under it
            log.warning("the database writer is still busy after %.0f s; leaving it", timeout)
            return
        self.db.close()

    # -- the thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            items = [item]
            while item is not None and len(items) < ROUND_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            stop = items[-1] is None
            self._round([i for i in items if i is not None])
            if stop:
                return

    def _round(self, items: list[tuple]) -> None:
        """Run one round in order; consecutive usage rows go into one transaction."""
        rows: list[dict] = []
        for kind, payload, fut in items:
            if kind == "usage":
                rows.extend(payload)
                continue
            if rows:
                self._write_usage(rows)
                rows = []
            fn, args, kwargs = payload
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._retrying(fn, args, kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(e)
        if rows:
            self._write_usage(rows)

    def _retrying(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        import sqlite3

        for attempt in range(RETRIES):
            try:
                return fn(self.db, *args, **kwargs)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == RETRIES - 1:
                    raise
                log.warning("database busy (%s); retrying the write", e)
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _write_usage(self, rows: list[dict]) -> None:
        from llmp.db import usage as db_usage

        try:
            self._retrying(db_usage.insert_rows, (rows,), {})
            self.rows_written += len(rows)
            self.commits += 1
        except Exception:
            log.exception("could not write %d usage rows", len(rows))


async def write(db: Database, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(db, *args, **kwargs)` through `db`'s writer when one is registered (awaited
    without blocking the event loop), else at once on `db`."""
    writer = writer_for(db)
    if writer is None:
        return fn(db, *args, **kwargs)
    return await writer.run(fn, *args, **kwargs)
