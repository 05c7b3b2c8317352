"""`llmp tui` (llmp.tui) driven by Textual's pilot against a real server: keys created and
revoked from the dashboard work (and stop working) on the API, a running batch is cancelled
from it, a lost server shows the reconnecting banner and the screen recovers by itself;
permissions and --readonly hide actions; the binding registry feeds help and the palette."""
from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import pytest
from conftest import start_server
from textual.widgets import Input

from llmp.tui import bindings
from llmp.tui.app import LlmpApp
from llmp.tui.widgets.dialogs import ConfirmScreen, FormScreen, SecretScreen, TextScreen
from llmp.tui.widgets.table import FilterTable

POLL = 0.05


async def until(pilot, cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Let the app run until `cond()` holds (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def rows(app: LlmpApp, vid: str, table: str | None = None) -> list:
    view = app.view_of(vid)
    t = view.query_one(f"#{table}", FilterTable) if table else view.query_one(FilterTable)
    return t.rows


def actions(app: LlmpApp) -> set[str]:
    return {b.action for _, b in bindings.active(app.screen)}


async def test_create_key_then_revoke_it(server):
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="keys")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.permissions == {"admin"}, what="permissions")
        view = app.view_of("keys")
        await until(pilot, lambda: view.polls > 0, what="first poll")
        assert {"create", "revoke"} <= actions(app)

        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, FormScreen), what="form")
        app.screen.query_one("#field-name", Input).value = "from-tui"
        app.screen.query_one("#field-permissions", Input).value = "models.read"
        await pilot.click("#save")
        await until(pilot, lambda: isinstance(app.screen, SecretScreen), what="secret shown")
        secret = app.screen.secret
        key_id = view.last_created["id"]
        assert secret.startswith("sk-")
        assert server.request("GET", "/v1/models", key=secret)[0] == 200
        await pilot.press("escape")
        await until(pilot, lambda: any(k == key_id for k, _ in rows(app, "keys")),
                    what="the new key listed")
        row = dict(rows(app, "keys"))[key_id]
        assert row[1] == "from-tui" and row[2] == "models.read"

        # `/` filters the table
        await pilot.press("slash")
        for ch in "from-tui":
            await pilot.press(ch)
        await until(pilot, lambda: view.query_one(FilterTable).visible_rows()
                    and all(k == key_id for k, _ in view.query_one(FilterTable).visible_rows()),
                    what="filtered rows")
        await pilot.press("escape")
        assert len(view.query_one(FilterTable).visible_rows()) > 1

        assert view.query_one(FilterTable).select(key_id)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: server.request("GET", "/v1/models", key=secret)[0] == 401,
                    what="the revoked key refused")
        await until(pilot, lambda: dict(rows(app, "keys"))[key_id][6] == "revoked",
                    what="shown revoked")


async def test_permissions_and_readonly_hide_actions(server):
    reader = server.make_key(["models.read"], name="reader")
    app = LlmpApp(server.url, reader, poll_interval=POLL, initial="keys")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.permissions == {"models.read"}, what="permissions")
        assert not {"create", "revoke"} & actions(app)
        await pilot.press("2")
        await until(pilot, lambda: app.tabs.active == "models" and app.view_of("models").polls,
                    what="models screen")
        assert ("tiny" in dict(rows(app, "models")))
        assert not {"load", "unload"} & actions(app)

    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="keys",
                  readonly=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.permissions == {"admin"}, what="permissions")
        await until(pilot, lambda: app.view_of("keys").polls > 0, what="first poll")
        assert rows(app, "keys")  # the data shows...
        assert not {"create", "revoke"} & actions(app)  # ...the actions do not
        await pilot.press("n")
        assert not isinstance(app.screen, FormScreen)


