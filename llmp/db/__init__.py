"""SQLite state through sqlite-utils.

All SQL lives in this package, behind functions named for what they do (`models.get`,
`keys.by_hash`, ...), so that a later move to PostgreSQL touches only `db/`.
One writer path: every write goes through these functions on the process's one `Database`
(WAL mode: readers never block the writer).
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from llmp.db.migrations import MIGRATIONS

_lock = threading.RLock()


def connect(path: Path | str, *, migrate: bool = True) -> sqlite_utils.Database:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.execute("PRAGMA foreign_keys=ON")
    if migrate:
        with _lock:
            MIGRATIONS.apply(db)
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
