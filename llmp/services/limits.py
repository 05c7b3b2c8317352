"""Per-key rate limits (token buckets, in memory) and monthly quotas.

Rate limits: each key has a requests-per-minute and a tokens-per-minute bucket. The limits
are the key's own `rate_limit` when set, else its tier's (the spec's tiers: free 20 RPM /
40,000 TPM, pro 3,500 RPM / 90,000 TPM; enterprise is custom: the key's own limits, by
default 10,000 RPM / 10,000,000 TPM). A request takes one request token when it is
authenticated; an inference request also reserves `prompt + max_tokens` tokens (max_tokens
capped at the context) before it runs, and the reservation is settled against the real count
when it ends. A request that could never fit in the bucket (a prompt, or prompt + an explicit
max_tokens, larger than the tokens-per-minute limit) gets a 429 saying so, without
Retry-After. Buckets refill continuously; the `X-RateLimit-Reset-*` headers give the unix time
at which the bucket is full again, as the spec's example does.

Quotas: a key may carry monthly limits (`monthly_budget` in the model prices' currency,
`requests_per_month`, `tokens_per_month`). They are atomic: `admit` reserves one request,
the request's token estimate and its cost estimate against the month at admission, under the
same lock as the buckets, and `settle` replaces the reservation by what the request really
used. So concurrent requests can never take a key past a quota: a request whose reservation
does not fit in what is left gets 429 `quota_exceeded_error` (until the next calendar month,
UTC). Only billable requests count: answered ones and streams the client dropped (refusals are
recorded with zero tokens and do not count). Crossing a quota emits `usage.limit.reached`.
The month's counters are read from the database once per key and month, then kept in memory
from every usage row this process records (the server is the only writer of usage).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmp.db import keys as db_keys
from llmp.db import usage as db_usage
from llmp.errors import QuotaExceededError, RateLimitError
from llmp.events import USAGE_LIMIT_REACHED, USAGE_RECORDED, Bus, Event
from llmp.services import timefmt

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
    requests: int  # billable requests recorded this month
    tokens: int
    cost: float
    # reserved by requests admitted and not yet settled
    r_requests: int = 0
    r_tokens: int = 0
    r_cost: float = 0.0


@dataclass
class Admission:
    """What `Limiter.admit` reserved for one request; hand it to `Limiter.settle_admission`
    once (with what the request really used)."""
    key: dict
    tokens: int = 0  # in the tokens-per-minute bucket
    month: str | None = None  # the month of the quota reservation (None: the key has none)
    month_tokens: int = 0
    month_cost: float = 0.0
    month_requests: int = 1
    settled: bool = False


def billable(row: dict) -> bool:
    """Whether a usage row counts against quotas: answered (status < 400) or dropped by the
    client after work was done (499)."""
    status = row.get("status") or 200
    return status < 400 or status == 499


class Limiter:
    """Rate limits and quotas of every key, for one server process."""

    def __init__(self, db, clock: Callable[[], float] = time.time, *, bus: Bus | None = None):
        """`bus`: the app's event bus; the limiter counts its `usage.recorded` rows against
        monthly quotas and publishes `usage.limit.reached` on it (None: neither)."""
        self.db = db
        self.bus = bus
        self.clock = clock
        self._buckets: dict[str, tuple[tuple[int, int], Bucket, Bucket]] = {}
        self._months: dict[str, _Month] = {}
        self._keys: dict[str, dict] = {}  # the latest record seen of each key with a quota
        self._notified: set[tuple[str, str, str]] = set()  # (key, month, limit) announced
        self._lock = threading.Lock()
        if bus is not None:
            bus.subscribe(self._on_recorded, types=[USAGE_RECORDED])

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

    # -- admission (rate limits and quotas together) ----------------------------------
    def admit(self, key: dict, tokens: int, *, cost: float = 0.0,
              min_tokens: int | None = None, per_minute: bool = True, requests: int = 1,
              reserving: str = "this request may use up to {tokens} tokens (prompt + "
              "max_tokens)",
              fit: str = "lower max_tokens to fit") -> Admission:
        """Reserve what one request may use, atomically: a month's request, `tokens` and
        `cost` against the key's quotas (QuotaExceededError when they do not fit), and
        `tokens` in its tokens-per-minute bucket (RateLimitError: with Retry-After when the
        bucket will have room, without when the request is larger than the bucket).
        `min_tokens`: when the request did not set max_tokens, its prompt; the bucket then
        reserves at most its size instead of refusing. `per_minute=False`: the quotas only,
        not the tokens-per-minute bucket (a fine-tuning job's trained tokens are spent by its
        worker over minutes or hours, not by the request that creates it). `requests`: how
        many of the month's requests to reserve (a fine-tuning job also reserves the key's
        unfinished jobs). `reserving`, `fit`: the wording of a token or budget refusal (what is
        reserved, with {tokens} or {cost}; how to make it fit)."""
        has_quota = any(v is not None for v in self.quota_of(key).values())
        tokens = max(0, int(tokens))
        refused: tuple[str, str, _Month] | None = None
        with self._lock:
            now = self.clock()
            m = None
            if has_quota:
                self._keys[key["id"]] = key
                m = self._month(key["id"])[0]
                refusal = self._quota_refusal(key, m, tokens, cost, requests, reserving,
                                              fit)
                if refusal is not None:
                    refused = (*refusal, m)
            if refused is None:  # reserved under the same lock as the check: atomic
                n = self._bucket_tokens(key, tokens, min_tokens, now) if per_minute else 0
                if m is not None:
                    m.r_requests += requests
                    m.r_tokens += tokens
                    m.r_cost += cost
                return Admission(key, n, m.start if m is not None else None, tokens, cost,
                                 requests)
        what, message, month = refused
        self._limit_reached(key, what, month)
        raise self._quota_error(message)

    def _bucket_tokens(self, key: dict, n: int, min_tokens: int | None, now: float) -> int:
        req, tok = self._pair(key, now)
        if n > tok.capacity:
            if min_tokens is None or min_tokens > tok.capacity:
                need = n if min_tokens is None else min_tokens
                raise RateLimitError(
                    f"This request needs up to {need} tokens (prompt + max_tokens), more than "
                    f"this key's limit of {tok.capacity} tokens per minute: it can never fit. "
                    "Lower max_tokens or shorten the prompt.", code="request_too_large",
                    headers=self._state(req, tok, now).headers())
            n = tok.capacity
        if tok.level < n:
            raise self._denied("tokens", tok.capacity, tok.wait(n), self._state(req, tok, now))
        tok.level -= n
        return n

    def settle_admission(self, adm: Admission, used_tokens: int) -> None:
        """Give back what `adm` reserved; the month's real use arrives with the usage row
        (`settle`), recorded in the same step by the caller, so nothing is counted twice or
        missed in between."""
        if adm.settled:
            return
        adm.settled = True
        with self._lock:
            if adm.tokens or used_tokens:
                _, tok = self._pair(adm.key, self.clock())
                tok.level = min(tok.capacity, tok.level + adm.tokens - used_tokens)
            if adm.month is not None:
                m = self._months.get(adm.key["id"])
                if m is not None and m.start == adm.month:
                    m.r_requests = max(0, m.r_requests - adm.month_requests)
                    m.r_tokens = max(0, m.r_tokens - adm.month_tokens)
                    m.r_cost = max(0.0, m.r_cost - adm.month_cost)

    def reserve_tokens(self, key: dict, n: int) -> int:
        """Reserve `n` tokens in the bucket only (no quota); returns the amount reserved."""
        with self._lock:
            return self._bucket_tokens(key, max(0, int(n)), 0, self.clock())

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
        """The key's counters this month, and whether they were just read from the database."""
        start = timefmt.month_start()
        start_hour = timefmt.iso(start)[:13]
        m = self._months.get(key_id)
        if m is not None and m.start == start_hour:
            return m, False
        rows = db_usage.summary(self.db, start.date().isoformat(), "9999-12-31", group=[],
                                key_id=key_id)
        r = rows[0] if rows else {}
        m = _Month(start_hour, (r.get("requests") or 0) - (r.get("errors") or 0),
                   (r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0),
                   r.get("cost") or 0.0)
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

    def _quota_error(self, message: str) -> QuotaExceededError:
        start = timefmt.next_month_start()
        return QuotaExceededError(
            f"{message}; it resets on {start.date().isoformat()}.",
            headers={"Retry-After": str(max(1, int(start.timestamp() - self.clock())))})

    def _quota_refusal(self, key: dict, m: _Month, tokens: int, cost: float, requests: int = 1,
                       reserving: str = "this request may use up to {tokens} tokens "
                       "(prompt + max_tokens)",
                       fit: str = "lower max_tokens to fit") -> tuple[str, str] | None:
        """(the limit, the message) when a request reserving `requests`, `tokens` and `cost`
        does not fit in what the key has left this month; None when it does."""
        what = self._exceeded(key, m)
        if what:
            return what, f"Quota exceeded: this key has used its {what}"
        q = self.quota_of(key)
        limit = q["requests_per_month"]
        if limit is not None and m.requests + m.r_requests + requests > limit:
            pending = f" and {requests - 1} unfinished fine-tuning job(s)" if requests > 1 else ""
            return (f"monthly request quota of {limit}",
                    f"Quota exceeded: this key's monthly request quota of {limit} is taken by "
                    f"{m.requests} requests made and {m.r_requests} in progress{pending}")
        limit = q["tokens_per_month"]
        if limit is not None and m.tokens + m.r_tokens + tokens > limit:
            left = max(0, limit - m.tokens - m.r_tokens)
            return (f"monthly token quota of {limit}",
                    f"Quota exceeded: {reserving.format(tokens=tokens)} and this "
                    f"key has {left} of its monthly token quota of {limit} left ({fit})")
        limit = q["monthly_budget"]
        if limit is not None and m.cost + m.r_cost + cost > limit:
            left = max(0.0, limit - m.cost - m.r_cost)
            return (f"monthly budget of {limit}",
                    f"Quota exceeded: {reserving.format(tokens=tokens)}, costing "
                    f"up to {cost:.6g}, and this key has {left:.6g} of its monthly budget of "
                    f"{limit} left ({fit})")
        return None

    def _limit_reached(self, key: dict, what: str, m: _Month) -> None:
        """Emit `usage.limit.reached` the first time this month a quota is reached or
        refuses a request of the key (once per key, quota and month)."""
        mark = (key["id"], m.start, what)
        with self._lock:
            if mark in self._notified:
                return
            self._notified.add(mark)
            usage = {"requests": m.requests, "tokens": m.tokens, "cost": round(m.cost, 6)}
        if self.bus is not None:  # a handler's failure is logged by the bus, never raised here
            self.bus.publish(USAGE_LIMIT_REACHED, {
                "key_id": key["id"], "limit": what, "period_start": m.start[:10],
                "usage": usage, "limits": self.quota_of(key)}, key_id=key["id"])

    def check_quota(self, key: dict) -> None:
        """QuotaExceededError when the key has used up a monthly quota (no reservation)."""
        if not any(v is not None for v in self.quota_of(key).values()):
            return
        with self._lock:
            self._keys[key["id"]] = key
            m = self._month(key["id"])[0]
            what = self._exceeded(key, m)
        if what:
            self._limit_reached(key, what, m)
            raise self._quota_error(f"Quota exceeded: this key has used its {what}")

    def _on_recorded(self, event: Event) -> None:
        self.settle(event.data["rows"])

    def settle(self, rows: list[dict]) -> None:
        """Count freshly recorded usage rows (published as `usage.recorded` on the app's bus
        by every writer: HTTP requests and the batch runner) against their keys' months;
        emits `usage.limit.reached` for each key these rows take over a quota."""
        month = timefmt.iso(timefmt.month_start())[:13]
        added: dict[str, list] = {}
        for r in rows:
            if r["key_id"] and r["created_at"][:13] >= month and billable(r):
                a = added.setdefault(r["key_id"], [0, 0, 0.0])
                a[0] += 1
                a[1] += (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
                a[2] += r["cost"] or 0.0
        for key_id, (requests, tokens, cost) in added.items():
            key = self._keys.get(key_id) or db_keys.by_id(self.db, key_id)
            if key is None or not any(v is not None for v in self.quota_of(key).values()):
                continue
            with self._lock:
                # rows reach the listeners before they are written (`usage.record_many`), so
                # a month just read from the database does not hold them yet
                m = self._month(key_id)[0]
                before = self._exceeded(key, m)
                m.requests += requests
                m.tokens += tokens
                m.cost += cost
                after = self._exceeded(key, m)
            if after and not before:
                self._limit_reached(key, after, m)

