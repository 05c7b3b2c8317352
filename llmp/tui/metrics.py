"""Reading the server's Prometheus text (/metrics) for the Overview: totals, rates between two
scrapes, and quantiles from histogram buckets."""
from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field

Sample = tuple[str, dict[str, str], float]

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[Sample]:
    out: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((m.group(1), labels, value))
    return out


def total(samples: list[Sample], name: str, **where: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == w for k, w in where.items()))


#: routes a dashboard polls: left out of "requests/s" so that watching adds nothing to it
WATCH_ROUTES = ("/health", "/metrics", "/v1/admin/models", "/v1/admin/logs", "/v1/auth/me")


def served(samples: list[Sample]) -> float:
    """Requests served, less the dashboards' own polls (WATCH_ROUTES)."""
    return sum(v for n, lab, v in samples
               if n == "llmp_requests_total" and lab.get("route") not in WATCH_ROUTES)


def errors(samples: list[Sample]) -> tuple[float, float]:
    """(4xx, 5xx) request counts."""
    four = five = 0.0
    for n, lab, v in samples:
        if n == "llmp_requests_total":
            s = lab.get("status", "")
            if s.startswith("4"):
                four += v
            elif s.startswith("5"):
                five += v
    return four, five


def quantile(samples: list[Sample], name: str, q: float) -> float | None:
    """The q-quantile of histogram `name` over every label set (its buckets summed),
    interpolated inside the bucket as Prometheus' histogram_quantile does; None when empty."""
    buckets: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{name}_bucket" and "le" in lab:
            le = math.inf if lab["le"] == "+Inf" else float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    if not buckets:
        return None
    edges = sorted(buckets)
    count = buckets[edges[-1]]
    if count <= 0:
        return None
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le in edges:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


@dataclass
class Rates:
    """Per-second rates of a counter between scrapes, the last `size` kept (sparklines)."""

    size: int = 60
    points: deque[float] = field(default_factory=deque)
    _last: tuple[float, float] | None = None

    def add(self, now: float, value: float) -> float | None:
        last, self._last = self._last, (now, value)
        if last is None or now <= last[0]:
            return None
        rate = max(0.0, (value - last[1]) / (now - last[0]))  # a restarted server counts from 0
        self.points.append(rate)
        while len(self.points) > self.size:
            self.points.popleft()
        return rate
