"""Chat: a streaming conversation with a model picked from /v1/models."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Select, Static

from llmp.client import ServerUnreachableError
from llmp.errors import LlmpError
from llmp.tui.screens.base import View


class ChatView(View):
    TITLE = "Chat"
    POLL = False
    BINDINGS = [Binding("ctrl+l", "clear", "Clear chat")]
    ACTIONS = {"send": "inference"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.messages: list[dict[str, str]] = []
        self.streaming = False
        #: max_tokens of each answer (None: the server's default)
        self.max_tokens: int | None = None

    def compose(self) -> ComposeResult:
        yield Select([], prompt="model", id="chat-model", allow_blank=True)
        with VerticalScroll(id="chat-log"):
            yield Static("", id="chat-transcript")
        yield Input(placeholder="Message (enter sends)", id="chat-input")

    async def fetch(self) -> dict[str, Any]:
        return {"models": await self.client.request("GET", "/v1/models")}

    def show_payload(self, payload: dict[str, Any]) -> None:
        body = payload.get("models") or {}
        ids = [m["id"] for m in body.get("data", [])]
        select: Select[str] = self.query_one("#chat-model", Select)
        current = select.value
        select.set_options([(i, i) for i in ids])
        if current in ids:
            select.value = current
        elif ids:
            select.value = ids[0]

    def focus_main(self) -> None:
        self.query_one("#chat-input", Input).focus()

    def show_transcript(self, partial: str | None = None) -> None:
        if not self.is_attached:
            return  # the app is closing while an answer streams
        t = Text()
        for m in self.messages + ([{"role": "assistant", "content": partial}] if partial is not None else []):
            t.append(f"{m['role']}: ", style="bold")
            t.append(m["content"] + "\n\n")
        self.query_one("#chat-transcript", Static).update(t)
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def action_clear(self) -> None:
        self.messages = []
        self.show_transcript()

    @on(Input.Submitted, "#chat-input")
    def _send(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text or self.streaming:
            return
        if not self.llmp.allowed("inference"):
            self.notify("Read-only, or this key lacks the 'inference' permission",
                        severity="error")
            return
        model = self.query_one("#chat-model", Select).value
        if not isinstance(model, str):
            self.notify("Pick a model first", severity="warning")
            return
        event.input.value = ""
        self.messages.append({"role": "user", "content": text})
        self.show_transcript()
        self.run_worker(self._stream(model), group="chat", exclusive=True)

    async def _stream(self, model: str) -> None:
        self.streaming = True
        answer = ""
        try:
            async for ev in self.client.stream("POST", "/v1/chat/completions", json={
                    "model": model, "messages": self.messages, "stream": True,
                    **({"max_tokens": self.max_tokens} if self.max_tokens else {})}):
                for choice in ev.get("choices") or []:
                    answer += (choice.get("delta") or {}).get("content") or ""
                self.show_transcript(answer)
        except ServerUnreachableError:
            self.llmp.set_connected(False)
        except LlmpError as e:
            self.show_error(e)
        finally:
            self.streaming = False
        self.messages.append({"role": "assistant", "content": answer})
        self.show_transcript()
