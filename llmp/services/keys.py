"""API keys: creation (secret shown once), authentication, permissions, revocation, bootstrap.

A key is `sk-` + 40 random base62 characters. Only its sha256 and a short display prefix
(`sk-AbCd`) are stored. Permissions (the `admin` permission implies every other):

    inference          POST /v1/completions, /v1/chat/completions
    models.read        GET /v1/models, /v1/models/{id}
    files.read         GET /v1/files, /v1/files/{id}, /v1/files/{id}/content
    files.write        POST /v1/files, DELETE /v1/files/{id}
    batches.read       GET /v1/batches, /v1/batches/{id}
    batches.write      POST /v1/batches, /v1/batches/{id}/cancel
    fine_tuning.read   GET /v1/fine-tuning/jobs...
    fine_tuning.write  POST /v1/fine-tuning/jobs, .../cancel
    moderation         POST /v1/moderations
    usage.read         GET /v1/usage, /v1/usage/billing (own key; admin: every key)
    webhooks           manage /v1/webhooks
    admin              all of the above, plus creating keys and listing/revoking every key

Any key lists (GET /v1/auth/api-keys) and may revoke itself.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from llmp.db import keys as db_keys
from llmp.db.lists import found
from llmp.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from llmp.ids import new_id, random_base62
from llmp.protocol.base import parse
from llmp.protocol.resources import KEY_PERMISSIONS, TIER_NAMES, CreateKeyRequest
from llmp.services import timefmt
from llmp.services.limits import TIERS, Limiter

PERMISSIONS: dict[str, str] = {
    "inference": "text and chat completions",
    "models.read": "list and read models",
    "files.read": "list, read and download files",
    "files.write": "upload and delete files",
    "batches.read": "list and read batches",
    "batches.write": "create and cancel batches",
    "fine_tuning.read": "list and read fine-tuning jobs",
    "fine_tuning.write": "create and cancel fine-tuning jobs",
    "moderation": "classify text",
    "usage.read": "read usage and billing",
    "webhooks": "manage webhooks",
    "admin": "everything, including API key management",
}
assert tuple(PERMISSIONS) == KEY_PERMISSIONS and tuple(TIERS) == TIER_NAMES, \
    "llmp.protocol.resources lists the same permissions and tiers"
ADMIN = "admin"
DEFAULT_PERMISSIONS = ["inference", "models.read"]
DEFAULT_TIER = "pro"
SECRET_PREFIX = "sk-"
_QUOTA_FIELDS = ("monthly_budget", "requests_per_month", "tokens_per_month")
#: seconds a key record read for authentication is reused (revocation through this server
#: applies at once: it drops the record; a change made by another process within this time)
AUTH_CACHE_TTL = 2.0
ROTATE_HINT = ("to rotate it, set LLMP_ADMIN_KEY to a new secret (or delete "
               "$LLMP_HOME/admin_key) and restart llmp serve: the new key replaces it")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + random_base62(40)


def has_permission(key: dict, permission: str) -> bool:
    perms = key.get("permissions") or []
    return ADMIN in perms or permission in perms


def is_admin(key: dict) -> bool:
    return ADMIN in (key.get("permissions") or [])


def status(key: dict) -> str:
    if key.get("revoked_at"):
        return "revoked"
    if key.get("expires_at") and key["expires_at"] <= timefmt.iso():
        return "expired"
    return "active"


def public(key: dict) -> dict[str, Any]:
    """A key as the API shows it (never the secret or its hash)."""
    return {
        "id": key["id"],
        "object": "api_key",
        "name": key["name"],
        "prefix": key["prefix"],
        "permissions": key["permissions"],
        "tier": key["tier"],
        # the limits that apply: the key's own, else its tier's
        "rate_limit": dict(zip(("requests_per_minute", "tokens_per_minute"),
                               Limiter.limits_for(key))),
        "limits": {f: key.get(f) for f in _QUOTA_FIELDS},
        "status": status(key),
        "created_at": timefmt.api_iso(key["created_at"]),
        "expires_at": timefmt.api_iso(key.get("expires_at")),
        "last_used_at": timefmt.api_iso(key.get("last_used_at")),
        "revoked_at": timefmt.api_iso(key.get("revoked_at")),
        "moderate_input": bool(key.get("moderate_input")),
    }


def validate_create(body: dict | CreateKeyRequest) -> dict[str, Any]:
    """Check a POST /v1/auth/api-keys body; returns the columns of the new key."""
    req = body if isinstance(body, CreateKeyRequest) else parse(CreateKeyRequest, body)
    perms = req.permissions or list(DEFAULT_PERMISSIONS)
    tier = req.tier or ("enterprise" if ADMIN in perms else DEFAULT_TIER)
    cols: dict[str, Any] = {"name": req.name, "permissions": perms, "tier": tier}
    for part in (req.rate_limit, req.limits):
        if part is not None:
            cols.update(part.model_dump(exclude_none=True))
    if req.expires_at is not None:
        t = timefmt.parse(req.expires_at, param="expires_at")
        if t <= timefmt.now():
            raise InvalidRequestError("'expires_at' is in the past", param="expires_at",
                                      code="invalid_parameter")
        cols["expires_at"] = timefmt.iso(t)
    if req.moderate_input:
        cols["moderate_input"] = 1
    return cols


def create(db, body: dict | CreateKeyRequest) -> dict[str, Any]:
    """Create a key from an API body; the result carries the secret as `api_key` (shown once)."""
    cols = validate_create(body)
    secret = new_secret()
    rec = db_keys.insert(db, {"id": new_id("key"), "key_hash": hash_secret(secret),
                              "prefix": secret[:7], "created_at": timefmt.iso(), **cols})
    return {**public(rec), "api_key": secret}


def visible(caller: dict | None, key_id: str) -> bool:
    """Whether `caller` may see (and revoke) the key `key_id`: an admin key every key,
    another key itself (keys have no user above them: a key is its own user). None: the
    operator (CLI on the home)."""
    return caller is None or is_admin(caller) or caller.get("id") == key_id


def list_keys(db, caller: dict | None = None) -> list[dict]:
    """The keys `caller` may see (every key for an admin key or None)."""
    return [public(k) for k in db_keys.list_all(db) if visible(caller, k["id"])]


def revoke(db, key_id: str, caller: dict | None = None) -> dict:
    key = db_keys.by_id(db, key_id) if visible(caller, key_id) else None
    if key is None:
        raise NotFoundError(f"No API key '{key_id}'", param="key_id", code="key_not_found")
    if key.get("bootstrap"):
        raise PermissionDeniedError(
            f"The bootstrap admin key cannot be revoked or deleted through the API; "
            f"{ROTATE_HINT}", param="key_id", code="bootstrap_key")
    db_keys.revoke(db, key_id, timefmt.iso())
    forget(key_id)
    return public(found(db_keys.by_id(db, key_id)))


# -- authentication -----------------------------------------------------------------------

#: db -> {key hash: (record, monotonic time read)}
_auth_cache: weakref.WeakKeyDictionary[Any, dict[str, tuple[dict, float]]] = (
    weakref.WeakKeyDictionary())
_auth_lock = threading.Lock()


def forget(key_id: str) -> None:
    """Drop a key's cached record (after a revocation) so the next request reads it again."""
    with _auth_lock:
        for cache in _auth_cache.values():
            for h in [h for h, (rec, _) in cache.items() if rec["id"] == key_id]:
                del cache[h]