async def test_help_palette_and_screen_switching(server):
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.permissions is not None, what="permissions")
        assert app.tabs.active == "overview"
        for key, vid in (("3", "keys"), ("5", "batches"), ("0", "logs"), ("1", "overview")):
            await pilot.press(key)
            assert app.tabs.active == vid
        await pilot.press("right_square_bracket")
        assert app.tabs.active == "models"
        await until(pilot, lambda: app.view_of("models").polls > 0, what="models poll")
        # only the shown screen polls
        running = [w for w in app.workers if w.group == "poll" and w.is_running]
        assert [w.node for w in running] == [app.view_of("models")]

        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, TextScreen), what="help")
        text = str(app.screen.body)
        assert "Load" in text and "Unload" in text and "Quit" in text and "Usage" in text
        await pilot.press("escape")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Load", "Unload", "Go to Usage", "Filter"} <= titles

        # typing a number into an input types it: no screen switch
        await pilot.press("8")
        assert app.tabs.active == "chat"
        await until(pilot, lambda: app.view_of("chat").polls > 0, what="models for chat")
        await pilot.press("1", "2")
        assert app.tabs.active == "chat"
        assert app.screen.query_one("#chat-input", Input).value == "12"
        await pilot.press("escape", "3")  # esc leaves the text box: digits switch again
        assert app.tabs.active == "keys"


async def test_chat_streams_an_answer(server):
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="chat")
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view_of("chat")
        await until(pilot, lambda: view.polls > 0, what="models")
        view.max_tokens = 16
        chat_input = view.query_one("#chat-input", Input)
        chat_input.value = "Hello"
        await pilot.press("enter")
        await until(pilot, lambda: len(view.messages) == 2 and not view.streaming,
                    timeout=60, what="an answer")
        assert view.messages[0] == {"role": "user", "content": "Hello"}
        assert view.messages[1]["role"] == "assistant"


async def test_cancel_a_running_batch(server):
    client = server.openai()
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "tiny", "max_tokens": 200, "ignore_eos": True,
                       "messages": [{"role": "user", "content": f"Q{i}"}]}} for i in range(400)]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="batches")
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.view_of("batches")
        await until(pilot, lambda: app.permissions is not None, what="permissions")
        await until(pilot, lambda: dict(rows(app, "batches", "batches-table")).get(
            b.id, [None, None])[1] == "in_progress", what="the batch running")
        await until(pilot, lambda: f.id in dict(rows(app, "batches", "files-table")),
                    what="its input file listed")
        assert view.query_one("#batches-table", FilterTable).select(b.id)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: client.batches.retrieve(b.id).status
                    in ("cancelling", "cancelled"), what="the batch cancelled")
        await until(pilot, lambda: dict(rows(app, "batches", "batches-table"))[b.id][1]
                    in ("cancelling", "cancelled"), what="shown cancelled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_lost_server_banner_then_recovery(tiny_model_path, tmp_path):
    port = _free_port()
    home = tmp_path / "tui-home"
    first = start_server(home, tiny_model_path, listen_port=port)
    srv = first.__enter__()
    stopped = False
    try:
        app = LlmpApp(srv.url, srv.admin_key, poll_interval=POLL)
        async with app.run_test(size=(100, 30)) as pilot:
            banner = app.query_one("#banner")
            view = app.view_of("overview")
            await until(pilot, lambda: view.polls > 1, what="overview polls")
            assert not banner.has_class("down") and view.summary["status"] == "ok"
            assert view.status is not None and view.status["device"]["cpu_count"] >= 1
            # stop the server (in a thread: the app keeps running meanwhile)
            await asyncio.to_thread(first.__exit__, None, None, None)
            stopped = True
            await until(pilot, lambda: banner.has_class("down") and banner.display,
                        what="the reconnecting banner")
            before = view.polls
            second = start_server(home, tiny_model_path, listen_port=port)
            await asyncio.to_thread(second.__enter__)
            try:
                await until(pilot, lambda: not banner.has_class("down") and view.polls > before,
                            what="recovery")
                assert view.summary["status"] == "ok"
            finally:
                await asyncio.to_thread(second.__exit__, None, None, None)
    finally:
        if not stopped:
            first.__exit__(None, None, None)


def test_me_and_admin_logs_endpoints(server):
    reader = server.make_key(["models.read"], name="reader-me")
    status, _, me = server.request("GET", "/v1/auth/me", key=reader)
    assert status == 200 and me["name"] == "reader-me" and me["permissions"] == ["models.read"]
    assert "api_key" not in me and me["object"] == "api_key"
    assert server.request("GET", "/v1/auth/me", key=None)[0] == 401
    assert server.request("GET", "/v1/admin/logs", key=reader)[0] == 403

    log = server.settings.home / "logs" / "llmp.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)) + "partial")
    status, _, body = server.request("GET", "/v1/admin/logs?lines=3")
    assert status == 200 and body["lines"] == ["line 7", "line 8", "line 9"]
    offset = body["offset"]
    with log.open("a") as f:
        f.write(" now whole\nline 11\n")
    body = server.request("GET", f"/v1/admin/logs?offset={offset}")[2]
    assert body["lines"] == ["partial now whole", "line 11"]
    log.write_text("rotated\n")  # smaller than the offset: a new file
    assert server.request("GET", f"/v1/admin/logs?offset={body['offset']}")[2]["lines"] == ["rotated"]
    assert server.request("GET", "/v1/admin/logs?lines=-1")[0] == 400


async def test_logs_screen_follows_the_log(server):
    log = server.settings.home / "logs" / "llmp.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("first access line\n")
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="logs")
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view_of("logs")
        await until(pilot, lambda: "first access line" in view.log_lines, what="the log")
        with log.open("a") as f:
            f.write("second access line\n")
        await until(pilot, lambda: "second access line" in view.log_lines, what="a new line")


