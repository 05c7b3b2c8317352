"""Fine-tunes: jobs, the selected job's events; cancel, pause, resume."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.table import FilterTable

JOBS = "/v1/fine_tuning/jobs"


class FineTunesView(View):
    TITLE = "Fine-tunes"
    BINDINGS = [Binding("c", "job('cancel')", "Cancel job"),
                Binding("p", "job('pause')", "Pause job"),
                Binding("s", "job('resume')", "Resume job")]
    ACTIONS = {"job": "fine_tuning.write"}

    def compose(self) -> ComposeResult:
        yield FilterTable(["ID", "MODEL", "STATUS", "TRAINED TOKENS", "FINE-TUNED MODEL",
                           "CREATED"], id="ft-table")
        yield Label("[b]Events[/b] of the selected job")
        yield Static("", id="ft-events")

    async def refresh_data(self) -> None:
        body = await self.client.request("GET", JOBS, params={"limit": 100})
        table = self.query_one(FilterTable)
        table.set_rows([(j["id"], [j["id"], j.get("model", "-"), j.get("status", "-"),
                                   fmt.num(j.get("trained_tokens")),
                                   j.get("fine_tuned_model") or "-",
                                   fmt.when(j.get("created_at"))])
                        for j in body.get("data", [])])
        jid = table.selected_key
        text = ""
        if jid is not None:
            ev = await self.client.request("GET", f"{JOBS}/{jid}/events", params={"limit": 20})
            text = "\n".join(f"{fmt.when(e.get('created_at'))}  {e.get('level', '')}  "
                             f"{e.get('message', '')}" for e in reversed(ev.get("data", [])))
        self.query_one("#ft-events", Static).update(text or "-")

    @on(DataTable.RowHighlighted, "#ft-table DataTable")
    def _job_changed(self) -> None:
        self.run_worker(self.poll_once(), group="action", exclusive=True)

    def action_job(self, verb: str) -> None:
        jid = self.query_one(FilterTable).selected_key
        if jid is not None:
            self.act(self.client.request("POST", f"{JOBS}/{jid}/{verb}"), done=f"{verb}: {jid}")
