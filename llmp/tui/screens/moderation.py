"""Moderation playground: type a text, see each category's score as a bar (POST /v1/moderations)."""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import Input, Static

from llmp.client import ServerUnreachableError
from llmp.errors import LlmpError
from llmp.tui import fmt
from llmp.tui.screens.base import View


class ModerationView(View):
    TITLE = "Moderation"
    POLL = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Text to moderate (enter checks)", id="mod-input")
        yield Static("", id="mod-result")

    def focus_main(self) -> None:
        self.query_one("#mod-input", Input).focus()

    @on(Input.Submitted, "#mod-input")
    def _check(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.llmp.allowed("moderation"):
            self.notify("Read-only, or this key lacks the 'moderation' permission",
                        severity="error")
            return
        if event.value.strip():
            self.run_worker(self._moderate(event.value), group="moderate", exclusive=True)

    async def _moderate(self, text: str) -> None:
        out = self.query_one("#mod-result", Static)
        out.update("checking...")
        try:
            body = await self.client.request("POST", "/v1/moderations", json={"input": text})
        except ServerUnreachableError:
            self.llmp.set_connected(False)
            out.update("")
            return
        except LlmpError as e:
            out.update(Text(f"error: {e.message}", style="red"))
            return
        self.show_result(body)

    result: dict | None = None  # the last answer shown

    def show_result(self, body: dict) -> None:
        self.result = body
        r = (body.get("results") or [{}])[0]
        flags = r.get("categories") or {}
        t = Text()
        t.append(f"model {body.get('model', '-')}   flagged: {r.get('flagged')}\n\n", style="bold")
        for cat, score in sorted((r.get("category_scores") or {}).items()):
            t.append(f"{cat:<24} ")
            t.append(fmt.bar(float(score), 30), style="red" if flags.get(cat) else "green")
            t.append(f" {float(score):.3f}\n")
        self.query_one("#mod-result", Static).update(t)
