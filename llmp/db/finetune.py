"""The `fine_tuning_jobs`, `fine_tuning_events` and `fine_tuning_checkpoints` tables."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from llmp.db import files as files_db
from llmp.db import jobs as jobs_db
from llmp.db.lists import owned_row, owner_filter, paginate
from llmp.db.locking import _lock

STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed",
            "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


def insert(db: Database, record: dict[str, Any], *, kind: str) -> dict:
    """Store a new job and queue it for the runner, in one transaction."""
    with _lock, db.atomic():
        db.table("fine_tuning_jobs").insert(record)
        jobs_db.enqueue(db, record["id"], kind, at=float(record["created_at"]))
    return get(db, record["id"])  # type: ignore[return-value]


def get(db: Database, job_id: str, *, owner: str | None = None) -> dict | None:
    return owned_row(db, "fine_tuning_jobs", job_id, owner)


def page(db: Database, *, owner: str | None = None, after: str | None = None, limit: int = 20,
         metadata: dict[str, str] | None = None) -> tuple[list[dict], bool]:
    where, args = owner_filter(owner)
    for k, v in (metadata or {}).items():
        where.append("json_extract(metadata, ?) = ?")
        args += ['$."' + k.replace('\\', '\\\\').replace('"', '\\"') + '"', v]
    return paginate(db, "fine_tuning_jobs", where, args, after=after, limit=limit, order="desc")


def update(db: Database, job_id: str, changes: dict[str, Any], *,
           allowed_from: Iterable[str] | None = None) -> bool:
    """Change a job's columns (only while its status is in `allowed_from`, when given)."""
    sets = ", ".join(f"{k} = ?" for k in changes)
    args = list(changes.values()) + [job_id]
    sql = f"update fine_tuning_jobs set {sets} where id = ?"
    if allowed_from is not None:
        froms = list(allowed_from)
        sql += f" and status in ({','.join('?' * len(froms))})"
        args += froms
    with _lock:
        cur = db.execute(sql, args)
    return cur.rowcount > 0


def transition(db: Database, job_id: str, status: str, *, allowed_from: Iterable[str],
               changes: dict[str, Any] | None = None, job_state: str | None = None,
               at: float = 0.0, files: Iterable[dict] = (), event: dict | None = None) -> bool:
    """Move a job to `status` (with `changes`) if it is in `allowed_from`; with `job_state`
    the runner's row moves too; `files` (result file rows) and `event` are stored in the same
    transaction. False (nothing changed) when the job was elsewhere."""
    froms = list(allowed_from)
    with _lock, db.atomic():
        if not update(db, job_id, {"status": status, **(changes or {})}, allowed_from=froms):
            return False
        if job_state is not None:
            db.execute("update jobs set state = ?, runner = case when ? = 'running' then runner "
                       "else null end, updated_at = ? where id = ?",
                       [job_state, job_state, at, job_id])
        for f in files:
            files_db.insert(db, f)
        if event is not None:
            db.table("fine_tuning_events").insert(event)
    return True


def add_event(db: Database, event: dict[str, Any]) -> None:
    with _lock:
        db.table("fine_tuning_events").insert(event)


def events(db: Database, job_id: str, *, after: str | None = None, limit: int = 20
           ) -> tuple[list[dict], bool]:
    return paginate(db, "fine_tuning_events", ["job_id = ?"], [job_id], after=after,
                    limit=limit, order="desc")


def all_events(db: Database, job_id: str, *, type: str | None = None) -> list[dict]:
    sql = "select * from fine_tuning_events where job_id = ?"
    args: list = [job_id]
    if type is not None:
        sql += " and type = ?"
        args.append(type)
    return list(db.query(sql + " order by rowid", args))


def add_checkpoint(db: Database, ckpt: dict[str, Any], event: dict[str, Any] | None = None
                   ) -> None:
    with _lock, db.atomic():
        db.table("fine_tuning_checkpoints").insert(ckpt, replace=True)
        if event is not None:
            db.table("fine_tuning_events").insert(event)


def checkpoints(db: Database, job_id: str, *, after: str | None = None, limit: int = 10
                ) -> tuple[list[dict], bool]:
    return paginate(db, "fine_tuning_checkpoints", ["job_id = ?"], [job_id], after=after,
                    limit=limit, order="desc")


def all_checkpoints(db: Database, job_id: str) -> list[dict]:
    """Newest first."""
    return list(db.query("select * from fine_tuning_checkpoints where job_id = ? "
                         "order by step_number desc", [job_id]))


def delete_checkpoint(db: Database, ckpt_id: str) -> None:
    with _lock:
        db.execute("delete from fine_tuning_checkpoints where id = ?", [ckpt_id])


def last_checkpoint(db: Database, job_id: str) -> dict | None:
    rows = list(db.query("select * from fine_tuning_checkpoints where job_id = ? "
                         "order by step_number desc limit 1", [job_id]))
    return rows[0] if rows else None


def unfinished(db: Database, owner: str) -> list[dict]:
    """The key's jobs that have not ended (any status but FINAL)."""
    return list(db.query(f"select * from fine_tuning_jobs where owner_key_id = ? and status "
                         f"not in ({','.join('?' * len(FINAL))})", [owner, *FINAL]))


def with_status(db: Database, statuses: Iterable[str]) -> list[dict]:
    st = list(statuses)
    return list(db.query(f"select * from fine_tuning_jobs where status in "
                         f"({','.join('?' * len(st))}) order by created_at, rowid", st))