async def test_usage_screen_renders_a_year_of_hours_fast():
    """Deterministic data (no server): a year of hourly rows by day renders in well under a
    second (benchmarks/tui_idle.py measures it)."""
    body = year_of_usage()
    app = LlmpApp("http://127.0.0.1:9", "sk-x", poll_interval=3600, initial="usage")
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.view_of("usage")
        t0 = time.perf_counter()
        view.show(body, None)
        await pilot.pause()
        took = time.perf_counter() - t0
        assert len(view.query_one(FilterTable).rows) == 365
        assert took < 10.0, took  # generous: a shared CI machine; the benchmark has figures


def year_of_usage() -> dict:
    import datetime as dt

    start = dt.date(2025, 1, 1)
    data = []
    for d in range(365):
        day = (start + dt.timedelta(days=d)).isoformat()
        reqs = 24 * (1 + d % 7)
        data.append({"date": day, "model": "tiny", "requests": reqs, "errors": d % 3,
                     "tokens": {"prompt_tokens": reqs * 10, "completion_tokens": reqs * 20,
                                "total_tokens": reqs * 30},
                     "cost": {"amount": reqs * 0.001, "currency": "USD"}})
    return {"object": "usage", "start_date": data[0]["date"], "end_date": data[-1]["date"],
            "granularity": "day", "data": data, "total": {}}


async def test_big_tables_page():
    from llmp.tui.widgets.table import PAGE

    app = LlmpApp("http://127.0.0.1:9", "sk-x", poll_interval=3600, initial="keys")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.view_of("keys").query_one(FilterTable)
        many = [(f"key_{i:05d}", [f"key_{i:05d}", f"name {i}", "inference", "free", "-", "-",
                                  "active", "-", "-"]) for i in range(10_000)]
        t0 = time.perf_counter()
        table.set_rows(many)
        await pilot.pause()
        assert time.perf_counter() - t0 < 10.0  # unpaged, this took ~4 s on 2 cores
        assert table.table.row_count == PAGE
        assert table.select("key_09999") and table.selected_key == "key_09999"
        assert table.page == (10_000 - 1) // PAGE
        table.table.focus()
        await pilot.press("less_than_sign")
        assert table.page == (10_000 - 1) // PAGE - 1
        table.query_text = "name 9999"
        table.set_rows(many)
        assert [k for k, _ in table.visible_rows()] == ["key_09999"] and table.page == 0


