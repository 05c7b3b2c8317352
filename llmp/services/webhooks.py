"""Webhooks: endpoints, events, Standard Webhooks signatures and persisted, retried deliveries.

Others publish events on the app's bus (`llmp.events`); `subscribe(bus, db, wake=...)` turns
each public one into one delivery row per subscribed endpoint, stored at once (so a restart
loses nothing), and the `Deliverer` running in the server sends it, retrying failures with
exponential backoff.

Signing follows Standard Webhooks (https://www.standardwebhooks.com):
`webhook-id` (the event id, the same on every retry), `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A `whsec_<base64>`
secret signs with its base64-decoded bytes, as the standard defines; any other secret string
signs with its UTF-8 bytes.

Who receives what: an endpoint made by an admin key receives every key's events; an endpoint
made by another key receives only the events of that key (a batch it owns, its own limits).

Where deliveries may go: a URL is checked when it is registered (http/https, a host that
IDNA-encodes, a valid port) and every address it resolves to is checked again when a delivery
is sent (after DNS, so a name that later resolves to an internal address is still refused; no
redirects are followed). By default loopback, private, link-local, shared (CGNAT), multicast
and reserved addresses are refused; the operator allows them with `webhook_allow_private =
true` in llmp.toml (or LLMP_WEBHOOK_ALLOW_PRIVATE=1), e.g. for a receiver on the same host.
The cloud metadata addresses (169.254.169.254, fd00:ec2::254) are never allowed. A delivery
that fails for any reason (refused address, DNS, TLS, timeout, a malformed URL) fails that
attempt, is recorded and retried; it never stops the deliverer, which is supervised anyway.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from sqlite_utils import Database

from llmp.db import webhooks as webhooks_db
from llmp.db import writer as db_writer
from llmp.errors import InvalidRequestError, NotFoundError
from llmp.events import Bus, Event
from llmp.ids import new_id
from llmp.logs import event
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
    "fine_tuning.job.succeeded",
    "fine_tuning.job.cancelled",
    "usage.limit.reached",
    # the spec lists it, so endpoints may subscribe to it; llmp takes no payments itself, so
    # it never fires locally (a billing integration in front of llmp would emit it)
    "payment.failed",
)
TEST_EVENT = "webhook.test"  # sent by POST /v1/webhooks/{id}/test, whatever the subscription
SECRET_PREFIX = "whsec_"
MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 1.0  # retry n waits BACKOFF_BASE_S * 2**(n-1), at most BACKOFF_MAX_S
BACKOFF_MAX_S = 3600.0
SEND_TIMEOUT_S = 15.0
SIGNATURE_TOLERANCE_S = 300
MAX_URL_LENGTH = 2048
MAX_SECRET_LENGTH = 256
#: never a delivery target, whatever the settings (cloud instance metadata services)
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})
RESTART_DELAY_S = 1.0  # the deliverer's pause before it restarts after an unexpected error


# -- where deliveries may go -------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why a delivery may not go to `ip` (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if allow_private:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast \
            or ip.is_unspecified or ip.is_reserved \
            or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_V4):
        return (f"{ip} is a loopback, private, link-local or reserved address (allowed only "
                "with webhook_allow_private = true in llmp.toml)")
    return None


_SHARED_V4 = ipaddress.ip_network("100.64.0.0/10")


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: Any, *, allow_private: bool) -> str:
    """Validate a webhook URL at registration; returns it. InvalidRequestError (400) when it
    is not an http(s) URL with an IDNA-encodable host and a valid port, or when its host is an
    address (or a name such as localhost) that deliveries may not reach."""
    def bad(why: str) -> InvalidRequestError:
        return InvalidRequestError(f"Invalid 'url': {why}", param="url", code="invalid_url")

    if not isinstance(url, str) or not url:
        raise bad("expected an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise bad("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise bad(f"not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise bad("expected an http:// or https:// URL with a host")
    if port is not None and not 0 < port < 65536:
        raise bad(f"port {port} is out of range")
    ip = _ip(host)
    if ip is None:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise bad(f"the host {host!r} is not a valid domain name") from None
        if len(ascii_host) > 253 or not all(
                0 < len(label) <= 63 for label in ascii_host.rstrip(".").split(".")):
            raise bad(f"the host {host!r} is not a valid domain name")
        name = ascii_host.rstrip(".").lower()
        if name in METADATA_HOSTS:
            raise bad(f"{host} is a cloud metadata host")
        if not allow_private and (name == "localhost" or name.endswith(".localhost")):
            raise bad(f"{host} is a loopback host (allowed only with webhook_allow_private = "
                      "true in llmp.toml)")
    else:
        why = address_refusal(ip, allow_private=allow_private)
        if why:
            raise bad(why)
    return url


class PolicyResolver(AbstractResolver):
    """Resolves a webhook host and keeps only the addresses deliveries may reach (so a name
    that resolves to an internal address is refused after DNS, not only at registration)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed, why = [], None
        for r in results:
            ip = _ip(r["host"])
            reason = "not an IP address" if ip is None else \
                address_refusal(ip, allow_private=self.allow_private)
            if reason is None:
                allowed.append(r)
            else:
                why = reason
        if not allowed:
            raise OSError(f"{host} resolves to no address deliveries may reach ({why})")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


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


