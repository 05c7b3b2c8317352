"""Usage: requests, tokens and cost by day (or hour) as sparklines, a table by period and model
(or key), and the billing period's totals (/v1/usage, /v1/usage/billing)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.table import FilterTable

RANGES = (30, 90, 365)


class UsageView(View):
    TITLE = "Usage"
    BINDINGS = [Binding("t", "range", "Range"), Binding("g", "group", "By model/key"),
                Binding("h", "granularity", "Day/hour")]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.days = 30
        self.group_by = "model"
        self.granularity = "day"
        self._last: Any = None

    def compose(self) -> ComposeResult:
        yield Static("", id="usage-title")
        with Horizontal(id="usage-charts"):
            for name in ("requests", "tokens", "cost"):
                with Vertical(classes="chart"):
                    yield Label(name, id=f"usage-{name}-label")
                    yield Sparkline([], id=f"usage-{name}")
        yield Static("", id="usage-billing")
        yield FilterTable(["PERIOD", "MODEL/KEY", "REQUESTS", "ERRORS", "TOKENS", "COST"],
                          id="usage-table")

    def action_range(self) -> None:
        self.days = RANGES[(RANGES.index(self.days) + 1) % len(RANGES)]
        self.run_worker(self.poll_once(), group="action")

    def action_group(self) -> None:
        self.group_by = "key" if self.group_by == "model" else "model"
        self.run_worker(self.poll_once(), group="action")

    def action_granularity(self) -> None:
        self.granularity = "hour" if self.granularity == "day" else "day"
        self.run_worker(self.poll_once(), group="action")

    async def fetch(self) -> dict[str, Any]:
        end = dt.datetime.now(dt.UTC).date()
        start = end - dt.timedelta(days=self.days - 1)
        body = await self.client.request("GET", "/v1/usage", params={
            "start_date": start.isoformat(), "end_date": end.isoformat(),
            "granularity": self.granularity, "group_by": self.group_by})
        try:
            billing = await self.client.request("GET", "/v1/usage/billing")
        except Exception:  # noqa: BLE001 - billing is a bonus; the usage still shows
            billing = None
        return {"usage": body, "billing": billing}

    def show_payload(self, payload: dict[str, Any]) -> None:
        self.show(payload.get("usage") or {}, payload.get("billing"))

    def show(self, body: dict, billing: dict | None) -> None:
        """Render a /v1/usage body (and a billing body); cheap when nothing changed."""
        if (body, billing) == self._last:
            return
        self._last = (body, billing)
        data = body.get("data") or []
        name = "model" if self.group_by == "model" else "key_id"
        per: dict[str, list[float]] = {}
        rows = []
        for i, e in enumerate(data):
            period = e.get("hour") or e.get("date") or ""
            tokens = (e.get("tokens") or {}).get("total_tokens", 0)
            cost = (e.get("cost") or {}).get("amount", 0.0)
            acc = per.setdefault(period, [0.0, 0.0, 0.0])
            acc[0] += e.get("requests", 0)
            acc[1] += tokens
            acc[2] += cost
            rows.append((f"{period}|{e.get(name)}|{i}", [
                period.replace("T", " ").replace(":00:00Z", "h"), str(e.get(name, "-")),
                fmt.num(e.get("requests")), fmt.num(e.get("errors")), fmt.num(tokens),
                fmt.money(cost)]))
        periods = sorted(per)
        for idx, label in enumerate(("requests", "tokens", "cost")):
            series = [per[p][idx] for p in periods]
            self.query_one(f"#usage-{label}", Sparkline).data = series if any(series) else []
            total = sum(series)
            shown = fmt.money(total) if label == "cost" else fmt.num(int(total))
            self.query_one(f"#usage-{label}-label", Label).update(f"{label} {shown}")
        rows.reverse()  # newest first
        self.query_one(FilterTable).set_rows(rows)
        self.query_one("#usage-title", Static).update(
            f"[b]{body.get('start_date')} .. {body.get('end_date')}[/b] by {self.granularity}"
            f" and {self.group_by}   (t: range {self.days}d, g: model/key, h: day/hour)")
        if billing:
            cp = billing.get("current_period") or {}
            u, lim = cp.get("usage") or {}, cp.get("limits") or {}
            self.query_one("#usage-billing", Static).update(
                f"billing {cp.get('start_date')} .. {cp.get('end_date')}: "
                f"{fmt.num(u.get('requests'))} requests, {fmt.num(u.get('tokens'))} tokens, "
                f"{fmt.money(u.get('cost'))}"
                f"   budget {fmt.money(lim.get('monthly_budget'))}"
                f"   next billing {billing.get('next_billing_date', '-')}")
