"""Per-key rate limits (token buckets, in memory) and monthly quotas.

Rate limits: each key has a requests-per-minute and a tokens-per-minute bucket. The limits
are the key's own `rate_limit` when set, else its tier's (the spec's tiers: free 20 RPM /
40,000 TPM, pro 3,500 RPM / 90,000 TPM; enterprise is custom: the key's own limits, by
default 10,000 RPM / 10,000,000 TPM). A request takes one request token when it is
authenticated; an inference request also reserves `prompt + max_tokens` tokens before it
runs, and the reservation is settled against the real count when it ends. Buckets refill
continuously; the `X-RateLimit-Reset-*` headers give the unix time at which the bucket is full
again, as the spec's example does.

Quotas: a key may carry monthly limits (`monthly_budget` in the model prices' currency,
`requests_per_month`, `tokens_per_month`); at or over one, requests get 429
`quota_exceeded_error` until the next calendar month (UTC). Crossing one emits the
`usage.limit.reached` webhook event.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from llmp.db import keys as db_keys
from llmp.db import usage as db_usage
from llmp.errors import QuotaExceededError, RateLimitError
from llmp.services import timefmt, usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tier:
    requests_per_minute: int
    tokens_per_minute: int


TIERS: dict[str, Tier] = {
    "free": Tier(20, 40_000),
    "pro": Tier(3_500, 90_000),
    "enterprise": Tier(10_000, 10_000_000),
}


class Bucket:
    """A token bucket of `capacity` that refills fully in 60 seconds."""

    def __init__(self, capacity: int, now: float):
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, n: float) -> float:
        """Seconds until `n` tokens are available."""
        return max(0.0, (n - self.level) / self.rate)

    def reset_at(self, now: float) -> int:
        return math.ceil(now + max(0.0, self.capacity - self.level) / self.rate)


@dataclass
class RateState:
    limit_requests: int
    remaining_requests: int
    reset_requests: int
    limit_tokens: int
    remaining_tokens: int
    reset_tokens: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit-Requests": str(self.limit_requests),
            "X-RateLimit-Limit-Tokens": str(self.limit_tokens),
            "X-RateLimit-Remaining-Requests": str(self.remaining_requests),
            "X-RateLimit-Remaining-Tokens": str(self.remaining_tokens),
            "X-RateLimit-Reset-Requests": str(self.reset_requests),
            "X-RateLimit-Reset-Tokens": str(self.reset_tokens),
        }


@dataclass
class _Month:
    start: str  # "YYYY-MM-DDTHH" of the month's first hour
    requests: int
    tokens: int
    cost: float
    loaded: float  # monotonic time of the last read from the database


class Limiter:
    """Rate limits and quotas of every key, for one server process."""

    #: re-read monthly totals at least this often (writers in other processes)
    MONTH_TTL = 5.0

    def __init__(self, db, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
        self._buckets: dict[str, tuple[tuple[int, int], Bucket, Bucket]] = {}
        self._months: dict[str, _Month] = {}
        self._keys: dict[str, dict] = {}  # the latest record seen of each key with a quota
        self._lock = threading.Lock()
        if db is not None:
            usage.on_recorded(db, self.settle)

    # -- rate limits ------------------------------------------------------------------
    @staticmethod
    def limits_for(key: dict) -> tuple[int, int]:
        tier = TIERS.get(key.get("tier") or "pro", TIERS["pro"])
        return (key.get("requests_per_minute") or tier.requests_per_minute,
                key.get("tokens_per_minute") or tier.tokens_per_minute)

    def _pair(self, key: dict, now: float) -> tuple[Bucket, Bucket]:
        limits = self.limits_for(key)
        entry = self._buckets.get(key["id"])
        if entry is None or entry[0] != limits:
            entry = (limits, Bucket(limits[0], now), Bucket(limits[1], now))
            self._buckets[key["id"]] = entry
        entry[1].refill(now)
        entry[2].refill(now)
        return entry[1], entry[2]

    def _state(self, req: Bucket, tok: Bucket, now: float) -> RateState:
        return RateState(req.capacity, max(0, int(req.level)), req.reset_at(now),
                         tok.capacity, max(0, int(tok.level)), tok.reset_at(now))

    def state(self, key: dict) -> RateState:
        with self._lock:
            now = self.clock()
            return self._state(*self._pair(key, now), now)

    def _denied(self, what: str, limit: int, wait: float, state: RateState) -> RateLimitError:
        retry = max(1, math.ceil(wait))
        return RateLimitError(
            f"Rate limit reached: {limit} {what} per minute for this key. "
            f"Retry in {retry} s.",
            headers={**state.headers(), "Retry-After": str(retry)})

    def take_request(self, key: dict) -> RateState:
        """Count one request; RateLimitError (with Retry-After) when the bucket is empty."""
        with self._lock:
            now = self.clock()
            req, tok = self._pair(key, now)
            if req.level < 1:
                raise self._denied("requests", req.capacity, req.wait(1), self._state(req, tok, now))
            req.level -= 1
            return self._state(req, tok, now)

    def reserve_tokens(self, key: dict, n: int) -> int:
        """Reserve `n` tokens (capped at the bucket's size); returns the amount reserved."""
        with self._lock:
            now = self.clock()
            req, tok = self._pair(key, now)
            n = min(max(0, int(n)), tok.capacity)
            if tok.level < n:
                raise self._denied("tokens", tok.capacity, tok.wait(n), self._state(req, tok, now))
            tok.level -= n
            return n

    def settle_tokens(self, key: dict, reserved: int, used: int) -> None:
        """Give back what a request reserved but did not use (or take what it used beyond)."""
        with self._lock:
            _, tok = self._pair(key, self.clock())
            tok.level = min(tok.capacity, tok.level + reserved - used)

    # -- quotas -----------------------------------------------------------------------
    @staticmethod
    def quota_of(key: dict) -> dict[str, float | int | None]:
        return {"monthly_budget": key.get("monthly_budget"),
                "requests_per_month": key.get("requests_per_month"),
                "tokens_per_month": key.get("tokens_per_month")}

    def _month(self, key_id: str) -> tuple[_Month, bool]:
        """The key's counters this month, and whether they were just read from the database
        (then they already include any rows recorded before this call)."""
        start = timefmt.month_start()
        start_hour = timefmt.iso(start)[:13]
        m = self._months.get(key_id)
        if m is not None and m.start == start_hour and time.monotonic() - m.loaded <= self.MONTH_TTL:
            return m, False
        rows = db_usage.summary(self.db, start.date().isoformat(), "9999-12-31", group=[],
                                key_id=key_id)
        r = rows[0] if rows else {}
        m = _Month(start_hour, r.get("requests") or 0,
                   (r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0),
                   r.get("cost") or 0.0, time.monotonic())
        self._months[key_id] = m
        return m, True

    @staticmethod
    def _exceeded(key: dict, m: _Month) -> str | None:
        q = Limiter.quota_of(key)
        if q["requests_per_month"] is not None and m.requests >= q["requests_per_month"]:
            return f"monthly request quota of {q['requests_per_month']}"
        if q["tokens_per_month"] is not None and m.tokens >= q["tokens_per_month"]:
            return f"monthly token quota of {q['tokens_per_month']}"
        if q["monthly_budget"] is not None and m.cost >= q["monthly_budget"]:
            return f"monthly budget of {q['monthly_budget']}"
        return None

    def check_quota(self, key: dict) -> None:
        """QuotaExceededError when the key has used up a monthly quota."""
        if not any(v is not None for v in self.quota_of(key).values()):
            return
        with self._lock:
            self._keys[key["id"]] = key
            what = self._exceeded(key, self._month(key["id"])[0])
        if what:
            start = timefmt.next_month_start()
            raise QuotaExceededError(
                f"Quota exceeded: this key has used its {what}; it resets on "
                f"{start.date().isoformat()}.",
                headers={"Retry-After": str(max(1, int(start.timestamp() - self.clock())))})

    def settle(self, rows: list[dict]) -> None:
        """Count freshly recorded usage rows (`usage.record_many` calls this for every writer
        on the limiter's database: HTTP requests and the batch runner) against their keys'
        months; emits `usage.limit.reached` for each key these rows take over a quota."""
        month = timefmt.iso(timefmt.month_start())[:13]
        added: dict[str, list] = {}
        for r in rows:
            if r["key_id"] and r["created_at"][:13] >= month:
                a = added.setdefault(r["key_id"], [0, 0, 0.0])
                a[0] += 1
                a[1] += (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
                a[2] += r["cost"] or 0.0
        for key_id, (requests, tokens, cost) in added.items():
            key = self._keys.get(key_id) or db_keys.by_id(self.db, key_id)
            if key is None or not any(v is not None for v in self.quota_of(key).values()):
                continue
            with self._lock:
                m, fresh = self._month(key_id)
                if fresh:  # read after the rows were stored: they are counted already
                    before = self._exceeded(key, _Month(m.start, m.requests - requests,
                                                        m.tokens - tokens, m.cost - cost, 0.0))
                else:
                    before = self._exceeded(key, m)
                    m.requests += requests
                    m.tokens += tokens
                    m.cost += cost
                after = self._exceeded(key, m)
            if after and not before:
                _emit(self.db, "usage.limit.reached", {
                    "key_id": key_id, "limit": after, "period_start": m.start[:10],
                    "usage": {"requests": m.requests, "tokens": m.tokens,
                              "cost": round(m.cost, 6)},
                    "limits": self.quota_of(key)})


def _emit(db, event: str, data: dict) -> None:
    """Send a webhook event; a failure is logged, never raised into the request that
    triggered it."""
    from llmp.services import webhooks  # not at the top: webhooks -> keys -> limits

    try:
        webhooks.emit(db, event, data)
    except Exception:
        log.exception("emitting webhook event %s failed", event)
