"""The process's one write lock for the database (every `db/` module takes it around a write;
sqlite3 connections are shared between threads). Its own module so that `db/` modules,
migrations included, import it without importing the package (no db <-> db.usage cycle)."""
from __future__ import annotations

import threading

_lock = threading.RLock()