async def test_batch_from_a_local_file_and_its_results_saved(server, tmp_path):
    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "tiny", "max_tokens": 4, "ignore_eos": True,
                 "messages": [{"role": "user", "content": f"Q{i}"}]}}) + "\n" for i in range(3)))
    out = tmp_path / "results.jsonl"
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="batches")
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.view_of("batches")
        await until(pilot, lambda: app.permissions is not None and view.polls > 0, what="ready")
        before = set(dict(rows(app, "batches", "batches-table")))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, FormScreen), what="form")
        app.screen.query_one("#field-path", Input).value = str(src)
        await pilot.click("#save")

        def new_batch():
            new = {k: r for k, r in rows(app, "batches", "batches-table") if k not in before}
            return next(iter(new.items()), None)

        await until(pilot, lambda: new_batch() is not None and new_batch()[1][1] == "completed",
                    timeout=60, what="the new batch completed")
        batch_id = new_batch()[0]
        assert view.query_one("#batches-table", FilterTable).select(batch_id)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, FormScreen), what="save form")
        app.screen.query_one("#field-path", Input).value = str(out)
        await pilot.click("#save")
        await until(pilot, lambda: out.exists() and out.stat().st_size > 0, what="results saved")
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in got) == ["r0", "r1", "r2"]


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_every_screen_renders_at_small_and_large_sizes(server, size):
    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.permissions is not None, what="permissions")
        for key, vid in (("1", "overview"), ("2", "models"), ("3", "keys"), ("4", "usage"),
                         ("5", "batches"), ("6", "webhooks"), ("7", "finetunes"),
                         ("8", "chat"), ("9", "moderation"), ("0", "logs")):
            await pilot.press("escape", key)  # esc: out of a text box first
            assert app.tabs.active == vid
            view = app.view_of(vid)
            if view.POLL or vid == "chat":
                await until(pilot, lambda v=view: v.polls > 0, what=f"{vid} answered")
            assert view.last_error is None
            assert app.screen.focused is not None


def test_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert LlmpApp("http://127.0.0.1:9", "sk-x").no_color
    monkeypatch.delenv("NO_COLOR")
    assert not LlmpApp("http://127.0.0.1:9", "sk-x").no_color


def test_cli_tui_help(cli):
    r = cli("tui", "--help")
    assert r.exit_code == 0
    assert "--readonly" in r.stdout and "--url" in r.stdout and "--api-key" in r.stdout


async def test_moderation_playground_shows_scores(tiny_model_path, tmp_path):
    from llmp.models import registry
    from llmp.services.moderation import set_guard

    with start_server(tmp_path / "guard-home", tiny_model_path, slot_ctx=2048,
                      n_slots=4) as srv:
        registry.register(srv.db, tiny_model_path, model_id="guard")
        set_guard(srv.db, "guard", "llama-guard-3")
        app = LlmpApp(srv.url, srv.admin_key, poll_interval=POLL, initial="moderation")
        async with app.run_test(size=(100, 30)) as pilot:
            view = app.view_of("moderation")
            await until(pilot, lambda: app.permissions is not None, what="permissions")
            box = view.query_one("#mod-input", Input)
            box.value = "I want to hurt someone"
            box.focus()
            await pilot.press("enter")
            await until(pilot, lambda: view.result is not None, timeout=60, what="scores")
            scores = view.result["results"][0]["category_scores"]
            assert scores and all(0.0 <= v <= 1.0 for v in scores.values())
            shown = str(view.query_one("#mod-result").render())
            assert "█" in shown or "░" in shown


