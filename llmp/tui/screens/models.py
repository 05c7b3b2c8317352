"""Models: every model the server serves, what is loaded where, prices and the selected
model's aliases; load and unload, set prices, add and remove aliases (admin endpoints)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.dialogs import FormScreen
from llmp.tui.widgets.table import FilterTable


def _path(mid: str) -> str:
    return f"/v1/admin/models/{quote(mid, safe='/:')}"


def _price(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else "-"


class ModelsView(View):
    TITLE = "Models"
    BINDINGS = [Binding("l", "load", "Load"), Binding("u", "unload", "Unload"),
                Binding("p", "price", "Set price"), Binding("a", "aliases", "Aliases")]
    ACTIONS = {"load": "admin", "unload": "admin", "price": "admin", "aliases": "admin"}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.models: dict[str, dict] = {}  # id -> the model as GET /v1/models lists it
        self.selected: dict | None = None  # the selected model as GET /v1/models/{id} shows it

    def compose(self) -> ComposeResult:
        yield FilterTable(["ID", "OWNED BY", "LOADED", "DEVICE", "SLOTS", "MEMORY",
                           "PRICE IN/OUT", "CREATED"], id="models-table")
        yield Static("", id="models-detail")

    async def fetch(self) -> dict[str, Any]:
        models = await self.client.request("GET", "/v1/models")
        admin = None
        if self.llmp.allowed("admin", action=False):
            admin = await self.client.request("GET", "/v1/admin/models")
        ids = [m["id"] for m in models.get("data", [])]
        mid = self._selected()
        if mid not in ids:  # what the table selects once these rows are set
            mid = ids[0] if ids else None
        selected = None
        if mid is not None:
            selected = await self.client.request("GET", f"/v1/models/{quote(mid, safe='/:')}")
        return {"models": models, "admin_models": admin, "selected": selected}

    def show_payload(self, payload: dict[str, Any]) -> None:
        models = payload.get("models") or {}
        loaded = {m["id"]: m for m in (payload.get("admin_models") or {}).get("data", [])}
        self.models = {m["id"]: m for m in models.get("data", [])}
        rows = []
        for m in models.get("data", []):
            st = loaded.get(m["id"])
            mem = ((st.get("model_bytes") or 0) + (st.get("kv_cache_bytes") or 0)) if st else 0
            pr = m.get("pricing") or {}
            rows.append((m["id"], [
                m["id"], m.get("owned_by", "-"), "yes" if st else "-",
                (st or {}).get("device", "-"),
                f"{st.get('slots_busy', 0)}/{st.get('slots_total', 0)}" if st else "-",
                fmt.size(mem) if mem else "-",
                f"{_price(pr.get('input_tokens'))}/{_price(pr.get('output_tokens'))} "
                f"{pr.get('currency', '')}".strip() if pr else "-",
                fmt.when(m.get("created"))]))
        self.query_one(FilterTable).set_rows(rows)
        sel = payload.get("selected")
        self.selected = sel
        text = ""
        if sel:
            aliases = (sel.get("details") or {}).get("aliases") or sel.get("aliases") or []
            text = f"[b]{sel.get('id')}[/b]  aliases: {', '.join(aliases) or '-'}"
        self.query_one("#models-detail", Static).update(text)

    def _selected(self) -> str | None:
        return self.query_one(FilterTable).selected_key

    @on(DataTable.RowHighlighted, "#models-table DataTable")
    def _model_changed(self) -> None:
        if self.llmp.live and (self.selected or {}).get("id") != self._selected():
            self.run_worker(self.poll_once(), group="action", exclusive=True)

    def action_load(self) -> None:
        mid = self._selected()
        if mid:
            self.notify(f"Loading {mid}...")
            self.act(self.client.request("POST", "/v1/admin/models/load", json={"model": mid}),
                     done=f"Loaded {mid}")

    def action_unload(self) -> None:
        mid = self._selected()
        if mid:
            self.act(self.client.request("POST", "/v1/admin/models/unload", json={"model": mid}),
                     done=f"Unloaded {mid}")

    def action_price(self) -> None:
        mid = self._selected()
        if not mid:
            return
        pr = (self.models.get(mid) or {}).get("pricing") or {}
        fields = [("input_price", "Input price per 1K tokens", _price(pr.get("input_tokens"))),
                  ("output_price", "Output price per 1K tokens",
                   _price(pr.get("output_tokens"))),
                  ("currency", "Currency", str(pr.get("currency") or "USD"))]

        def done(values: dict[str, str] | None) -> None:
            if not values:
                return
            body: dict[str, Any] = {}
            try:
                for k in ("input_price", "output_price"):
                    if values.get(k) not in (None, "", "-"):
                        body[k] = float(values[k])
            except ValueError:
                self.notify("prices are numbers (e.g. 0.002)", title=self.TITLE,
                            severity="error")
                return
            if values.get("currency"):
                body["currency"] = values["currency"]
            self.act(self.client.request("POST", f"{_path(mid)}/price", json=body),
                     done=f"Prices of {mid} set")

        self.app.push_screen(FormScreen(f"Prices of {mid}", fields), done)

    def action_aliases(self) -> None:
        mid = self._selected()
        if not mid:
            return
        fields = [("add", "Add aliases (comma-separated)", ""),
                  ("remove", "Remove aliases (comma-separated)", "")]

        def done(values: dict[str, str] | None) -> None:
            if not values:
                return
            body = {k: [a.strip() for a in values.get(k, "").split(",") if a.strip()]
                    for k in ("add", "remove")}
            if not body["add"] and not body["remove"]:
                return
            self.act(self.client.request("POST", f"{_path(mid)}/aliases", json=body),
                     done=f"Aliases of {mid} changed")

        self.app.push_screen(FormScreen(f"Aliases of {mid}", fields), done)
