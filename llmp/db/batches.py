"""The `batches` and `batch_lines` tables.

A batch row carries the life cycle (status and one `*_at` timestamp per status); its input
lines are rows of `batch_lines`, each of which records its own result the moment it finishes.
`record_results` only ever changes a *pending* line, so a line is answered exactly once even
when a restarted server runs it again.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlite_utils import Database

from llmp.db import files as files_db
from llmp.db.lists import found, owned_row, owner_filter, paginate
from llmp.db.locking import _lock

STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired",
            "cancelling", "cancelled")
LINE_STATUSES = ("pending", "completed", "failed", "expired", "cancelled")


def insert(db: Database, record: dict[str, Any]) -> dict:
    with _lock:
        db.table("batches").insert(record)
    return found(get(db, record["id"]))


def get(db: Database, batch_id: str, *, owner: str | None = None) -> dict | None:
    return owned_row(db, "batches", batch_id, owner)


def page(db: Database, *, owner: str | None = None, after: str | None = None,
         limit: int = 20) -> tuple[list[dict], bool]:
    where, args = owner_filter(owner)
    return paginate(db, "batches", where, args, after=after, limit=limit, order="desc")


def with_status(db: Database, statuses: Iterable[str]) -> list[dict]:
    """Batches in any of `statuses`, oldest first (the runner resumes them in that order)."""
    st = list(statuses)
    marks = ",".join("?" * len(st))
    return list(db.query(
        f"select * from batches where status in ({marks}) order by created_at, id", st))


def transition(db: Database, batch_id: str, to: str, *, allowed_from: Iterable[str], at: int,
               changes: dict[str, Any] | None = None) -> bool:
    """Move a batch to `to` (setting `<to>_at`) if its status is one of `allowed_from`.
    Returns False (and changes nothing) otherwise."""
    if to not in STATUSES:
        raise ValueError(f"unknown batch status {to!r}")
    sets = {"status": to, f"{to}_at": at, **(changes or {})}
    froms = list(allowed_from)
    assignments = ", ".join(f"{k} = ?" for k in sets)
    marks = ",".join("?" * len(froms))
    with _lock:
        cur = db.execute(
            f"update batches set {assignments} where id = ? and status in ({marks})",
            [*sets.values(), batch_id, *froms])
    return cur.rowcount > 0


def start(db: Database, batch_id: str, lines: Iterable[tuple[int, str, str]], *, model: str | None,
          at: int) -> bool:
    """Store the validated input lines (line number, custom_id, JSON body) and move the batch
    from validating to in_progress, in one transaction."""
    with _lock, db.atomic():
        db.execute("delete from batch_lines where batch_id = ?", [batch_id])
        db.conn.executemany(
            "insert into batch_lines (batch_id, line, custom_id, body, status) "
            "values (?, ?, ?, ?, 'pending')",
            ((batch_id, n, cid, body) for n, cid, body in lines))
        cur = db.execute(
            "update batches set status = 'in_progress', in_progress_at = ?, model = ? "
            "where id = ? and status = 'validating'", [at, model, batch_id])
        if cur.rowcount == 0:  # cancelled meanwhile: keep nothing
            db.execute("delete from batch_lines where batch_id = ?", [batch_id])
            return False
    return True


def pending_lines(db: Database, batch_id: str, *, after_line: int = 0, limit: int = 256) -> list[dict]:
    return list(db.query(
        "select line, custom_id, body, crashes from batch_lines where batch_id = ? "
        "and status = 'pending' and line > ? order by line limit ?",
        [batch_id, after_line, limit]))


# -- the crash guard: a line is marked in flight (committed) before it runs --------------------

def mark_in_flight(db: Database, batch_id: str, line: int) -> None:
    with _lock, db.atomic():
        db.execute("update batch_lines set in_flight = 1 where batch_id = ? and line = ?",
                   [batch_id, line])


def clear_in_flight(db: Database, batch_id: str, lines: Iterable[int]) -> None:
    """Lines stopped cleanly (a shutdown, a cancel): they did not crash the process."""
    with _lock, db.atomic():
        db.conn.executemany("update batch_lines set in_flight = 0 where batch_id = ? and line = ?",
                            [(batch_id, n) for n in lines])


def count_crashes(db: Database) -> int:
    """At start, before any line runs: every pending line still marked in flight was running
    when the previous process died; count that against it. Returns how many there were."""
    with _lock, db.atomic():
        cur = db.execute("update batch_lines set crashes = crashes + 1, in_flight = 0 "
                         "where in_flight = 1 and status = 'pending'")
        db.execute("update batch_lines set in_flight = 0 where in_flight = 1")
        return cur.rowcount


def record_results(db: Database, results: Iterable[dict[str, Any]], *,
                   on_recorded: Callable[[dict], None] | None = None) -> list[bool]:
    """Persist line results in one transaction. Each result is {batch_id, line, status,
    result (dict), at, prompt_tokens, completion_tokens}; a line changes only while it is
    pending. `on_recorded(result)` runs inside the transaction for each recorded line (its
    usage row). Returns, per result, whether it was recorded."""
    done = []
    with _lock, db.atomic():
        for r in results:
            if r["status"] not in LINE_STATUSES[1:]:
                raise ValueError(f"unknown line status {r['status']!r}")
            cur = db.execute(
                "update batch_lines set status = ?, result = ?, finished_at = ? "
                "where batch_id = ? and line = ? and status = 'pending'",
                [r["status"], json.dumps(r["result"]), r["at"], r["batch_id"], r["line"]])
            done.append(cur.rowcount > 0)
            if not done[-1]:
                continue
            if r["prompt_tokens"] or r["completion_tokens"]:
                db.execute(
                    "update batches set prompt_tokens = prompt_tokens + ?, "
                    "completion_tokens = completion_tokens + ? where id = ?",
                    [r["prompt_tokens"], r["completion_tokens"], r["batch_id"]])
            if on_recorded is not None:
                on_recorded(r)
    return done


def record_results_and_usage(db: Database, results: list[dict[str, Any]]) -> list[bool]:
    """`record_results`, and each recorded line's usage row (`result["usage"]`), in one
    transaction: a line's answer and its usage row are kept or lost together."""
    from llmp.db import usage as db_usage

    with _lock, db.atomic():
        done = record_results(db, results)
        db_usage.insert_rows(db, [r["usage"] for r, ok in zip(results, done) if ok])
    return done


