"""Fine-tunes: jobs, the selected job's events; cancel, pause, resume."""
from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Sparkline, Static

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.dialogs import FormScreen, TextScreen
from llmp.tui.widgets.table import FilterTable

JOBS = "/v1/fine_tuning/jobs"


class FineTunesView(View):
    TITLE = "Fine-tunes"
    BINDINGS = [Binding("n", "create", "New job"), Binding("k", "checkpoints", "Checkpoints"),
                Binding("c", "job('cancel')", "Cancel job"),
                Binding("p", "job('pause')", "Pause job"),
                Binding("s", "job('resume')", "Resume job")]
    ACTIONS = {"job": "fine_tuning.write", "create": "fine_tuning.write"}

    def compose(self) -> ComposeResult:
        yield FilterTable(["ID", "MODEL", "STATUS", "TRAINED TOKENS", "FINE-TUNED MODEL",
                           "CREATED"], id="ft-table")
        yield Label("train loss", id="ft-loss-label")
        yield Sparkline([], id="ft-loss")
        yield Label("[b]Events[/b] of the selected job")
        yield Static("", id="ft-events")

    async def fetch(self) -> dict[str, Any]:
        body = await self.client.request("GET", JOBS, params={"limit": 100})
        ids = [j["id"] for j in body.get("data", [])]
        jid = self.query_one(FilterTable).selected_key
        if jid not in ids:  # what the table selects once these rows are set
            jid = ids[0] if ids else None
        ev = None
        if jid is not None:
            ev = await self.client.request("GET", f"{JOBS}/{jid}/events", params={"limit": 100})
        return {"jobs": body, "events": ev}

    def show_payload(self, payload: dict[str, Any]) -> None:
        body = payload.get("jobs") or {}
        table = self.query_one(FilterTable)
        table.set_rows([(j["id"], [j["id"], j.get("model", "-"), j.get("status", "-"),
                                   fmt.num(j.get("trained_tokens")),
                                   j.get("fine_tuned_model") or "-",
                                   fmt.when(j.get("created_at"))])
                        for j in body.get("data", [])])
        text = ""
        loss: list[float] = []
        if payload.get("events") is not None:
            ev = payload["events"].get("data", [])
            text = "\n".join(f"{fmt.when(e.get('created_at'))}  {e.get('level', '')}  "
                             f"{e.get('message', '')}" for e in reversed(ev[:20]))
            loss = [float(e["data"]["train_loss"]) for e in reversed(ev)
                    if e.get("type") == "metrics"
                    and isinstance((e.get("data") or {}).get("train_loss"), (int, float))]
        self.query_one("#ft-events", Static).update(text or "-")
        self.query_one("#ft-loss", Sparkline).data = loss
        self.query_one("#ft-loss-label", Label).update(
            f"train loss {loss[-1]:.4f} (last {len(loss)} steps)" if loss else "train loss")

    @on(DataTable.RowHighlighted, "#ft-table DataTable")
    def _job_changed(self) -> None:
        self.run_worker(self.poll_once(), group="action", exclusive=True)

    def action_job(self, verb: str) -> None:
        jid = self.query_one(FilterTable).selected_key
        if jid is not None:
            self.act(self.client.request("POST", f"{JOBS}/{jid}/{verb}"), done=f"{verb}: {jid}")

    def action_create(self) -> None:
        fields = [("model", "Base model", ""), ("training_file", "Training file id (file_...)", ""),
                  ("suffix", "Suffix (optional)", "")]

        def done(values: dict[str, str] | None) -> None:
            if values and values["model"] and values["training_file"]:
                body = {k: v for k, v in values.items() if v}
                self.act(self.client.request("POST", JOBS, json=body), done="Fine-tune created")

        self.app.push_screen(FormScreen("New fine-tuning job", fields), done)

    def action_checkpoints(self) -> None:
        jid = self.query_one(FilterTable).selected_key
        if jid is not None:
            self.act(self._checkpoints(jid))

    async def _checkpoints(self, jid: str) -> None:
        body = await self.client.request("GET", f"{JOBS}/{jid}/checkpoints")
        lines = [f"{c.get('id')}  step {c.get('step_number')}  "
                 f"{c.get('fine_tuned_model_checkpoint', '')}  {c.get('metrics') or ''}"
                 for c in body.get("data", [])]
        self.app.push_screen(TextScreen(f"Checkpoints of {jid}", "\n".join(lines) or "None yet."))
