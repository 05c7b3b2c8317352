"""The `jobs` table of the durable job runner (llmp.jobs).

A row is one unit of background work: `kind` says which handler runs it, `state` is
queued | running | paused | done. `claim` moves the oldest queued job of a kind to running
under one runner token, atomically; `heartbeat` stamps the jobs a runner holds; at start a
runner takes back every job left running by a dead process (`orphans`, `requeue_crashed`).
"""
from __future__ import annotations

from collections.abc import Iterable

from sqlite_utils import Database

from llmp.db.locking import _lock

STATES = ("queued", "running", "paused", "done")


def enqueue(db: Database, job_id: str, kind: str, *, at: float) -> None:
    with _lock:
        db.table("jobs").insert({"id": job_id, "kind": kind, "state": "queued", "runner": None,
                           "attempts": 0, "crashes": 0, "created_at": at, "updated_at": at},
                          replace=True)


def get(db: Database, job_id: str) -> dict | None:
    rows = list(db.query("select * from jobs where id = ?", [job_id]))
    return rows[0] if rows else None


def claim(db: Database, kind: str, runner: str, *, at: float) -> dict | None:
    """The oldest queued job of `kind`, now running under `runner`; None when none waits."""
    with _lock, db.atomic():
        rows = list(db.query("select id from jobs where kind = ? and state = 'queued' "
                             "order by created_at, rowid limit 1", [kind]))
        if not rows:
            return None
        db.execute("update jobs set state = 'running', runner = ?, attempts = attempts + 1, "
                   "claimed_at = ?, heartbeat_at = ?, updated_at = ? where id = ? "
                   "and state = 'queued'", [runner, at, at, at, rows[0]["id"]])
    return get(db, rows[0]["id"])


def set_state(db: Database, job_id: str, to: str, *, allowed_from: Iterable[str],
              at: float, runner: str | None = None) -> bool:
    """Move a job to `to` if it is in one of `allowed_from` (and, with `runner`, held by that
    runner). Leaving `running` clears the runner."""
    if to not in STATES:
        raise ValueError(f"unknown job state {to!r}")
    froms = list(allowed_from)
    marks = ",".join("?" * len(froms))
    extra, args = ("", []) if runner is None else (" and runner = ?", [runner])
    with _lock:
        cur = db.execute(
            f"update jobs set state = ?, updated_at = ?, "
            f"runner = case when ? = 'running' then runner else null end "
            f"where id = ? and state in ({marks}){extra}", [to, at, to, job_id, *froms, *args])
    return cur.rowcount > 0


def heartbeat(db: Database, runner: str, job_ids: Iterable[str], *, at: float) -> None:
    ids = list(job_ids)
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    with _lock:
        db.execute(f"update jobs set heartbeat_at = ? where runner = ? and state = 'running' "
                   f"and id in ({marks})", [at, runner, *ids])


def orphans(db: Database, kind: str, runner: str, *, stale_before: float | None = None
            ) -> list[dict]:
    """Jobs of `kind` running under another runner (at start: every one; later: those whose
    heartbeat is older than `stale_before`)."""
    sql = "select * from jobs where kind = ? and state = 'running' and coalesce(runner, '') != ?"
    args: list = [kind, runner]
    if stale_before is not None:
        sql += " and coalesce(heartbeat_at, 0) < ?"
        args.append(stale_before)
    return list(db.query(sql + " order by created_at, rowid", args))


def count_crash(db: Database, job_id: str, runner_was: str | None, *, at: float) -> int | None:
    """A job found running under a dead runner: count the crash and put it back in the queue
    (the handler decides whether it runs again). Returns its crash count, or None when it
    was no longer that runner's."""
    with _lock, db.atomic():
        cur = db.execute(
            "update jobs set crashes = crashes + 1, state = 'queued', runner = null, "
            "updated_at = ? where id = ? and state = 'running' and coalesce(runner, '') = ?",
            [at, job_id, runner_was or ""])
        if cur.rowcount == 0:
            return None
    row = get(db, job_id)
    return row["crashes"] if row else None


def with_state(db: Database, kind: str, state: str) -> list[dict]:
    return list(db.query("select * from jobs where kind = ? and state = ? "
                         "order by created_at, rowid", [kind, state]))
