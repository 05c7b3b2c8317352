"""The `files` table: metadata of uploaded and server-made files (/v1/files).

The bytes live on disk under `settings.files_dir` (column `storage`); this table is the index.
`owner` arguments scope a query to one API key; `None` means every key (an admin).
"""
from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from llmp.db import _lock


def insert(db: Database, record: dict[str, Any]) -> dict:
    with _lock:
        db["files"].insert(record)
    return get(db, record["id"])


def get(db: Database, file_id: str, *, owner: str | None = None) -> dict | None:
    sql = "select * from files where id = ?"
    args: list[Any] = [file_id]
    if owner is not None:
        sql += " and owner_key_id = ?"
        args.append(owner)
    rows = list(db.query(sql, args))
    return rows[0] if rows else None


def page(db: Database, *, owner: str | None = None, purpose: str | None = None,
         after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
    """One page of files, newest first (`order="desc"`) or oldest first; `after` is the id of
    the last file of the previous page (an unknown id: from the start). Returns (rows, has_more)."""
    where, args = _scope(owner)
    if purpose:
        where.append("purpose = ?")
        args.append(purpose)
    return paginate(db, "files", where, args, after=after, limit=limit, order=order)


def delete(db: Database, file_id: str) -> None:
    with _lock:
        db.execute("delete from files where id = ?", [file_id])


def set_status(db: Database, file_id: str, status: str, details: str | None = None) -> None:
    with _lock:
        db["files"].update(file_id, {"status": status, "status_details": details})


def _scope(owner: str | None) -> tuple[list[str], list[Any]]:
    return (["owner_key_id = ?"], [owner]) if owner is not None else ([], [])


def paginate(db: Database, table: str, where: list[str], args: list[Any], *, after: str | None,
             limit: int, order: str) -> tuple[list[dict], bool]:
    """Cursor pagination in insertion order (rowid: creation order, finer than the
    second-resolution `created_at`), shared by this package's tables that have OpenAI-style
    lists (files, batches, webhook deliveries). `table` is one of this package's own table
    names, never user input. Returns (rows, has_more)."""
    desc = order != "asc"
    where, args = list(where), list(args)
    if after:
        where.append(f"rowid {'<' if desc else '>'} "
                     f"coalesce((select rowid from {table} where id = ?), {'-1' if not desc else '1e18'})")
        args.append(after)
    sql = (f"select * from {table}" + (" where " + " and ".join(where) if where else "")
           + f" order by rowid {'desc' if desc else 'asc'} limit ?")
    rows = list(db.query(sql, args + [limit + 1]))
    return rows[:limit], len(rows) > limit