def create(db: Database, key: dict, *, url: Any, events: Any, secret: Any = None,
           allow_private: bool = False) -> dict:
    """Register an endpoint; the response carries the secret (made when none is given).
    `allow_private`: the operator's `webhook_allow_private` setting (see the module doc)."""
    url = check_url(url, allow_private=allow_private)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequestError(f"Invalid 'events': expected a non-empty list of: "
                                  f"{', '.join(EVENTS)}", param="events", code="invalid_events")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise InvalidRequestError(f"Unknown event(s) {', '.join(unknown)}; expected: "
                                  f"{', '.join(EVENTS)}", param="events", code="invalid_events")
    if secret is not None and (not isinstance(secret, str) or not secret
                               or len(secret) > MAX_SECRET_LENGTH):
        raise InvalidRequestError(f"Invalid 'secret': expected a non-empty string of at most "
                                  f"{MAX_SECRET_LENGTH} characters", param="secret",
                                  code="invalid_parameter")
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
            "last_error": d["last_error"],
            # stored as a float (the deliverer's schedule); shown as whole seconds, as every
            # other timestamp of the API (rounded up: no retry happens before it)
            "next_attempt_at": None if d["next_attempt_at"] is None
            else math.ceil(d["next_attempt_at"]),
            "created_at": d["created_at"], "delivered_at": d["delivered_at"]}


def deliveries(db: Database, key: dict, webhook_id: str, *, after: str | None = None,
               limit: int = 20) -> dict:
    _get(db, key, webhook_id)
    rows, more = webhooks_db.deliveries(db, webhook_id, after=after, limit=check_limit(limit, 100))
    return list_object([_delivery_api(r) for r in rows], more)


# -- events ------------------------------------------------------------------------------------

def _payload(event: Event) -> str:
    body = {"id": event.id, "object": "event", "type": event.type,
            "created_at": event.created_at, "data": event.data}
    return json.dumps(body, separators=(",", ":"), default=str)


def _enqueue(db: Database, endpoints: list[dict], event: Event,
             wake: Callable[[], None] | None) -> None:
    if not endpoints:
        return
    payload = _payload(event)
    now = time.time()
    stored = webhooks_db.add_deliveries(db, [{
        "id": new_id("whd"), "webhook_id": w["id"], "event_id": event.id, "event": event.type,
        "payload": payload, "status": "pending", "attempts": 0, "next_attempt_at": now,
        "created_at": int(now)} for w in endpoints])
    if wake is None:
        return
    if stored is None:
        wake()
    else:  # written off the loop: wake the deliverer once it is committed
        stored.add_done_callback(lambda _: wake())


def deliver(db: Database, event: Event, *, wake: Callable[[], None] | None = None) -> None:
    """Store one delivery of `event` (one of EVENTS) per endpoint subscribed to it (see the
    module doc for who receives what: `event.key_id`, default `data["key_id"]`), then call
    `wake` (the deliverer's) once they are written."""
    if event.type not in EVENTS:
        raise ValueError(f"unknown webhook event {event.type!r}")
    key_id = event.key_id or event.data.get("key_id")
    _enqueue(db, webhooks_db.subscribers(db, event.type, key_id=key_id), event, wake)


