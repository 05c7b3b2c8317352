"""The `files` table: metadata of uploaded and server-made files (/v1/files).

The bytes live on disk under `settings.files_dir` (column `storage`); this table is the index.
`owner` arguments scope a query to one API key; `None` means every key (an admin).
"""
from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from llmp.db.lists import found, owned_row, owner_filter, paginate
from llmp.db.locking import _lock


def insert(db: Database, record: dict[str, Any]) -> dict:
    with _lock:
        db.table("files").insert(record)
    return found(get(db, record["id"]))


def get(db: Database, file_id: str, *, owner: str | None = None) -> dict | None:
    return owned_row(db, "files", file_id, owner)


def page(db: Database, *, owner: str | None = None, purpose: str | None = None,
         after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
    """One page of files (see `lists.paginate`). Returns (rows, has_more)."""
    where, args = owner_filter(owner)
    if purpose:
        where.append("purpose = ?")
        args.append(purpose)
    return paginate(db, "files", where, args, after=after, limit=limit, order=order)


def delete(db: Database, file_id: str) -> None:
    with _lock:
        db.execute("delete from files where id = ?", [file_id])
