"""Models: every model the server serves, what is loaded where; load and unload."""
from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.table import FilterTable


class ModelsView(View):
    TITLE = "Models"
    BINDINGS = [Binding("l", "load", "Load"), Binding("u", "unload", "Unload")]
    ACTIONS = {"load": "admin", "unload": "admin"}

    def compose(self) -> ComposeResult:
        yield FilterTable(["ID", "OWNED BY", "LOADED", "DEVICE", "SLOTS", "MEMORY", "CREATED"],
                          id="models-table")

    async def fetch(self) -> dict[str, Any]:
        models = await self.client.request("GET", "/v1/models")
        admin = None
        if self.llmp.allowed("admin", action=False):
            admin = await self.client.request("GET", "/v1/admin/models")
        return {"models": models, "admin_models": admin}

    def show_payload(self, payload: dict[str, Any]) -> None:
        models = payload.get("models") or {}
        loaded = {m["id"]: m for m in (payload.get("admin_models") or {}).get("data", [])}
        rows = []
        for m in models.get("data", []):
            st = loaded.get(m["id"])
            mem = ((st.get("model_bytes") or 0) + (st.get("kv_cache_bytes") or 0)) if st else 0
            rows.append((m["id"], [
                m["id"], m.get("owned_by", "-"), "yes" if st else "-",
                (st or {}).get("device", "-"),
                f"{st.get('slots_busy', 0)}/{st.get('slots_total', 0)}" if st else "-",
                fmt.size(mem) if mem else "-", fmt.when(m.get("created"))]))
        self.query_one(FilterTable).set_rows(rows)

    def _selected(self) -> str | None:
        return self.query_one(FilterTable).selected_key

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