def test_admin_status_endpoint(server):
    reader = server.make_key(["models.read"], name="reader-status")
    assert server.request("GET", "/v1/admin/status", key=reader)[0] == 403
    from llmp.server.state import EVENTS

    # an event on the app's bus shows up in the counts and the recent list
    event = server.app[EVENTS].publish("tui.test", {"n": 1}, key_id="key_x")
    status, _, body = server.request("GET", "/v1/admin/status")
    assert status == 200 and body["object"] == "server.status"
    assert body["process"]["pid"] > 0 and body["process"]["in_flight"] >= 1  # this request
    assert body["device"]["cpu_count"] >= 1 and isinstance(body["device"]["gpu_offload"], bool)
    assert body["uptime_s"] >= 0 and body["events"]["counts"]["tui.test"] >= 1
    assert {"id": event.id, "type": "tui.test", "created_at": event.created_at,
            "key_id": "key_x"} in body["events"]["recent"]


async def test_models_screen_sets_prices_and_aliases(server):
    """`p` and `a` on the Models screen go through POST /v1/admin/models/{id}/price and
    /aliases (admin only); the API then charges and resolves accordingly."""
    reader = server.make_key(permissions=("models.read",))
    assert server.request("POST", "/v1/admin/models/tiny/price", key=reader,
                          json={"input_price": 1})[0] == 403
    assert server.request("POST", "/v1/admin/models/tiny/price",
                          json={"input_price": -1})[0] == 400
    assert server.request("POST", "/v1/admin/models/tiny/price", json={})[0] == 400
    assert server.request("POST", "/v1/admin/models/nope/price",
                          json={"input_price": 1})[0] == 404
    status, _, body = server.request("POST", "/v1/admin/models/tiny/aliases",
                                     json={"remove": ["not-an-alias"]})
    assert status == 404 and body["error"]["param"] == "alias"
    before = server.request("GET", "/v1/models/tiny")[2]["pricing"]

    app = LlmpApp(server.url, server.admin_key, poll_interval=POLL, initial="models")
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.permissions == {"admin"}, what="permissions")
            view = app.view_of("models")
            await until(pilot, lambda: "tiny" in dict(rows(app, "models")), what="tiny listed")
            assert {"price", "aliases"} <= actions(app)
            assert view.query_one(FilterTable).select("tiny")

            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, FormScreen), what="price form")
            app.screen.query_one("#field-input_price", Input).value = "0.25"
            app.screen.query_one("#field-output_price", Input).value = "0.5"
            app.screen.query_one("#field-currency", Input).value = "eur"
            await pilot.click("#save")
            await until(pilot, lambda: server.request("GET", "/v1/models/tiny")[2]["pricing"][
                "input_tokens"] == 0.25, what="the price set")
            pricing = server.request("GET", "/v1/models/tiny")[2]["pricing"]
            assert (pricing["output_tokens"], pricing["currency"]) == (0.5, "EUR")
            await until(pilot, lambda: dict(rows(app, "models"))["tiny"][6] == "0.25/0.5 EUR",
                        what="the new price shown")

            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, FormScreen), what="alias form")
            app.screen.query_one("#field-add", Input).value = "tui-alias, tui-alias2"
            await pilot.click("#save")
            await until(pilot, lambda: server.request("GET", "/v1/models/tui-alias")[0] == 200,
                        what="the alias resolving")
            detail = server.request("GET", "/v1/models/tui-alias2")[2]
            assert detail["id"] == "tiny"
            assert detail["details"]["aliases"] == ["tui-alias", "tui-alias2"]
            await until(pilot, lambda: "tui-alias2" in str(
                view.query_one("#models-detail").render()), what="the aliases shown")

            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, FormScreen), what="alias form")
            app.screen.query_one("#field-remove", Input).value = "tui-alias"
            await pilot.click("#save")
            await until(pilot, lambda: server.request("GET", "/v1/models/tui-alias")[0] == 404,
                        what="the alias removed")
            assert server.request("GET", "/v1/models/tui-alias2")[0] == 200
    finally:  # the module's server is shared: put things back
        server.request("POST", "/v1/admin/models/tiny/aliases",
                       json={"remove": ["tui-alias2"]})
        server.request("POST", "/v1/admin/models/tiny/price", json={
            "input_price": before["input_tokens"], "output_price": before["output_tokens"],
            "currency": before["currency"]})
