"""SQLite state through sqlite-utils.

All SQL lives in this package, behind functions named for what they do (`models.get`,
`keys.by_hash`, ...), so that a later move to PostgreSQL touches only `db/`.
One writer path: every write goes through these functions on the process's one `Database`
(WAL mode: readers never block the writer).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlite_utils

from llmp.config import private
from llmp.db.locking import _lock
from llmp.db.migrations import MIGRATIONS


def connect(path: Path | str, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open (and migrate) the database; the file and its -wal/-shm are private to the user
    (0600: it holds webhook secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.execute("PRAGMA foreign_keys=ON")
    if migrate:
        with _lock:
            MIGRATIONS.apply(db)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private(p)
    return db


def open_home(settings) -> sqlite_utils.Database:
    """The Database of a home folder (created and migrated on first use)."""
    settings.ensure_dirs()
    return connect(settings.db_path)


def schema_version(db: sqlite_utils.Database) -> str:
    applied = MIGRATIONS.applied(db)
    return f"{len(applied)}:{applied[-1].name}" if applied else "0"


def pending(db: sqlite_utils.Database) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(db)]
