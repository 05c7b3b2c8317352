"""Prometheus metrics (text exposition format 0.0.4), without a client library.

Counters and histograms are updated by the middleware (every request) and the inference
routes (tokens, time to first token, latency); gauges are read from the pool at scrape time.
"""
from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable

from llmp.events import Event

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Histogram:
    def __init__(self, buckets: Iterable[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for le, c in zip([*map(_num, self.buckets), "+Inf"], self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {acc}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {acc}"]
        return out


def _num(x: float) -> str:
    return f"{x:g}"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.prompt_tokens: collections.Counter[str] = collections.Counter()
        self.completion_tokens: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        self.events: collections.Counter[str] = collections.Counter()

    def count_event(self, event: Event) -> None:
        """A handler for the app's bus: events by type (llmp_events_total)."""
        self.events[event.type] += 1

    def count_request(self, method: str, route: str, status: int) -> None:
        self.requests[(method, route, status)] += 1

    def observe_inference(self, model: str, prompt_tokens: int, completion_tokens: int,
                          latency_s: float, ttft_s: float | None) -> None:
        self.prompt_tokens[model] += prompt_tokens
        self.completion_tokens[model] += completion_tokens
        self.latency.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(latency_s)
        if ttft_s is not None:
            self.ttft.setdefault(model, Histogram(TTFT_BUCKETS)).observe(ttft_s)

    def render(self, models: list[dict]) -> str:
        """The exposition text; `models` is `pool.status()`."""
        out: list[str] = []

        def head(name: str, typ: str, help_: str) -> None:
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {typ}"])

        head("llmp_requests_total", "counter", "HTTP requests by method, route and status.")
        for (m, r, s), n in sorted(self.requests.items()):
            out.append(f'llmp_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
        head("llmp_events_total", "counter", "Events published on the app's bus, by type.")
        for typ, n in sorted(self.events.items()):
            out.append(f'llmp_events_total{{type="{_esc(typ)}"}} {n}')
        for name, ctr, help_ in (
                ("llmp_prompt_tokens_total", self.prompt_tokens, "Prompt tokens processed."),
                ("llmp_completion_tokens_total", self.completion_tokens, "Tokens generated.")):
            head(name, "counter", help_)
            for model, n in sorted(ctr.items()):
                out.append(f'{name}{{model="{_esc(model)}"}} {n}')
        for name, hists, help_ in (
                ("llmp_request_duration_seconds", self.latency, "Inference request latency."),
                ("llmp_time_to_first_token_seconds", self.ttft, "Time to first token.")):
            head(name, "histogram", help_)
            for model, h in sorted(hists.items()):
                out += h.lines(name, f'model="{_esc(model)}"')
        gauges = (("llmp_queue_depth", "queue_depth", "Requests waiting for a slot."),
                  ("llmp_slots_busy", "slots_busy", "Slots generating."),
                  ("llmp_slots_total", "slots_total", "Slots of the loaded model."),
                  ("llmp_tokens_per_second", "tokens_per_second",
                   "Generated tokens per second over the last 10 s."))
        for name, field, help_ in gauges:
            head(name, "gauge", help_)
            for st in models:
                if field in st:
                    out.append(f'{name}{{model="{_esc(st["id"])}"}} {st[field]}')
        head("llmp_models_loading", "gauge", "Models being loaded.")
        out.append(f"llmp_models_loading {sum(1 for st in models if st.get('state') == 'loading')}")
        return "\n".join(out) + "\n"
