"""Logs: the server's request log, live (GET /v1/admin/logs: the file `llmp logs` reads)."""
from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.widgets import Input, Log

from llmp.tui.screens.base import View

KEEP = 5000


class LogsView(View):
    TITLE = "Logs"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.log_lines: list[str] = []
        self.log_offset: int | None = None
        self.query_text = ""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter (esc closes)", id="logs-filter", classes="filter")
        yield Log(id="logs-log", max_lines=KEEP)

    async def fetch(self) -> dict[str, Any]:
        if not self.llmp.allowed("admin", action=False):
            return {}
        params = {"lines": 500} if self.log_offset is None else {"offset": self.log_offset}
        return {"logs": await self.client.request("GET", "/v1/admin/logs", params=params)}

    def show_payload(self, payload: dict[str, Any]) -> None:
        body = payload.get("logs")
        if body is None:
            return
        rotated = self.log_offset is not None and body.get("offset", 0) < self.log_offset
        self.log_offset = body.get("offset", 0)
        new = body.get("lines") or []
        if rotated:
            self.log_lines = []
            self.query_one(Log).clear()
        if new:
            self.log_lines = (self.log_lines + new)[-KEEP:]
            self.query_one(Log).write_lines([x for x in new if self._match(x)])

    def _match(self, line: str) -> bool:
        return not self.query_text or self.query_text in line.lower()

    def focus_main(self) -> None:
        self.query_one(Log).focus()

    def open_filter(self) -> None:
        f = self.query_one("#logs-filter", Input)
        f.add_class("open")
        f.focus()

    def close_filter(self) -> bool:
        f = self.query_one("#logs-filter", Input)
        if not f.has_class("open"):
            return False
        f.remove_class("open")
        f.value = ""
        self.focus_main()
        return True

    @on(Input.Changed, "#logs-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip().lower()
        log = self.query_one(Log)
        log.clear()
        log.write_lines([x for x in self.log_lines if self._match(x)])
