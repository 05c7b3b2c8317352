"""Webhooks: endpoints, the deliveries of the selected one with their status; send a test."""
from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.table import FilterTable


class WebhooksView(View):
    TITLE = "Webhooks"
    BINDINGS = [Binding("t", "test", "Send test")]
    ACTIONS = {"test": "webhooks"}

    def compose(self) -> ComposeResult:
        yield Label("[b]Endpoints[/b]")
        yield FilterTable(["ID", "URL", "EVENTS", "CREATED"], id="wh-table")
        yield Label("[b]Deliveries[/b] of the selected endpoint", id="wh-deliveries-label")
        yield FilterTable(["ID", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "ERROR", "CREATED"],
                          id="wh-deliveries")

    async def fetch(self) -> dict[str, Any]:
        body = await self.client.request("GET", "/v1/webhooks")
        ids = [w["id"] for w in body.get("data", [])]
        wid = self.query_one("#wh-table", FilterTable).selected_key
        if wid not in ids:  # what the table selects once these rows are set
            wid = ids[0] if ids else None
        d = None
        if wid is not None:
            d = await self.client.request("GET", f"/v1/webhooks/{wid}/deliveries",
                                          params={"limit": 50})
        return {"webhooks": body, "deliveries": d}

    def show_payload(self, payload: dict[str, Any]) -> None:
        body = payload.get("webhooks") or {}
        table = self.query_one("#wh-table", FilterTable)
        table.set_rows([(w["id"], [w["id"], w.get("url", "-"),
                                   ",".join(w.get("events") or []) or "*",
                                   fmt.when(w.get("created_at"))])
                        for w in body.get("data", [])])
        d = payload.get("deliveries")
        rows = []
        if d is not None:
            rows = [(x["id"], [x["id"], x.get("event", "-"), x.get("status", "-"),
                               fmt.num(x.get("attempts")), str(x.get("last_status_code") or "-"),
                               (x.get("last_error") or "")[:60], fmt.when(x.get("created_at"))])
                    for x in d.get("data", [])]
        self.query_one("#wh-deliveries", FilterTable).set_rows(rows)

    @on(DataTable.RowHighlighted, "#wh-table DataTable")
    def _endpoint_changed(self) -> None:
        self.run_worker(self.poll_once(), group="action", exclusive=True)

    def action_test(self) -> None:
        wid = self.query_one("#wh-table", FilterTable).selected_key
        if wid is not None:
            self.act(self.client.request("POST", f"/v1/webhooks/{wid}/test"),
                     done=f"Test event sent to {wid}")
