"""`llmp chat` conversations kept in the local SQLite home (sessions and messages)."""
from __future__ import annotations

from llmp.db import chat as db_chat
from llmp.errors import NotFoundError
from llmp.ids import new_id
from llmp.services import timefmt


def start(db, *, model: str, system: str | None, server_url: str) -> dict:
    now = timefmt.iso()
    return db_chat.create_session(db, {"id": new_id("chat", 12), "title": "", "model": model,
                                       "system": system or "", "server_url": server_url,
                                       "created_at": now, "updated_at": now})


def resume(db, session_id: str | None = None) -> tuple[dict, list[dict]]:
    """A saved session (the latest when no id is given) and its messages."""
    s = db_chat.get_session(db, session_id) if session_id else db_chat.latest_session(db)
    if s is None:
        raise NotFoundError(f"no chat session {session_id!r}" if session_id
                            else "no chat session to resume yet")
    return s, db_chat.messages(db, s["id"])


def append(db, session: dict, role: str, content: str) -> None:
    db_chat.add_message(db, session["id"], role, content, timefmt.iso())
    if role == "user" and not session.get("title"):
        session["title"] = content.strip().splitlines()[0][:60] if content.strip() else ""
        db_chat.update_session(db, session["id"], {"title": session["title"]})


def update(db, session: dict, **changes: str) -> None:
    """Change the session's model or system prompt."""
    session.update(changes)
    db_chat.update_session(db, session["id"], changes)


def clear(db, session: dict) -> None:
    db_chat.clear_messages(db, session["id"])


def api_messages(session: dict, history: list[dict]) -> list[dict]:
    """The OpenAI `messages` of a session: its system prompt, then the history."""
    out = [{"role": "system", "content": session["system"]}] if session.get("system") else []
    return out + [{"role": m["role"], "content": m["content"]} for m in history]


def to_markdown(session: dict, history: list[dict]) -> str:
    lines = [f"# Chat {session['id']} ({session['model']})", ""]
    if session.get("system"):
        lines += [f"**system:** {session['system']}", ""]
    for m in history:
        lines += [f"**{m['role']}:**", "", m["content"], ""]
    return "\n".join(lines)
