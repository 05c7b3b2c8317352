"""Batches (progress, cancel, line errors) and Files (list, delete)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label

from llmp.client import Client
from llmp.tui import fmt
from llmp.tui.screens.base import View
from llmp.tui.widgets.dialogs import ConfirmScreen, FormScreen, TextScreen
from llmp.tui.widgets.table import FilterTable


class BatchesView(View):
    TITLE = "Batches"
    BINDINGS = [Binding("n", "create", "New batch"), Binding("o", "download", "Save results"),
                Binding("c", "cancel_batch", "Cancel batch"),
                Binding("e", "errors", "Line errors"),
                Binding("x", "delete_file", "Delete file")]
    ACTIONS = {"cancel_batch": "batches.write", "delete_file": "files.write",
               "create": "batches.write", "download": "files.read"}

    def compose(self) -> ComposeResult:
        yield Label("[b]Batches[/b]")
        yield FilterTable(["ID", "STATUS", "ENDPOINT", "PROGRESS", "DONE", "FAILED", "TOTAL",
                           "CREATED"], id="batches-table")
        yield Label("[b]Files[/b]")
        yield FilterTable(["ID", "FILENAME", "PURPOSE", "SIZE", "CREATED"], id="files-table")

    async def fetch(self) -> dict[str, Any]:
        batches = await self.client.request("GET", "/v1/batches", params={"limit": 100})
        files = None
        if self.llmp.allowed("files.read", action=False):
            files = await self.client.request("GET", "/v1/files", params={"limit": 100})
        return {"batches": batches, "files": files}

    def show_payload(self, payload: dict[str, Any]) -> None:
        batches = payload.get("batches") or {}
        self.batches = {b["id"]: b for b in batches.get("data", [])}
        rows = []
        for b in batches.get("data", []):
            rc = b.get("request_counts") or {}
            total, done, failed = rc.get("total", 0), rc.get("completed", 0), rc.get("failed", 0)
            frac = (done + failed) / total if total else 0.0
            rows.append((b["id"], [b["id"], b.get("status", "-"), b.get("endpoint", "-"),
                                   f"{fmt.bar(frac, 16)} {frac:4.0%}", fmt.num(done),
                                   fmt.num(failed), fmt.num(total), fmt.when(b.get("created_at"))]))
        self.query_one("#batches-table", FilterTable).set_rows(rows)
        files = payload.get("files")
        if files is not None:
            self.query_one("#files-table", FilterTable).set_rows([
                (f["id"], [f["id"], f.get("filename", "-"), f.get("purpose", "-"),
                           fmt.size(f.get("bytes")), fmt.when(f.get("created_at"))])
                for f in files.get("data", [])])

    def _selected_batch(self) -> str | None:
        return self.query_one("#batches-table", FilterTable).selected_key

    def action_cancel_batch(self) -> None:
        batch_id = self._selected_batch()
        if batch_id is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.act(self.client.request("POST", f"/v1/batches/{batch_id}/cancel"),
                         done=f"Cancelling {batch_id}")

        self.app.push_screen(ConfirmScreen(f"Cancel batch {batch_id}?"), done)

    def action_errors(self) -> None:
        batch_id = self._selected_batch()
        if batch_id is None:
            return
        self.act(self._show_errors(batch_id))

    async def _show_errors(self, batch_id: str) -> None:
        b = await self.client.request("GET", f"/v1/batches/{batch_id}")
        lines: list[str] = []
        for e in (b.get("errors") or {}).get("data") or []:
            lines.append(f"line {e.get('line')}: {e.get('code')}: {e.get('message')}")
        if b.get("error_file_id"):
            raw = await self.client.request("GET", f"/v1/files/{b['error_file_id']}/content")
            text = raw.decode() if isinstance(raw, bytes) else json.dumps(raw)
            for line in text.splitlines()[:500]:
                try:
                    r = json.loads(line)
                    err = (r.get("error") or {}) or ((r.get("response") or {}).get("body") or {})
                    lines.append(f"{r.get('custom_id')}: {json.dumps(err)[:200]}")
                except ValueError:
                    lines.append(line[:200])
        self.app.push_screen(TextScreen(f"Errors of {batch_id}",
                                        "\n".join(lines) or "No line errors."))

    def action_delete_file(self) -> None:
        file_id = self.query_one("#files-table", FilterTable).selected_key
        if file_id is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.act(self.client.request("DELETE", f"/v1/files/{file_id}"),
                         done=f"Deleted {file_id}")

        self.app.push_screen(ConfirmScreen(f"Delete file {file_id}?"), done)

    def action_create(self) -> None:
        fields = [("path", "Local JSONL file of requests", ""),
                  ("endpoint", "Endpoint", "/v1/chat/completions"),
                  ("window", "Completion window", "24h")]

        def done(values: dict[str, str] | None) -> None:
            if values and values["path"]:
                self.act(self._create(values), done="Batch created")

        self.app.push_screen(FormScreen("New batch from a local file", fields), done)

    async def _create(self, values: dict[str, str]) -> None:
        path = Path(values["path"]).expanduser()

        def upload() -> dict:  # the shared client's streamed multipart upload (sync)
            with Client(self.client.url, self.client.api_key) as c:
                return c.request("POST", "/v1/files", files={"purpose": "batch",
                                                             "file": (path.name, path)})

        f = await asyncio.to_thread(upload)
        await self.client.request("POST", "/v1/batches", json={
            "input_file_id": f["id"], "endpoint": values["endpoint"],
            "completion_window": values["window"] or "24h"})

    def action_download(self) -> None:
        batch_id = self._selected_batch()
        if batch_id is None:
            return

        def done(values: dict[str, str] | None) -> None:
            if values and values["path"]:
                self.act(self._download(batch_id, Path(values["path"]).expanduser()))

        self.app.push_screen(FormScreen(f"Save the results of {batch_id}",
                                        [("path", "Local file", f"{batch_id}.jsonl")]), done)

    async def _download(self, batch_id: str, path: Path) -> None:
        b = await self.client.request("GET", f"/v1/batches/{batch_id}")
        if not b.get("output_file_id"):
            self.notify(f"{batch_id} has no results yet", severity="warning")
            return
        raw = await self.client.request("GET", f"/v1/files/{b['output_file_id']}/content")
        data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        await asyncio.to_thread(path.write_bytes, data)
        self.notify(f"Saved {len(data):,} bytes to {path}")
