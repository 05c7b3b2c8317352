"""Row look-ups shared by the tables that belong to an API key and have OpenAI-style lists
(files, batches, webhooks, webhook deliveries).

`table` arguments are always one of this package's own table names, never user input.
`owner` arguments scope a query to one API key; `None` means every key (an admin).
"""
from __future__ import annotations

from typing import Any

from sqlite_utils import Database


def found(row: dict | None) -> dict:
    """A row the caller just wrote, read back (never None: LookupError otherwise)."""
    if row is None:
        raise LookupError("a row just written is not there")
    return row


def owner_filter(owner: str | None) -> tuple[list[str], list[Any]]:
    """The where-clauses and arguments that keep a query to `owner`'s rows."""
    return (["owner_key_id = ?"], [owner]) if owner is not None else ([], [])


def owned_row(db: Database, table: str, row_id: str, owner: str | None) -> dict | None:
    """The row of `table` with this id (and, when `owner` is given, that owner), or None."""
    where, args = owner_filter(owner)
    rows = list(db.query(f"select * from {table} where " + " and ".join(["id = ?", *where]),
                         [row_id, *args]))
    return rows[0] if rows else None


def paginate(db: Database, table: str, where: list[str], args: list[Any], *, after: str | None,
             limit: int, order: str) -> tuple[list[dict], bool]:
    """Cursor pagination in insertion order (rowid: creation order, finer than the
    second-resolution `created_at`), newest first (`order="desc"`) or oldest first; `after` is
    the id of the last row of the previous page (an unknown id: from the start).
    Returns (rows, has_more)."""
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
