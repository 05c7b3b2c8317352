"""Overview: throughput and request-rate sparklines, TTFT p50/p95, errors, uptime, and per
loaded model its slots busy/free, queue, device and memory (from /health, /metrics and
/v1/admin/models)."""
from __future__ import annotations

import time
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from llmp.errors import NotFoundError, PermissionDeniedError
from llmp.tui import fmt
from llmp.tui import metrics as m
from llmp.tui.screens.base import View
from llmp.tui.widgets.table import FilterTable


class OverviewView(View):
    TITLE = "Overview"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.tokens = m.Rates()
        self.requests = m.Rates()
        self.summary: dict[str, Any] = {}
        self.status: dict | None = None  # /v1/admin/status (admin keys)

    def compose(self) -> ComposeResult:
        yield Static("", id="ov-status")
        with Horizontal(id="ov-charts"):
            with Vertical(classes="chart"):
                yield Label("tokens/s", id="ov-tps-label")
                yield Sparkline([], id="ov-tps")
            with Vertical(classes="chart"):
                yield Label("requests/s", id="ov-rps-label")
                yield Sparkline([], id="ov-rps")
        yield FilterTable(["MODEL", "STATE", "DEVICE", "SLOTS BUSY", "FREE", "QUEUE", "TOK/S",
                           "MEMORY", "KEEP-ALIVE"], id="ov-models")

    async def fetch(self) -> dict[str, Any]:
        health = await self._health()
        text = await self.client.request("GET", "/metrics")
        loaded: list[dict] | None = None
        status: dict | None = None
        if self.llmp.allowed("admin", action=False):
            try:
                loaded = (await self.client.request("GET", "/v1/admin/models"))["data"]
                status = await self.client.request("GET", "/v1/admin/status")
            except (PermissionDeniedError, NotFoundError):  # not admin; an older server
                pass
        return {"health": health, "metrics": text.decode() if isinstance(text, bytes)
                else str(text), "admin_models": loaded, "status": status,
                "now": time.monotonic()}

    def show_payload(self, payload: dict[str, Any]) -> None:
        health: dict = payload.get("health") or {}
        samples = m.parse(payload.get("metrics") or "")
        loaded: list[dict] | None = payload.get("admin_models")
        status: dict | None = payload.get("status")
        now = float(payload.get("now") or time.monotonic())
        tokens = m.total(samples, "llmp_completion_tokens_total")
        reqs = m.served(samples)
        tps = self.tokens.add(now, tokens)
        rps = self.requests.add(now, reqs)
        four, five = m.errors(samples)
        p50 = m.quantile(samples, "llmp_time_to_first_token_seconds", 0.5)
        p95 = m.quantile(samples, "llmp_time_to_first_token_seconds", 0.95)
        # the app's event bus, as /metrics counts it (batches, webhooks, limits, fine-tunes)
        counts = sorted(((v, lab.get("type", "?")) for n, lab, v in samples
                         if n == "llmp_events_total" and v), reverse=True)
        events = "  ".join(f"{t} {int(v)}" for v, t in counts[:6])
        self.status = status
        self.summary = {"status": health.get("status"), "uptime_s": health.get("uptime_s"),
                        "requests": reqs, "tokens": tokens, "errors_4xx": four,
                        "errors_5xx": five, "ttft_p50": p50, "ttft_p95": p95}
        self.query_one("#ov-status", Static).update(
            f"[b]{self.client.url}[/b]  status [b]{health.get('status', '?')}[/b]  "
            f"version {health.get('version', '?')}  uptime {fmt.duration(health.get('uptime_s'))}"
            f"\nrequests {fmt.num(int(reqs))}  tokens generated {fmt.num(int(tokens))}  "
            f"errors 4xx {int(four)} / 5xx {int(five)}  "
            f"TTFT p50 {fmt.seconds(p50)} p95 {fmt.seconds(p95)}"
            + (f"\n{_device(status)}" if status else "")
            + (f"\nevents {events}" if events else ""))
        self.query_one("#ov-tps-label", Label).update(
            f"tokens/s {tps:.1f}" if tps is not None else "tokens/s")
        self.query_one("#ov-rps-label", Label).update(
            f"requests/s {rps:.2f}" if rps is not None else "requests/s")
        self.query_one("#ov-tps", Sparkline).data = chart(self.tokens.points)
        self.query_one("#ov-rps", Sparkline).data = chart(self.requests.points)
        models = loaded if loaded is not None else health.get("models") or []
        rows = []
        for st in models:
            busy, total = st.get("slots_busy"), st.get("slots_total")
            free = total - busy if isinstance(busy, int) and isinstance(total, int) else "-"
            mem = (st.get("model_bytes") or 0) + (st.get("kv_cache_bytes") or 0)
            keep = st.get("keep_alive_left")
            rows.append((str(st.get("id")), [
                str(st.get("id")), str(st.get("state", "-")), str(st.get("device", "-")),
                fmt.num(busy), fmt.num(free), fmt.num(st.get("queue_depth")),
                fmt.num(st.get("tokens_per_second")), fmt.size(mem) if mem else "-",
                "never" if keep is None and "keep_alive_left" in st else fmt.duration(keep)]))
        self.query_one(FilterTable).set_rows(rows)

    async def _health(self) -> dict:
        # /health answers 503 with its body while a model loads or the server stops
        try:
            return await self.client.request("GET", "/health")
        except PermissionDeniedError:
            return {}


def chart(points: Any) -> list[float]:
    """A sparkline's data: nothing while all is zero (a flat line of zeros draws as full)."""
    data = list(points)
    return data if any(data) else []


def _device(st: dict) -> str:
    d, p = st.get("device") or {}, st.get("process") or {}
    mem = ""
    if d.get("memory_total_bytes"):
        mem = (f", memory {fmt.size(d.get('memory_available_bytes'))} free of "
               f"{fmt.size(d['memory_total_bytes'])}")
    return (f"device {'GPU offload' if d.get('gpu_offload') else 'CPU only'}, "
            f"{d.get('cpu_count', '?')} CPUs{mem}   server pid {p.get('pid', '?')}, "
            f"RSS {fmt.size(p.get('rss_bytes'))}, {p.get('in_flight', 0)} in flight")
