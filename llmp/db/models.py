"""The model registry table."""
from __future__ import annotations

import json
from typing import Any, overload

from sqlite_utils import Database

from llmp.db.lists import found
from llmp.db.locking import _lock

_JSON = ("capabilities", "languages")


@overload
def _decode(row: dict) -> dict: ...
@overload
def _decode(row: None) -> None: ...
def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for k in _JSON:
        v = out.get(k)
        out[k] = json.loads(v) if v else []
    return out


def upsert(db: Database, record: dict[str, Any]) -> dict:
    rec = dict(record)
    for k in _JSON:
        if k in rec and not isinstance(rec[k], str):
            rec[k] = json.dumps(rec[k])
    with _lock:
        db.table("models").upsert(rec, pk="id", alter=False)
    return found(get(db, rec["id"]))


def get(db: Database, model_id: str) -> dict | None:
    rows = list(db.query("select * from models where id = ?", [model_id]))
    if not rows:
        rows = list(db.query(
            "select m.* from models m join model_aliases a on a.model_id = m.id where a.alias = ?",
            [model_id]))
    return _decode(rows[0]) if rows else None


def exists(db: Database, model_id: str) -> bool:
    return bool(list(db.query("select 1 from models where id = ?", [model_id])))


def list_all(db: Database, *, category: str | None = None, size: str | None = None,
             provider: str | None = None) -> list[dict]:
    where, args = [], []
    if category:  # the model's category, or one of its capabilities
        where.append("(category = ? or exists (select 1 from json_each(coalesce(nullif("
                     "models.capabilities, ''), '[]')) where json_each.value = ?))")
        args += [category, category]
    if size:
        where.append("size_class = ?")
        args.append(size)
    if provider:
        where.append("lower(provider) = lower(?)")
        args.append(provider)
    sql = "select * from models" + (" where " + " and ".join(where) if where else "") + " order by id"
    return [_decode(r) for r in db.query(sql, args)]


def children(db: Database, model_id: str) -> list[str]:
    """The ids of the adapters registered on a model."""
    return [r["id"] for r in db.query("select id from models where parent = ? order by id",
                                      [model_id])]


def aliases(db: Database, model_id: str) -> list[str]:
    return [r["alias"] for r in db.query(
        "select alias from model_aliases where model_id = ? order by alias", [model_id])]


def set_alias(db: Database, alias: str, model_id: str) -> None:
    with _lock:
        db.table("model_aliases").upsert({"alias": alias, "model_id": model_id}, pk="alias")


def delete_alias(db: Database, alias: str, model_id: str) -> bool:
    """Remove `alias` of `model_id`; False when it is not one of its aliases."""
    with _lock:
        cur = db.execute("delete from model_aliases where alias = ? and model_id = ?",
                         [alias, model_id])
    return bool(cur.rowcount)


def update(db: Database, model_id: str, changes: dict[str, Any]) -> dict:
    ch = dict(changes)
    for k in _JSON:
        if k in ch and not isinstance(ch[k], str):
            ch[k] = json.dumps(ch[k])
    with _lock:
        db.table("models").update(model_id, ch)
    return found(get(db, model_id))


def delete(db: Database, model_id: str) -> None:
    with _lock, db.atomic():
        db.execute("delete from model_aliases where model_id = ?", [model_id])
        db.execute("delete from models where id = ?", [model_id])
