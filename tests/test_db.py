"""The SQLite home: migrations (blank and older databases) and WAL mode."""
from __future__ import annotations

import sqlite_utils

from llmp.db import connect, pending, schema_version
from llmp.db.migrations import MIGRATIONS


def _names() -> list[str]:
    return [m.name for m in MIGRATIONS.pending(sqlite_utils.Database(memory=True))]


def test_blank_db_gets_full_schema(tmp_path):
    db = connect(tmp_path / "llmp.db")
    names = _names()
    assert names[0] == "0001_models"
    assert pending(db) == []
    assert [m.name for m in MIGRATIONS.applied(db)] == names
    assert schema_version(db) == f"{len(names)}:{names[-1]}"
    assert {"models", "model_aliases"} <= set(db.table_names())
    # applying again is a no-op
    db2 = connect(tmp_path / "llmp.db")
    assert [m.name for m in MIGRATIONS.applied(db2)] == names


def test_older_db_upgrades_and_keeps_rows(tmp_path):
    """A database made by an older llmp (every migration but the latest) upgrades in place."""
    names = _names()
    assert len(names) > 1
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    MIGRATIONS.apply(old, stop_before=names[-1])
    assert [m.name for m in MIGRATIONS.pending(old)] == [names[-1]]
    old["models"].insert({"id": "kept", "name": "kept", "path": "/x.gguf"})
    old["model_aliases"].insert({"alias": "k", "model_id": "kept"})
    old.close()
    db = connect(path)
    assert pending(db) == []
    assert schema_version(db).endswith(names[-1])
    assert [r["id"] for r in db["models"].rows] == ["kept"]
    assert [r["alias"] for r in db["model_aliases"].rows] == ["k"]


def test_wal_mode(tmp_path):
    db = connect(tmp_path / "llmp.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
