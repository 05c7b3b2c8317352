"""API keys over HTTP: create (secret once), list, revoke; the permission matrix; expiry;
revocation on the next request; last_used_at; bootstrap of the admin key; `llmp keys`."""
from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from llmp.config import Settings
from llmp.db import keys as db_keys
from llmp.db import open_home
from llmp.server.state import WRITER
from llmp.services import keys as keys_service

# one protected route per permission (method, path, body)
ROUTES = {
    "inference": ("POST", "/v1/chat/completions",
                  {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    "models.read": ("GET", "/v1/models", None),
    "usage.read": ("GET", "/v1/usage", None),
    "admin": ("POST", "/v1/auth/api-keys", {"name": "made by the matrix"}),
}


def test_create_list_revoke(server):
    st, _, key = server.request("POST", "/v1/auth/api-keys", json={
        "name": "My Application Key", "permissions": ["inference", "models.read"],
        "rate_limit": {"requests_per_minute": 1000, "tokens_per_minute": 100000},
        "expires_at": "2999-12-31T23:59:59Z"})
    assert st == 200 and key["id"].startswith("key_") and key["api_key"].startswith("sk-")
    assert len(key["api_key"]) >= 35 and key["rate_limit"]["requests_per_minute"] == 1000
    assert key["expires_at"] == "2999-12-31T23:59:59Z" and key["created_at"].endswith("Z")
    stored = db_keys.by_id(server.db, key["id"])
    assert stored["key_hash"] != key["api_key"] and key["api_key"] not in str(stored)
    listed = server.request("GET", "/v1/auth/api-keys")[2]["data"]
    mine = next(k for k in listed if k["id"] == key["id"])
    assert "api_key" not in mine and mine["prefix"] == key["api_key"][:7]
    assert server.request("GET", "/v1/models", key=key["api_key"])[0] == 200
    assert server.request("GET", "/v1/auth/api-keys")[2]["data"]
    st, _, revoked = server.request("DELETE", f"/v1/auth/api-keys/{key['id']}")
    assert st == 200 and revoked["status"] == "revoked"
    st, _, body = server.request("GET", "/v1/models", key=key["api_key"])
    assert st == 401 and body["error"]["code"] == "api_key_revoked"
    assert server.request("DELETE", "/v1/auth/api-keys/key_nope")[0] == 404


def test_bad_create_bodies(server):
    for body, param in (({"permissions": ["inference"]}, "name"),
                        ({"name": "x", "permissions": ["fly"]}, "permissions"),
                        ({"name": "x", "expires_at": "2001-01-01"}, "expires_at"),
                        ({"name": "x", "rate_limit": {"requests_per_minute": -1}},
                         "rate_limit.requests_per_minute")):
        st, _, err = server.request("POST", "/v1/auth/api-keys", json=body)
        assert st == 400 and err["error"]["param"] == param
    # a name of the wrong type is invalid, not "missing"
    st, _, err = server.request("POST", "/v1/auth/api-keys", json={"name": 5})
    assert st == 400 and err["error"]["param"] == "name"
    assert err["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("perm", sorted(ROUTES))
def test_permission_matrix(server, perm):
    key = server.make_key([perm])
    for route, (method, path, body) in ROUTES.items():
        st, _, _ = server.request(method, path, key=key, json=body)
        allowed = perm == "admin" or route == perm
        assert st == (200 if allowed else 403), (perm, route, st)


def test_only_admin_manages_keys(server):
    key = server.make_key(["inference", "models.read", "usage.read"])
    st, _, body = server.request("POST", "/v1/auth/api-keys", key=key, json={"name": "x"})
    assert st == 403 and body["error"]["type"] == "permission_error"


def test_expiry_and_last_used(server):
    secret = server.make_key(["models.read"])
    rec = keys_service.authenticate(server.db, secret)
    assert server.request("GET", "/v1/models", key=secret)[0] == 200
    server.app[WRITER].flush()  # last_used_at is written off the event loop
    assert db_keys.by_id(server.db, rec["id"])["last_used_at"]
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    server.db.execute("update api_keys set expires_at = ? where id = ?", [past, rec["id"]])
    keys_service.forget(rec["id"])  # a change behind the server's back: drop its cached record
    st, _, body = server.request("GET", "/v1/models", key=secret)
    assert st == 401 and body["error"]["code"] == "api_key_expired"


def test_admin_bootstrap(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "home").ensure_dirs()
    db = open_home(settings)
    secret = keys_service.ensure_admin(db, settings)
    assert secret and secret.startswith("sk-")
    assert settings.admin_key_path.read_text().strip() == secret
    assert stat.S_IMODE(os.stat(settings.admin_key_path).st_mode) == 0o600
    assert keys_service.ensure_admin(db, settings) is None  # kept, not remade
    env = Settings(home=tmp_path / "home2", admin_key="sk-" + "e" * 40).ensure_dirs()
    db2 = open_home(env)
    assert keys_service.ensure_admin(db2, env) is None
    assert keys_service.is_admin(keys_service.authenticate(db2, env.admin_key))


def test_cli_keys(server, cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    import json
    r = cli("keys", "create", "ci", "-p", "inference", "--rpm", "5", "--json")
    assert r.exit_code == 0, r.stderr
    key = json.loads(r.stdout)
    assert key["api_key"].startswith("sk-") and key["rate_limit"]["requests_per_minute"] == 5
    r = cli("keys", "list")
    assert r.exit_code == 0 and key["id"] in r.stdout
    assert cli("keys", "revoke", key["id"]).exit_code == 0
    r = cli("keys", "revoke", "key_missing")
    assert r.exit_code == 4 and "key_missing" in r.stderr
    monkeypatch.setenv("LLMP_URL", "http://127.0.0.1:9")
    r = cli("keys", "list")
    assert r.exit_code != 0 and "llmp serve" in r.stderr


def test_the_bootstrap_admin_key_cannot_be_revoked(tiny_model_path, tmp_path):
    """The operator's key (LLMP_ADMIN_KEY or admin_key) answers 403 to a revocation, with how
    to rotate it; a restart with the same LLMP_ADMIN_KEY restores it even if it was revoked
    behind the API's back."""
    from conftest import start_server

    secret = "sk-" + "b" * 40
    with start_server(tmp_path / "home", tiny_model_path, admin_key=secret) as srv:
        keys_service.ensure_admin(srv.db, srv.settings)
        kid = keys_service.authenticate(srv.db, secret)["id"]
        st, _, body = srv.request("DELETE", f"/v1/auth/api-keys/{kid}", key=secret)
        assert st == 403 and body["error"]["type"] == "permission_error"
        assert "LLMP_ADMIN_KEY" in body["error"]["message"]
        assert srv.request("GET", "/v1/auth/api-keys", key=secret)[0] == 200
        db_keys.revoke(srv.db, kid, "2020-01-01T00:00:00.000000Z")  # e.g. by an older llmp
        keys_service.ensure_admin(srv.db, srv.settings)  # what `llmp serve` does at start
        assert keys_service.authenticate(srv.db, secret)["id"] == kid
        # rotation: a new LLMP_ADMIN_KEY replaces (and revokes) the previous one
        rotated = srv.settings.replace(admin_key="sk-" + "c" * 40)
        keys_service.ensure_admin(srv.db, rotated)
        st, _, body = srv.request("GET", "/v1/auth/api-keys", key=secret)
        assert st == 401 and body["error"]["code"] == "api_key_revoked"
        assert srv.request("GET", "/v1/auth/api-keys", key=rotated.admin_key)[0] == 200


@pytest.mark.parametrize("body, param", [
    ({"name": "x" * 257}, "name"),
    ({"name": "x", "rate_limit": {"requests_per_minute": 1e30}}, "rate_limit.requests_per_minute"),
    ({"name": "x", "limits": {"tokens_per_month": 10 ** 40}}, "limits.tokens_per_month"),
    ({"name": "x", "limits": {"monthly_budget": float("inf")}}, "limits.monthly_budget"),
    ({"name": "x", "limits": {"monthly_budget": 1e300}}, "limits.monthly_budget"),
])
def test_key_fields_are_bounded(server, body, param):
    import json

    raw = json.dumps(body).replace("Infinity", "1e999").encode()
    st, _, err = server.request("POST", "/v1/auth/api-keys", data=raw,
                                headers={"Content-Type": "application/json"})
    assert st == 400 and err["error"]["param"] == param, err


def test_home_files_are_private(server):
    """llmp.db (with -wal/-shm), files/, adapters/ and uploads are the user's alone."""
    import io

    f = server.openai().files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    home = server.settings.home
    for p in ("llmp.db", "llmp.db-wal", "llmp.db-shm", f"files/{f.id}"):
        assert stat.S_IMODE(os.stat(home / p).st_mode) == 0o600, p
    for d in (home, home / "files", home / "adapters"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    st, _, err = server.request("POST", "/v1/files", data=_multipart("y" * 300 + ".jsonl"),
                                headers={"Content-Type": "multipart/form-data; boundary=XX"})
    assert st == 200 and len(err["filename"]) <= 255  # a filename is capped


def _multipart(filename: str) -> bytes:
    return (b"--XX\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
            + filename.encode() + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n{}\n\r\n"
            b"--XX--\r\n")
