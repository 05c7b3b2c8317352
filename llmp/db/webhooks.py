"""The `webhooks` (endpoints) and `webhook_deliveries` (one row per event per endpoint) tables."""
from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, overload

from sqlite_utils import Database

from llmp.db import writer as db_writer
from llmp.db.lists import found, owned_row, owner_filter, paginate
from llmp.db.locking import _lock


@overload
def _decode(row: dict) -> dict: ...
@overload
def _decode(row: None) -> None: ...
def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    out["events"] = json.loads(out["events"])
    out["all_keys"] = bool(out["all_keys"])
    return out


def insert(db: Database, record: dict[str, Any]) -> dict:
    rec = {**record, "events": json.dumps(list(record["events"]))}
    with _lock:
        db.table("webhooks").insert(rec)
    return found(get(db, record["id"]))


def get(db: Database, webhook_id: str, *, owner: str | None = None) -> dict | None:
    return _decode(owned_row(db, "webhooks", webhook_id, owner))


def list_all(db: Database, *, owner: str | None = None) -> list[dict]:
    where, args = owner_filter(owner)
    return [_decode(r) for r in db.query(
        "select * from webhooks" + (" where " + " and ".join(where) if where else "")
        + " order by created_at, id", args)]


def delete(db: Database, webhook_id: str) -> None:
    with _lock, db.atomic():
        db.execute("delete from webhook_deliveries where webhook_id = ?", [webhook_id])
        db.execute("delete from webhooks where id = ?", [webhook_id])


def subscribers(db: Database, event: str, *, key_id: str | None) -> list[dict]:
    """Endpoints that receive `event`: those made by an admin key (every key's events) and,
    when the event belongs to a key, that key's own endpoints."""
    rows = db.query(
        "select * from webhooks where all_keys = 1 or (? is not null and owner_key_id = ?) "
        "order by created_at, id", [key_id, key_id])
    return [w for w in map(_decode, rows) if event in w["events"]]


def add_deliveries(db: Database, records: Iterable[dict[str, Any]]) -> Future | None:
    """Store deliveries: through the process's writer when one runs (returns its Future,
    done once they are committed), else at once (None)."""
    writer = db_writer.writer_for(db)
    if writer is not None:
        return writer.submit(_add_deliveries, list(records))
    _add_deliveries(db, records)
    return None


def _add_deliveries(db: Database, records: Iterable[dict[str, Any]]) -> None:
    with _lock, db.atomic():
        db.table("webhook_deliveries").insert_all(records)


def due(db: Database, now: float, *, limit: int = 50) -> list[dict]:
    """Pending deliveries whose next attempt is due, with their endpoint's url and secret."""
    return list(db.query(
        "select d.*, w.url, w.secret from webhook_deliveries d join webhooks w "
        "on w.id = d.webhook_id where d.status = 'pending' and d.next_attempt_at <= ? "
        "order by d.next_attempt_at limit ?", [now, limit]))


def next_due_at(db: Database) -> float | None:
    rows = list(db.query(
        "select min(next_attempt_at) as t from webhook_deliveries where status = 'pending'"))
    return rows[0]["t"] if rows else None


def record_attempt(db: Database, delivery_id: str, *, status: str, attempts: int,
                   next_attempt_at: float | None, status_code: int | None, error: str | None,
                   delivered_at: int | None) -> None:
    with _lock:
        db.table("webhook_deliveries").update(delivery_id, {
            "status": status, "attempts": attempts, "next_attempt_at": next_attempt_at,
            "last_status_code": status_code, "last_error": error, "delivered_at": delivered_at})


def deliveries(db: Database, webhook_id: str, *, after: str | None = None,
               limit: int = 20) -> tuple[list[dict], bool]:
    return paginate(db, "webhook_deliveries", ["webhook_id = ?"], [webhook_id], after=after,
                    limit=limit, order="desc")