def _lookup(db, key_hash: str) -> dict | None:
    """The key record of a hash, from a short-lived cache (AUTH_CACHE_TTL)."""
    now = time.monotonic()
    with _auth_lock:
        cache = _auth_cache.setdefault(db, {})
        hit = cache.get(key_hash)
        if hit is not None and now - hit[1] < AUTH_CACHE_TTL:
            return dict(hit[0])
    key = db_keys.by_hash(db, key_hash)
    if key is not None:
        with _auth_lock:
            if len(cache) > 10_000:
                cache.clear()
            cache[key_hash] = (key, now)
        return dict(key)
    return None


def current(db, key: dict) -> dict | None:
    """The key's record as it is now (cached briefly, like authentication)."""
    return _lookup(db, key["key_hash"]) if key.get("key_hash") else db_keys.by_id(db, key["id"])


def authenticate(db, secret: str | None) -> dict:
    """The key record for a secret; AuthenticationError when missing/invalid/expired/revoked."""
    if not secret:
        raise AuthenticationError(
            "Missing API key: send 'Authorization: Bearer sk-...'", code="missing_api_key")
    if len(secret) > 512:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    key = _lookup(db, hash_secret(secret))
    if key is None:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    st = status(key)
    if st == "revoked":
        raise AuthenticationError("This API key has been revoked", code="api_key_revoked")
    if st == "expired":
        raise AuthenticationError("This API key has expired", code="api_key_expired")
    now = timefmt.iso()
    if (key.get("last_used_at") or "")[:19] != now[:19]:  # at most one write per key per second
        db_keys.touch(db, key["id"], now)
        key["last_used_at"] = now
        with _auth_lock:
            hit = _auth_cache.get(db, {}).get(key["key_hash"])
            if hit is not None:
                hit[0]["last_used_at"] = now
    return key


def ensure_admin(db, settings) -> str | None:
    """Bootstrap the admin key. `settings.admin_key` (LLMP_ADMIN_KEY) is registered when set
    (and restored when it was revoked or changed before this protection existed); otherwise
    the key saved at `settings.admin_key_path` is kept, or a new one is made and saved there
    (mode 0600). A new bootstrap key replaces the previous one, which is revoked (that is
    how the operator rotates it). Returns the secret only when it was just made (print it
    once)."""
    if settings.admin_key:
        key = db_keys.by_hash(db, hash_secret(settings.admin_key))
        if key is None:
            key = db_keys.insert(db, {"id": new_id("key"), "name": "admin (LLMP_ADMIN_KEY)",
                                      "key_hash": hash_secret(settings.admin_key),
                                      "prefix": settings.admin_key[:7], "permissions": [ADMIN],
                                      "tier": "enterprise", "created_at": timefmt.iso()})
        _make_bootstrap(db, key["id"])
        return None
    path: Path = settings.admin_key_path
    if path.exists():
        key = db_keys.by_hash(db, hash_secret(path.read_text().strip()))
        if key is not None and status(key) == "active" and is_admin(key):
            if not key.get("bootstrap"):
                _make_bootstrap(db, key["id"])
            return None
    secret = create(db, {"name": "admin", "permissions": [ADMIN]})["api_key"]
    _make_bootstrap(db, found(db_keys.by_hash(db, hash_secret(secret)))["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return secret


def _make_bootstrap(db, key_id: str) -> None:
    """`key_id` becomes the bootstrap admin key; the previous one (a rotation) is revoked."""
    now = timefmt.iso()
    for k in db_keys.list_all(db, include_revoked=False):
        if k.get("bootstrap") and k["id"] != key_id:
            db_keys.revoke(db, k["id"], now)
            forget(k["id"])
    db_keys.restore_bootstrap(db, key_id)
    forget(key_id)
