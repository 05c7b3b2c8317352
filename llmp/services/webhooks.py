"""Webhooks: endpoints, events, Standard Webhooks signatures and persisted, retried deliveries.

Others report events with `emit(db, event, data, key_id=...)`: one delivery row per subscribed
endpoint is stored at once (so a restart loses nothing) and the `Deliverer` running in the
server sends it, retrying failures with exponential backoff.

Signing follows Standard Webhooks (https://www.standardwebhooks.com):
`webhook-id` (the event id, the same on every retry), `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A `whsec_<base64>`
secret signs with its base64-decoded bytes, as the standard defines; any other secret string
signs with its UTF-8 bytes.

Who receives what: an endpoint made by an admin key receives every key's events; an endpoint
made by another key receives only the events of that key (a batch it owns, its own limits).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from typing import Any, Callable
from urllib.parse import urlparse

import aiohttp
from sqlite_utils import Database

from llmp.db import webhooks as webhooks_db
from llmp.errors import InvalidRequestError, NotFoundError
from llmp.ids import new_id
from llmp.services import keys
from llmp.services.lists import check_limit, list_object, owner_scope

log = logging.getLogger(__name__)

EVENTS = (
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
    "fine_tuning.job.completed",
    "fine_tuning.job.failed",
    "usage.limit.reached",
)
TEST_EVENT = "webhook.test"  # sent by POST /v1/webhooks/{id}/test, whatever the subscription
SECRET_PREFIX = "whsec_"
MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 1.0  # retry n waits BACKOFF_BASE_S * 2**(n-1), at most BACKOFF_MAX_S
BACKOFF_MAX_S = 3600.0
SEND_TIMEOUT_S = 15.0
SIGNATURE_TOLERANCE_S = 300


# -- signing -----------------------------------------------------------------------------------

def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
            "content-type": "application/json"}


def verify(secret: str, headers: Any, body: bytes, *,
           tolerance: int = SIGNATURE_TOLERANCE_S) -> bool:
    """Check a received webhook's signature (any of the space-separated `v1,` values) and
    that its timestamp is within `tolerance` seconds of now: what a receiver does."""
    try:
        msg_id = headers["webhook-id"]
        ts = int(headers["webhook-timestamp"])
        sigs = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(s, expected) for s in sigs)


# -- endpoints ---------------------------------------------------------------------------------

def _api(w: dict, *, with_secret: bool = False) -> dict:
    out = {"id": w["id"], "object": "webhook_endpoint", "url": w["url"], "events": w["events"],
           "created_at": w["created_at"], "all_keys": w["all_keys"]}
    if with_secret:
        out["secret"] = w["secret"]
    return out


def create(db: Database, key: dict, *, url: Any, events: Any, secret: Any = None) -> dict:
    """Register an endpoint; the response carries the secret (made when none is given)."""
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequestError("Invalid 'url': expected an http:// or https:// URL",
                                  param="url", code="invalid_url")
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequestError(f"Invalid 'events': expected a non-empty list of: "
                                  f"{', '.join(EVENTS)}", param="events", code="invalid_events")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise InvalidRequestError(f"Unknown event(s) {', '.join(unknown)}; expected: "
                                  f"{', '.join(EVENTS)}", param="events", code="invalid_events")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise InvalidRequestError("Invalid 'secret': expected a non-empty string",
                                  param="secret", code="invalid_parameter")
    w = webhooks_db.insert(db, {
        "id": new_id("wh"), "owner_key_id": key["id"], "all_keys": int(keys.is_admin(key)),
        "url": url, "events": list(dict.fromkeys(events)), "secret": secret or new_secret(),
        "created_at": int(time.time())})
    return _api(w, with_secret=True)


def _get(db: Database, key: dict, webhook_id: str) -> dict:
    w = webhooks_db.get(db, webhook_id, owner=owner_scope(key))
    if w is None:
        raise NotFoundError(f"No such webhook: {webhook_id!r}", param="webhook_id",
                            code="webhook_not_found")
    return w


def get(db: Database, key: dict, webhook_id: str) -> dict:
    return _api(_get(db, key, webhook_id))


def list_endpoints(db: Database, key: dict) -> dict:
    return list_object([_api(w) for w in webhooks_db.list_all(db, owner=owner_scope(key))], False)


def delete(db: Database, key: dict, webhook_id: str) -> dict:
    _get(db, key, webhook_id)
    webhooks_db.delete(db, webhook_id)
    return {"id": webhook_id, "object": "webhook_endpoint", "deleted": True}


def _delivery_api(d: dict) -> dict:
    return {"id": d["id"], "object": "webhook.delivery", "webhook_id": d["webhook_id"],
            "event_id": d["event_id"], "event": d["event"], "status": d["status"],
            "attempts": d["attempts"], "last_status_code": d["last_status_code"],
            "last_error": d["last_error"], "next_attempt_at": d["next_attempt_at"],
            "created_at": d["created_at"], "delivered_at": d["delivered_at"]}


def deliveries(db: Database, key: dict, webhook_id: str, *, after: str | None = None,
               limit: int = 20) -> dict:
    _get(db, key, webhook_id)
    rows, more = webhooks_db.deliveries(db, webhook_id, after=after, limit=check_limit(limit, 100))
    return list_object([_delivery_api(r) for r in rows], more)


# -- events ------------------------------------------------------------------------------------

_wakers: set[Callable[[], None]] = set()
_wakers_lock = threading.Lock()


def _payload(event: str, data: dict) -> tuple[str, str]:
    event_id = new_id("evt")
    body = {"id": event_id, "object": "event", "type": event, "created_at": int(time.time()),
            "data": data}
    return event_id, json.dumps(body, separators=(",", ":"), default=str)


def _enqueue(db: Database, endpoints: list[dict], event: str, data: dict) -> str:
    event_id, payload = _payload(event, data)
    now = time.time()
    webhooks_db.add_deliveries(db, [{
        "id": new_id("whd"), "webhook_id": w["id"], "event_id": event_id, "event": event,
        "payload": payload, "status": "pending", "attempts": 0, "next_attempt_at": now,
        "created_at": int(now)} for w in endpoints])
    with _wakers_lock:
        wakers = list(_wakers)
    for wake in wakers:
        wake()
    return event_id


def emit(db: Database, event: str, data: dict, *, key_id: str | None = None) -> str:
    """Report `event` (one of EVENTS) with its `data` object; `key_id` is the key the event
    belongs to (see the module doc; default: `data["key_id"]`, as usage.limit.reached
    carries it). Returns the event id."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    key_id = key_id or data.get("key_id")
    return _enqueue(db, webhooks_db.subscribers(db, event, key_id=key_id), event, data)


