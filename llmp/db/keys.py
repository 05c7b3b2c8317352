"""API keys table: the secret is never stored, only its sha256 and a short display prefix."""
from __future__ import annotations

import json
from typing import Any, overload

from sqlite_utils import Database

from llmp.db import writer as db_writer
from llmp.db.lists import found
from llmp.db.locking import _lock


@overload
def _decode(row: dict) -> dict: ...
@overload
def _decode(row: None) -> None: ...
def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    out["permissions"] = json.loads(out.get("permissions") or "[]")
    return out


def insert(db: Database, record: dict[str, Any]) -> dict:
    rec = dict(record)
    rec["permissions"] = json.dumps(list(rec.get("permissions") or []))
    with _lock:
        db.table("api_keys").insert(rec, pk="id")
    return found(by_id(db, rec["id"]))


def by_hash(db: Database, key_hash: str) -> dict | None:
    rows = list(db.query("select * from api_keys where key_hash = ?", [key_hash]))
    return _decode(rows[0]) if rows else None


def by_id(db: Database, key_id: str) -> dict | None:
    rows = list(db.query("select * from api_keys where id = ?", [key_id]))
    return _decode(rows[0]) if rows else None


def list_all(db: Database, *, include_revoked: bool = True) -> list[dict]:
    sql = "select * from api_keys"
    if not include_revoked:
        sql += " where revoked_at is null"
    return [_decode(r) for r in db.query(sql + " order by created_at, id")]


def revoke(db: Database, key_id: str, revoked_at: str) -> None:
    with _lock:
        db.execute("update api_keys set revoked_at = ? where id = ? and revoked_at is null",
                   [revoked_at, key_id])


def touch(db: Database, key_id: str, used_at: str) -> None:
    """Set last_used_at (through the process's writer when one runs: not waited for)."""
    writer = db_writer.writer_for(db)
    if writer is not None:
        writer.submit(_touch, key_id, used_at)
    else:
        _touch(db, key_id, used_at)


def _touch(db: Database, key_id: str, used_at: str) -> None:
    with _lock:
        db.execute("update api_keys set last_used_at = ? where id = ?", [used_at, key_id])


def restore_bootstrap(db: Database, key_id: str) -> None:
    """Make `key_id` the bootstrap admin key again: active, admin, no expiry."""
    with _lock, db.atomic():
        db.execute("update api_keys set bootstrap = 0 where bootstrap = 1 and id != ?", [key_id])
        db.execute("update api_keys set bootstrap = 1, revoked_at = null, expires_at = null, "
                   "permissions = ? where id = ?", [json.dumps(["admin"]), key_id])
