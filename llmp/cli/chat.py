"""`llmp chat`: an interactive chat with a model of the running server, streamed as markdown.

Input: end a line with `\\` to continue on the next one, or wrap a block in `\"\"\"` lines;
line editing and history (up arrow; kept in $LLMP_HOME/chat_history) through readline.
Ctrl-C stops the reply being streamed (the session goes on); Ctrl-D or /exit leaves.
Conversations are kept in the home's SQLite database: `llmp chat --resume` continues the last.
Piped (stdin not a terminal): no prompts, replies as plain text one after another on stdout,
the banner on stderr.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape

from llmp.cli.ui import ApiKeyOpt, UrlOpt, console, err_console, flags
from llmp.cli.ui import client as api_client
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


def interactive() -> bool:
    """True when a person types (stdin is a terminal): prompts, line editing, markdown."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _line_editing(history: Path) -> Callable[[], None]:
    """Turn on readline's line editing and history for input(); returns a function that
    saves the history. Nothing when readline is missing (e.g. Windows)."""
    try:
        import readline
    except ImportError:  # pragma: no cover
        return lambda: None
    readline.set_history_length(1000)
    try:
        readline.read_history_file(history)
    except OSError:
        pass

    def save() -> None:
        try:
            readline.write_history_file(history)
            history.chmod(0o600)
        except OSError:
            pass
    return save


def _read_message(prompts: bool = True) -> str:
    """One user message (multi-line aware); raises EOFError at the end of input."""
    first, more = (">>> ", "... ") if prompts else ("", "")
    first_line = input(first)
    if first_line.strip() == '"""':
        lines = []
        while (line := input(more)).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first_line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input(more))
    return "\n".join(lines)


#: `--max-tokens` of this chat (None: up to the model's context)
MAX_TOKENS: dict[str, int | None] = {"value": None}


def _stream_reply(client: Client, model: str, messages: list[dict]) -> str:
    """Stream a reply, rendering markdown live on a terminal (plain text otherwise, ending
    with a newline); Ctrl-C stops it and keeps what came."""
    text = ""
    body = {"model": model, "messages": messages, "stream": True}
    if MAX_TOKENS["value"]:
        body["max_tokens"] = MAX_TOKENS["value"]
    events = client.request("POST", "/v1/chat/completions", stream=True, json=body)
    if not (console.is_terminal and interactive()):
        try:
            for event in events:
                for choice in event.get("choices", []):
                    piece = choice.get("delta", {}).get("content") or ""
                    text += piece
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return text
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


def served_model(client: Client) -> str | None:
    """The model the server serves: the first loaded one (what `llmp serve -m` preloads),
    else the first registered one."""
    try:
        health = client.request("GET", "/health")
        loaded = [m["id"] for m in health.get("models") or [] if m.get("state") == "loaded"]
        loaded += list(health.get("loading") or [])
        if loaded:
            return loaded[0]
    except LlmpError:
        pass  # /health answers 503 while loading or stopping: fall back to the list
    served = client.request("GET", "/v1/models")["data"]
    return served[0]["id"] if served else None


def _reply_fitting_context(client: Client, session: dict, history: list[dict]) -> str:
    """Stream the reply to `history`; when the conversation no longer fits the model's context,
    leave the oldest turns out of the request (as chat UIs do) and say so. The saved history
    keeps every message."""
    sent = list(history)
    while True:
        try:
            with flags(max_tokens="--max-tokens"):
                return _stream_reply(client, session["model"],
                                     chat_service.api_messages(session, sent))
        except LlmpError as e:
            if e.code != "context_length_exceeded" or len(sent) <= 1:
                raise
            drop = 2 if len(sent) > 2 else 1
            sent = sent[drop:]
            err_console.print("[dim](older messages left out to fit the model's context)[/dim]")


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
            with flags(model="/model"):
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
        try:
            path.write_text(chat_service.to_markdown(session, history))
        except OSError as e:  # the chat goes on; the error names the command
            raise InvalidRequestError(f"/save {path}: {e.strerror or e}") from None
        console.print(f"Saved to {path}")
    else:
        console.print(f"[red]Unknown command {escape(cmd)}[/red] (/help lists them)")
    return True


def chat(
    message: Annotated[Optional[str], typer.Argument(
        metavar="MESSAGE", help="A first message to send (the chat goes on after its reply).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="MODEL",
        help="Model id (default: the model the server has loaded, else its first).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", metavar="TEXT", help="System prompt.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last chat.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", help="Cap each reply at N tokens (default: none).")] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Chat with a model of the running server (`llmp serve`).

    Examples:

      llmp chat

      llmp chat "Hello" -m tiny

      printf 'Hi\\nTell me more\\n' | llmp chat > replies.txt
    """
    settings = load_settings()
    MAX_TOKENS["value"] = max_tokens
    client = api_client(settings=settings)
    if model:  # an unknown model is one red line and a non-zero exit, before any session
        with flags(model="--model"):
            client.request("GET", f"/v1/models/{model}")
    person = interactive()
    info = console if person else err_console  # piped: stdout holds the replies only
    db = open_home(settings)
    if resume:
        session, history = chat_service.resume(db)
        if model or system is not None:
            chat_service.update(db, session, **{k: v for k, v in
                                                (("model", model), ("system", system)) if v is not None})
        info.print(f"Resuming chat {session['id']} ({len(history)} messages).")
    else:
        model = model or served_model(client)
        if not model:
            raise InvalidRequestError("the server has no model: add one with `llmp models add`")
        session = chat_service.start(db, model=model, system=system, server_url=client.url)
        history = []
    info.print(f"Chatting with [bold]{session['model']}[/bold] at {client.url}. "
               "/help for commands, Ctrl-D to leave.")
    save_history = _line_editing(settings.home / "chat_history") if person else (lambda: None)
    pending = message
    try:
        while True:
            if pending is not None:
                line, pending = pending, None
            else:
                try:
                    line = _read_message(prompts=person)
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
                err_console.print(f"[red]Error:[/red] {escape(e.message)}")
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})
            chat_service.append(db, session, "user", line)
            chat_service.append(db, session, "assistant", reply)
    finally:
        save_history()