def send_test(db: Database, key: dict, webhook_id: str) -> dict:
    """Queue a `webhook.test` event to one endpoint; returns {event_id}."""
    w = _get(db, key, webhook_id)
    event_id = _enqueue(db, [w], TEST_EVENT, {"webhook_id": w["id"]})
    return {"object": "webhook.test", "webhook_id": w["id"], "event_id": event_id}


def backoff(attempts: int, base: float = BACKOFF_BASE_S) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    return min(base * 2 ** (attempts - 1), BACKOFF_MAX_S)


class Deliverer:
    """Sends due deliveries; run it as a task (`start`/`stop`) in the process that serves."""

    def __init__(self, db: Database, *, backoff_base: float = BACKOFF_BASE_S,
                 max_attempts: int = MAX_ATTEMPTS, idle_poll_s: float = 30.0):
        self.db = db
        self.backoff_base = backoff_base
        self.max_attempts = max_attempts
        self.idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._waker: Callable[[], None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._waker = lambda: loop.call_soon_threadsafe(self._wake.set)
        with _wakers_lock:
            _wakers.add(self._waker)
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        with _wakers_lock:
            _wakers.discard(self._waker)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._wake.clear()
                due = webhooks_db.due(self.db, time.time())
                if due:
                    await asyncio.gather(*(self._send(session, d) for d in due))
                    continue
                nxt = webhooks_db.next_due_at(self.db)
                wait = self.idle_poll_s if nxt is None else max(0.0, min(nxt - time.time(),
                                                                        self.idle_poll_s))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _send(self, session: aiohttp.ClientSession, d: dict) -> None:
        body = d["payload"].encode()
        attempts = d["attempts"] + 1
        code: int | None = None
        error: str | None = None
        try:
            async with session.post(d["url"], data=body,
                                    headers=signed_headers(d["secret"], d["event_id"], body)) as r:
                code = r.status
                if not 200 <= r.status < 300:
                    error = f"HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        now = time.time()
        if error is None:
            webhooks_db.record_attempt(self.db, d["id"], status="delivered", attempts=attempts,
                                       next_attempt_at=None, status_code=code, error=None,
                                       delivered_at=int(now))
            return
        final = attempts >= self.max_attempts
        log.info("webhook delivery %s to %s failed (attempt %d): %s", d["id"], d["url"],
                 attempts, error)
        webhooks_db.record_attempt(
            self.db, d["id"], status="failed" if final else "pending", attempts=attempts,
            next_attempt_at=None if final else now + backoff(attempts, self.backoff_base),
            status_code=code, error=error, delivered_at=None)
