"""`llmp chat`: an interactive chat with a model of the running server, streamed as markdown.

Input: end a line with `\\` to continue on the next one, or wrap a block in `\"\"\"` lines.
Ctrl-C stops the reply being streamed (the session goes on); Ctrl-D or /exit leaves.
History is kept in the home's SQLite database: `llmp chat --resume` continues the last chat.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape

from llmp.cli.ui import console
from llmp.client import Client
from llmp.config import load_settings
from llmp.db import open_home
from llmp.errors import InvalidRequestError, LlmpError
from llmp.services import chat as chat_service

HELP = """Commands:
  /help             this help
  /model [ID]       show or switch the model
  /system [TEXT]    show or set the system prompt (empty TEXT clears it)
  /clear            forget the conversation so far
  /save [PATH]      write the conversation as markdown (default: chat-<id>.md)
  /exit             leave (Ctrl-D too)
Multi-line input: end a line with \\ or wrap a block in \"\"\" lines. Ctrl-C stops a reply."""


def _read_message() -> str:
    """One user message (multi-line aware); raises EOFError at the end of input."""
    first = input(">>> ")
    if first.strip() == '"""':
        lines = []
        while (line := input("... ")).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input("... "))
    return "\n".join(lines)


def _stream_reply(client: Client, model: str, messages: list[dict]) -> str:
    """Stream a reply, rendering markdown live; Ctrl-C stops it and keeps what came."""
    text = ""
    events = client.request("POST", "/v1/chat/completions", stream=True,
                            json={"model": model, "messages": messages, "stream": True})
    try:
        with Live(Markdown(""), console=console, refresh_per_second=12,
                  vertical_overflow="visible") as live:
            for event in events:
                for choice in event.get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
                live.update(Markdown(text))
    except KeyboardInterrupt:
        events.close()
        console.print("[dim](stopped)[/dim]")
    return text


def _reply_fitting_context(client: Client, session: dict, history: list[dict]) -> str:
    """Stream the reply to `history`; when the conversation no longer fits the model's context,
    leave the oldest turns out of the request (as chat UIs do) and say so. The saved history
    keeps every message."""
    sent = list(history)
    while True:
        try:
            return _stream_reply(client, session["model"], chat_service.api_messages(session, sent))
        except LlmpError as e:
            if e.code != "context_length_exceeded" or len(sent) <= 1:
                raise
            drop = 2 if len(sent) > 2 else 1
            sent = sent[drop:]
            console.print("[dim](older messages left out to fit the model's context)[/dim]")


def _command(line: str, client: Client, db, session: dict, history: list[dict]) -> bool:
    """Run a /command; returns False to leave the chat."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return False
    if cmd == "/help":
        console.print(HELP)
    elif cmd == "/model":
        if arg:
            client.request("GET", f"/v1/models/{arg}")  # NotFoundError when unknown
            chat_service.update(db, session, model=arg)
        console.print(f"model: [bold]{session['model']}[/bold]")
    elif cmd == "/system":
        if line.strip() != "/system":
            chat_service.update(db, session, system=arg)
        console.print(f"system: {session['system'] or '(none)'}")
    elif cmd == "/clear":
        chat_service.clear(db, session)
        history.clear()
        console.print("Conversation cleared.")
    elif cmd == "/save":
        path = Path(arg or f"chat-{session['id']}.md")
        path.write_text(chat_service.to_markdown(session, history))
        console.print(f"Saved to {path}")
    else:
        console.print(f"[red]Unknown command {escape(cmd)}[/red] (/help lists them)")
    return True


def chat(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model id (default: the first served).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last chat.")] = False,
) -> None:
    """Chat with a model of the running server (`llmp serve`)."""
    settings = load_settings()
    client = Client(settings=settings)
    served = client.request("GET", "/v1/models")["data"]
    if model:  # an unknown model is one red line and a non-zero exit, before any session
        client.request("GET", f"/v1/models/{model}")
    db = open_home(settings)
    if resume:
        session, history = chat_service.resume(db)
        if model or system is not None:
            chat_service.update(db, session, **{k: v for k, v in
                                                (("model", model), ("system", system)) if v is not None})
        console.print(f"Resuming chat {session['id']} ({len(history)} messages).")
    else:
        if not served and not model:
            raise InvalidRequestError("the server has no model: add one with `llmp models add`")
        session = chat_service.start(db, model=model or served[0]["id"], system=system,
                                     server_url=client.url)
        history = []
    console.print(f"Chatting with [bold]{session['model']}[/bold] at {client.url}. "
                  "/help for commands, Ctrl-D to leave.")
    while True:
        try:
            line = _read_message()
        except EOFError:
            break
        except KeyboardInterrupt:
            console.print()
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            try:
                if not _command(line, client, db, session, history):
                    break
            except LlmpError as e:
                console.print(f"[red]Error:[/red] {escape(e.message)}")
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = _reply_fitting_context(client, session, history)
        except LlmpError as e:
            console.print(f"[red]Error:[/red] {escape(e.message)}")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
        chat_service.append(db, session, "user", line)
        chat_service.append(db, session, "assistant", reply)
