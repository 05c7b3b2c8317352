"""Webhooks: endpoints API, Standard Webhooks signatures checked by a real local receiver,
persisted deliveries retried after a 500, and per-key routing of events."""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time

from llmp.server.state import EVENTS
from llmp.services import keys as keys_service
from llmp.services import webhooks

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def standard_signature(secret: str, headers: dict, body: bytes) -> str:
    """Standard Webhooks' reference computation, written out independently of llmp."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") \
        else secret.encode()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def run_batch(client) -> str:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 2}}
    f = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())),
                            purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id


def test_batch_completed_is_signed_and_retried_after_a_500(server, receiver):
    rx = receiver(codes=[500])
    status, _, hook = server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["batch.completed", "batch.failed"], "secret": SECRET})
    assert status == 200, hook
    assert hook["id"].startswith("wh_") and hook["secret"] == SECRET
    batch_id = run_batch(server.openai())
    (h1, b1), (h2, b2) = rx.wait(2)
    assert b1 == b2 and h1["webhook-id"] == h2["webhook-id"]  # the same event, retried
    for h, body in ((h1, b1), (h2, b2)):
        assert h["webhook-signature"] == standard_signature(SECRET, h, body)
        assert webhooks.verify(SECRET, h, body)
        assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    event = json.loads(b2)
    assert event["type"] == "batch.completed" and event["object"] == "event"
    assert event["id"] == h2["webhook-id"] and event["id"].startswith("evt_")
    assert event["data"]["id"] == batch_id and event["data"]["status"] == "completed"
    assert not webhooks.verify("whsec_" + base64.b64encode(b"wrong").decode(), h2, b2)
    assert not webhooks.verify(SECRET, h2, b2 + b" ")

    deadline = time.monotonic() + 10
    while True:
        _, _, d = server.request("GET", f"/v1/webhooks/{hook['id']}/deliveries")
        if d["data"] and d["data"][0]["status"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [(x["event"], x["status"], x["attempts"], x["last_status_code"])
            for x in d["data"]] == [("batch.completed", "delivered", 2, 200)]


def test_endpoints_api_and_test_event_with_a_plain_secret(server, receiver):
    rx = receiver()
    status, _, hook = server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["usage.limit.reached"], "secret": "my plain secret"})
    assert status == 200
    _, _, listed = server.request("GET", "/v1/webhooks")
    assert hook["id"] in [w["id"] for w in listed["data"]]
    assert all("secret" not in w for w in listed["data"])
    status, _, _ = server.request("POST", f"/v1/webhooks/{hook['id']}/test")
    assert status == 200
    (h, body), = rx.wait(1)
    assert json.loads(body)["type"] == "webhook.test"
    assert h["webhook-signature"] == standard_signature("my plain secret", h, body)

    status, _, auto = server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["fine_tuning.job.completed"]})
    assert auto["secret"].startswith("whsec_")
    assert len(base64.b64decode(auto["secret"].removeprefix("whsec_"))) == 24

    for bad in ({"url": "ftp://x", "events": ["batch.completed"]},
                {"url": rx.url, "events": ["nope"]},
                {"url": rx.url, "events": []}):
        status, _, err = server.request("POST", "/v1/webhooks", json=bad)
        assert status == 400 and err["error"]["param"] in ("url", "events")
    status, _, gone = server.request("DELETE", f"/v1/webhooks/{hook['id']}")
    assert status == 200 and gone["deleted"] is True
    status, _, _ = server.request("GET", f"/v1/webhooks/{hook['id']}/deliveries")
    assert status == 404


def test_events_go_to_the_owner_and_admins_only(server, receiver):
    perms = ["files.read", "files.write", "batches.read", "batches.write", "webhooks"]
    ka, kb = server.make_key(perms, name="a"), server.make_key(perms, name="b")
    rx_a, rx_b, rx_admin = receiver(), receiver(), receiver()
    for key, rx in ((ka, rx_a), (kb, rx_b), ("admin", rx_admin)):
        status, _, _ = server.request("POST", "/v1/webhooks", key=key, json={
            "url": rx.url, "events": ["batch.completed", "usage.limit.reached"]})
        assert status == 200
    _, _, listed_b = server.request("GET", "/v1/webhooks", key=kb)
    assert len(listed_b["data"]) == 1  # b sees only its own endpoint
    batch_id = run_batch(server.openai(ka))
    rx_a.wait(1)
    rx_admin.wait(1)


    async def emit():  # usage.limit.reached as the limits service reports it, on the server
        key_id = keys_service.authenticate(server.db, ka)["id"]
        return server.app[EVENTS].publish("usage.limit.reached", {"key_id": key_id},
                                          key_id=key_id).id

    event_id = server.run(emit())
    rx_a.wait(2)
    rx_admin.wait(2)
    assert rx_b.got == []
    assert json.loads(rx_a.got[0][1])["data"]["id"] == batch_id
    last = json.loads(rx_admin.got[-1][1])
    assert last["type"] == "usage.limit.reached" and last["id"] == event_id  # the bus's id
    # published once on the app's bus: webhooks delivered it, metrics counted it
    metrics = server.request("GET", "/metrics", key=None)[2]
    assert 'llmp_events_total{type="batch.completed"}' in metrics
    assert 'llmp_events_total{type="usage.limit.reached"}' in metrics


def test_backoff_schedule():
    assert [webhooks.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert webhooks.backoff(30) == webhooks.BACKOFF_MAX_S


def test_cli_webhooks(server, receiver, cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    rx = receiver()
    r = cli("webhooks", "add", rx.url, "-e", "batch.completed", "--secret", SECRET, "--json")
    assert r.exit_code == 0, r.stderr
    wid = json.loads(r.stdout)["id"]
    assert wid in [w["id"] for w in json.loads(cli("webhooks", "list", "--json").stdout)]
    assert cli("webhooks", "test", wid).exit_code == 0
    (h, body), = rx.wait(1)
    assert webhooks.verify(SECRET, h, body)
    deadline = time.monotonic() + 10
    while (out := json.loads(cli("webhooks", "deliveries", wid, "--json").stdout))[0]["status"] \
            != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert out[0]["event"] == "webhook.test"
    r = cli("webhooks", "test", wid, "--wait")  # the outcome, not only "queued"
    assert r.exit_code == 0 and "Delivered" in r.stdout and "HTTP 200" in r.stdout, r.stderr
    assert cli("webhooks", "rm", wid).exit_code == 0
    failing = receiver(codes=[500])
    r = cli("webhooks", "add", failing.url, "-e", "batch.completed", "--json")
    wid = json.loads(r.stdout)["id"]
    r = cli("webhooks", "test", wid, "--wait")
    assert r.exit_code == 1 and "attempt 1 failed: HTTP 500" in r.stderr and "retrying" in r.stderr
    assert cli("webhooks", "rm", wid).exit_code == 0
    r = cli("webhooks", "add", rx.url, "-e", "nope")
    assert r.exit_code == 2 and "Unknown event" in r.stderr


# -- hostile URLs (issue 9) --------------------------------------------------------------------

def test_a_poisoned_url_fails_its_attempts_and_others_still_arrive(server, receiver):
    """A URL stored before validation existed (a 64-character label makes aiohttp raise
    UnicodeError) fails its own attempts; the deliverer lives and delivers the next event."""
    from llmp.db import webhooks as webhooks_db

    admin_id = keys_service.authenticate(server.db, server.admin_key)["id"]
    poisoned = {"id": "wh_poisoned", "owner_key_id": admin_id, "all_keys": 1,
                "url": f"http://{'a' * 64}.example/", "events": ["usage.limit.reached"],
                "secret": SECRET, "created_at": int(time.time())}
    webhooks_db.insert(server.db, poisoned)
    server.run(_emit_limit(server, admin_id))
    rx = receiver()
    status, _, hook = server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["usage.limit.reached"]})
    assert status == 200
    server.request("POST", f"/v1/webhooks/{hook['id']}/test")
    (h, body), = rx.wait(1)
    assert json.loads(body)["type"] == "webhook.test"
    deadline = time.monotonic() + 10
    while True:
        _, _, d = server.request("GET", "/v1/webhooks/wh_poisoned/deliveries")
        if d["data"] and d["data"][0]["attempts"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    first = d["data"][0]
    assert first["status"] == "pending" and first["attempts"] >= 1
    assert "not a valid domain name" in first["last_error"]
    server.request("DELETE", "/v1/webhooks/wh_poisoned")


async def _emit_limit(server, key_id: str) -> str:
    return server.app[EVENTS].publish("usage.limit.reached", {"key_id": key_id},
                                      key_id=key_id).id


def test_bad_urls_are_400_at_creation(server):
    for url in ("http://[::1", f"http://{'a' * 64}.example/", "http://x.example:99999/",
                "ftp://x.example/", "http:///nohost", "http://exa mple.com/", "not a url",
                "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                "http://metadata.google.internal/", "https://" + "a." * 1100 + "com/", 12):
        status, _, err = server.request("POST", "/v1/webhooks", json={
            "url": url, "events": ["batch.completed"]})
        assert status == 400, (url, err)
        assert err["error"]["param"] == "url"
        assert err["error"]["code"] in ("invalid_url", "invalid_parameter")
    status, _, ok = server.request("POST", "/v1/webhooks", json={
        "url": "https://bücher.example:8443/hook", "events": ["batch.completed"]})
    assert status == 200, ok
    server.request("DELETE", f"/v1/webhooks/{ok['id']}")


def test_private_addresses_are_refused_by_default(tiny_model_path, tmp_path):
    import asyncio

    from conftest import start_server

    with start_server(tmp_path / "home", tiny_model_path, webhook_allow_private=False) as srv:
        for url in ("http://127.0.0.1:8080/", "http://localhost/", "http://10.1.2.3/",
                    "http://192.168.0.1/", "http://[::1]:9/", "http://169.254.1.1/",
                    "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/"):
            status, _, err = srv.request("POST", "/v1/webhooks", json={
                "url": url, "events": ["batch.completed"]})
            assert status == 400 and "webhook_allow_private" in err["error"]["message"] \
                or "metadata" in err["error"]["message"], (url, err)
        status, _, ok = srv.request("POST", "/v1/webhooks", json={
            "url": "https://hooks.example.com/x", "events": ["batch.completed"]})
        assert status == 200

    # after DNS too: a name that resolves to loopback is refused when the delivery is sent
    async def resolve(allow: bool):
        return await webhooks.PolicyResolver(allow).resolve("localhost", 80)

    try:
        asyncio.run(resolve(False))
        raise AssertionError("localhost resolved")
    except OSError as e:
        assert "no address deliveries may reach" in str(e)
    assert asyncio.run(resolve(True))


def test_address_policy():
    import ipaddress

    ip = ipaddress.ip_address
    assert webhooks.address_refusal(ip("169.254.169.254"), allow_private=True)
    assert webhooks.address_refusal(ip("::ffff:169.254.169.254"), allow_private=True)
    assert webhooks.address_refusal(ip("127.0.0.1"), allow_private=True) is None
    assert webhooks.address_refusal(ip("127.0.0.1"), allow_private=False)
    assert webhooks.address_refusal(ip("93.184.216.34"), allow_private=False) is None
    assert webhooks.address_refusal(ip("2606:2800:220:1::1"), allow_private=False) is None
