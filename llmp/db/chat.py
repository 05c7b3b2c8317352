"""`llmp chat` history: sessions and their messages."""
from __future__ import annotations

from sqlite_utils import Database

from llmp.db.lists import found
from llmp.db.locking import _lock


def create_session(db: Database, record: dict) -> dict:
    with _lock:
        db.table("chat_sessions").insert(record, pk="id")
    return found(get_session(db, record["id"]))


def get_session(db: Database, session_id: str) -> dict | None:
    rows = list(db.query("select * from chat_sessions where id = ?", [session_id]))
    return rows[0] if rows else None


def latest_session(db: Database) -> dict | None:
    rows = list(db.query("select * from chat_sessions order by updated_at desc, rowid desc limit 1"))
    return rows[0] if rows else None


def update_session(db: Database, session_id: str, changes: dict) -> None:
    with _lock:
        db.table("chat_sessions").update(session_id, changes)


def add_message(db: Database, session_id: str, role: str, content: str, created_at: str) -> None:
    with _lock, db.atomic():
        db.table("chat_messages").insert({"session_id": session_id, "role": role, "content": content,
                                    "created_at": created_at})
        db.execute("update chat_sessions set updated_at = ? where id = ?", [created_at, session_id])


def messages(db: Database, session_id: str) -> list[dict]:
    return list(db.query(
        "select role, content, created_at from chat_messages where session_id = ? order by id",
        [session_id]))


def clear_messages(db: Database, session_id: str) -> None:
    with _lock:
        db.execute("delete from chat_messages where session_id = ?", [session_id])
