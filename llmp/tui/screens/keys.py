"""Keys: every key the API key may see (name, permissions, tier and limits, expiry, last use);
create (the secret shown once, with a copy action) and revoke with a confirmation."""
from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding

from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.dialogs import ConfirmScreen, FormScreen, SecretScreen
from llmp.tui.widgets.table import FilterTable


class KeysView(View):
    TITLE = "Keys"
    BINDINGS = [Binding("n", "create", "New key"), Binding("d,delete", "revoke", "Revoke")]
    ACTIONS = {"create": "admin", "revoke": "admin"}

    def compose(self) -> ComposeResult:
        yield FilterTable(["ID", "NAME", "PERMISSIONS", "TIER", "RPM/TPM", "LIMITS", "STATUS",
                           "EXPIRES", "LAST USED"], id="keys-table")

    async def fetch(self) -> dict[str, Any]:
        return {"keys": await self.client.request("GET", "/v1/auth/api-keys")}

    def show_payload(self, payload: dict[str, Any]) -> None:
        body = payload.get("keys") or {}
        rows = []
        for k in body.get("data", []):
            rl = k.get("rate_limit") or {}
            lim = {a: b for a, b in (k.get("limits") or {}).items() if b is not None}
            rows.append((k["id"], [
                k["id"], k.get("name", ""), ",".join(k.get("permissions") or []),
                k.get("tier") or "-",
                f"{rl.get('requests_per_minute', '-')}/{rl.get('tokens_per_minute', '-')}",
                " ".join(f"{a}={b}" for a, b in lim.items()) or "-", k.get("status", "-"),
                fmt.when(k.get("expires_at")), fmt.when(k.get("last_used_at"))]))
        self.query_one(FilterTable).set_rows(rows)

    def action_create(self) -> None:
        fields = [("name", "Name", ""),
                  ("permissions", "Permissions (comma-separated)", "inference,models.read"),
                  ("tier", "Tier (free, pro, enterprise; empty: default)", ""),
                  ("expires_at", "Expires at (ISO time; empty: never)", "")]

        def done(values: dict[str, str] | None) -> None:
            if not values:
                return
            body: dict[str, Any] = {"name": values["name"] or "tui",
                                    "permissions": [p.strip() for p in
                                                    values["permissions"].split(",") if p.strip()]}
            if values.get("tier"):
                body["tier"] = values["tier"]
            if values.get("expires_at"):
                body["expires_at"] = values["expires_at"]
            self.act(self._create(body))

        self.app.push_screen(FormScreen("New API key", fields), done)

    async def _create(self, body: dict) -> None:
        key = await self.client.request("POST", "/v1/auth/api-keys", json=body)
        self.last_created = key
        self.app.push_screen(SecretScreen(f"Key {key.get('id')} ({key.get('name')})",
                                          key.get("api_key", "")))

    def action_revoke(self) -> None:
        key_id = self.query_one(FilterTable).selected_key
        if key_id is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.act(self.client.request("DELETE", f"/v1/auth/api-keys/{key_id}"),
                         done=f"Revoked {key_id}")

        self.app.push_screen(ConfirmScreen(f"Revoke key {key_id}? It stops working at once."),
                             done)