def close_pending(db: Database, batch_id: str, *, status: str, error: dict, at: int) -> int:
    """Answer every still-pending line with `status` and the error `{code, message}`
    (expired or cancelled lines). Returns how many lines were closed."""
    with _lock, db.atomic():
        rows = list(db.query(
            "select line, custom_id from batch_lines where batch_id = ? and status = 'pending'",
            [batch_id]))
        db.conn.executemany(
            "update batch_lines set status = ?, result = ?, finished_at = ? "
            "where batch_id = ? and line = ? and status = 'pending'",
            ((status, json.dumps({"custom_id": r["custom_id"], "error": error}), at, batch_id,
              r["line"]) for r in rows))
    return len(rows)


def counts(db: Database, batch_id: str) -> dict[str, int]:
    """Lines per status: {"pending": n, "completed": n, ...} (missing statuses are 0)."""
    out = dict.fromkeys(LINE_STATUSES, 0)
    for r in db.query("select status, count(*) as n from batch_lines where batch_id = ? "
                      "group by status", [batch_id]):
        out[r["status"]] = r["n"]
    return out


def results(db: Database, batch_id: str, statuses: Iterable[str], *, after_line: int = 0,
            limit: int = 1000) -> list[dict]:
    """Finished lines (line, custom_id, status, result) in line order, one page at a time."""
    st = list(statuses)
    marks = ",".join("?" * len(st))
    return list(db.query(
        f"select line, custom_id, status, result from batch_lines where batch_id = ? "
        f"and status in ({marks}) and line > ? order by line limit ?",
        [batch_id, *st, after_line, limit]))


def finish(db: Database, batch_id: str, to: str, *, allowed_from: Iterable[str], at: int,
           files: Iterable[dict], changes: dict[str, Any]) -> bool:
    """Register the output/error file rows and move the batch to its final status, in one
    transaction (a crash before it leaves the batch to be finalized again on restart)."""
    with _lock, db.atomic():
        b = get(db, batch_id)
        if b is None or b["status"] not in set(allowed_from):
            return False
        for f in files:
            files_db.insert(db, f)
        sets = {"status": to, f"{to}_at": at, **changes}
        db.table("batches").update(batch_id, sets)
    return True