def subscribe(bus: Bus, db: Database, *, wake: Callable[[], None] | None = None
              ) -> Callable[[], None]:
    """Turn the public events published on the app's `bus` into deliveries; returns the
    unsubscribe function."""
    return bus.subscribe(lambda event: deliver(db, event, wake=wake), types=EVENTS)


def send_test(db: Database, key: dict, webhook_id: str, *,
              wake: Callable[[], None] | None = None) -> dict:
    """Queue a `webhook.test` event to one endpoint; returns {event_id}."""
    w = _get(db, key, webhook_id)
    event = Event(TEST_EVENT, {"webhook_id": w["id"]}, key_id=key["id"])
    _enqueue(db, [w], event, wake)
    return {"object": "webhook.test", "webhook_id": w["id"], "event_id": event.id}


def backoff(attempts: int, base: float = BACKOFF_BASE_S) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    return min(base * 2 ** (attempts - 1), BACKOFF_MAX_S)


class Deliverer:
    """Sends due deliveries; run it as a task (`start`/`stop`) in the process that serves.
    The task is supervised: an unexpected error is logged and the loop starts again after
    RESTART_DELAY_S (a delivery's own errors only fail that attempt)."""

    def __init__(self, db: Database, *, backoff_base: float = BACKOFF_BASE_S,
                 max_attempts: int = MAX_ATTEMPTS, idle_poll_s: float = 30.0,
                 allow_private: bool = False):
        self.db = db
        self.backoff_base = backoff_base
        self.max_attempts = max_attempts
        self.idle_poll_s = idle_poll_s
        self.allow_private = allow_private
        self.restarts = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def wake(self) -> None:
        """Look for due deliveries now (from any thread; a no-op until started)."""
        loop = self._loop
        if loop is not None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._supervise(), name="webhook-deliverer")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                log.exception("the webhook deliverer stopped on an error; restarting in %.0f s",
                              RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.allow_private),
                                         limit=32)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
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

    def _refusal(self, url: str) -> str | None:
        """Why a stored URL may not be reached now (checked again at every attempt: the
        settings may have changed since it was registered)."""
        try:
            check_url(url, allow_private=self.allow_private)
        except InvalidRequestError as e:
            return e.message.removeprefix("Invalid 'url': ")
        return None

    async def _send(self, session: aiohttp.ClientSession, d: dict) -> None:
        """One attempt: whatever goes wrong fails this attempt (recorded, retried later)."""
        body = d["payload"].encode()
        attempts = d["attempts"] + 1
        code: int | None = None
        error: str | None = self._refusal(d["url"])
        if error is None:
            try:
                async with session.post(d["url"], data=body, allow_redirects=False,
                                        headers=signed_headers(d["secret"], d["event_id"],
                                                               body)) as r:
                    code = r.status
                    if not 200 <= r.status < 300:
                        error = f"HTTP {r.status}"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure is this attempt's
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        now = time.time()
        # a failure to record propagates: the supervisor restarts the loop after a pause
        # the host only: a URL's path or query may carry a token
        host = urllib.parse.urlsplit(d["url"]).hostname
        if error is None:
            await db_writer.write(self.db, webhooks_db.record_attempt, d["id"],
                                  status="delivered", attempts=attempts, next_attempt_at=None,
                                  status_code=code, error=None, delivered_at=int(now))
            event(log, "webhook.delivered", f"webhook {d['event']} delivered to {host}",
                  delivery=d["id"], event_id=d["event_id"], status=code, attempt=attempts)
            return
        final = attempts >= self.max_attempts
        event(log, "webhook.failed", f"webhook {d['event']} to {host} failed"
              + (", giving up" if final else ", will retry"), logging.WARNING,
              delivery=d["id"], event_id=d["event_id"], attempt=attempts, error=error[:200])
        await db_writer.write(
            self.db, webhooks_db.record_attempt, d["id"],
            status="failed" if final else "pending", attempts=attempts,
            next_attempt_at=None if final else now + backoff(attempts, self.backoff_base),
            status_code=code, error=error[:500], delivered_at=None)
