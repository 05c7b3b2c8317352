"""SVG snapshots of every TUI screen at 80x24 and 120x40 (pytest-textual-snapshot).

What a screen shows comes only from its `show_payload(payload)` (the poll worker calls it with
what `fetch()` got from the server). Here the app runs with `live=False` (no polls, the key
taken as admin, so every action is in the footer) and each screen is given the answers a
real server gave, recorded by tests/data/tui/record.py into tests/data/tui/<screen>.json with
times, ids, ports and durations fixed, so the pictures are the same run after run.

    PYTHONPATH=$PWD python3 -m pytest -q tests/test_tui_snapshots.py                    # compare
    PYTHONPATH=$PWD python3 -m pytest -q tests/test_tui_snapshots.py --snapshot-update  # re-take
The pictures are under tests/__snapshots__/test_tui_snapshots/; a failing comparison writes
snapshot_report.html (side by side) in the working directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmp.tui.app import VIEWS, LlmpApp
from llmp.tui.widgets.table import FilterTable

DATA = Path(__file__).parent / "data" / "tui"
URL = "http://127.0.0.1:8000"


def app_showing(vid: str) -> tuple[LlmpApp, object]:
    payload = json.loads((DATA / f"{vid}.json").read_text())
    app = LlmpApp(URL, "sk-snapshot", live=False, permissions={"admin"}, initial=vid)

    async def run_before(pilot) -> None:
        await pilot.pause()
        view = app.view_of(vid)
        if vid == "moderation":
            view.show_result(payload["result"])  # type: ignore[attr-defined]
        else:
            view.show_payload(payload)
        if vid == "models":  # the row of the model the detail line shows
            await pilot.pause()
            view.query_one(FilterTable).select(payload["selected"]["id"])
        await pilot.pause()

    return app, run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("vid", [vid for _, vid, _ in VIEWS])
def test_screen(snap_compare, vid: str, size: tuple[int, int]) -> None:
    app, run_before = app_showing(vid)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_recorded_payloads_cover_every_screen() -> None:
    """Every screen has recorded answers (re-record with tests/data/tui/record.py)."""
    for _, vid, _ in VIEWS:
        payload = json.loads((DATA / f"{vid}.json").read_text())
        assert isinstance(payload, dict) and payload, vid


def _shape(v: object, depth: int = 0) -> object:
    """The keys of a payload, and those every item of a non-empty `data` list has."""
    if not isinstance(v, dict) or depth > 2:
        return type(v).__name__ if v is not None else None
    out: dict = {}
    for k, x in v.items():
        if k == "data" and isinstance(x, list):
            items = [i for i in x if isinstance(i, dict)]
            out[k] = {c: None for c in set.intersection(*(set(i) for i in items))} \
                if items else "list"
        elif isinstance(x, dict):
            out[k] = _shape(x, depth + 1)
        else:
            out[k] = None
    return out


def _compatible(recorded: object, live: object, where: str = "") -> list[str]:
    """Where a live answer lacks what the recorded one has (new keys are fine)."""
    if not isinstance(recorded, dict) or not isinstance(live, dict):
        return []
    problems = [f"{where}.{k}" for k in recorded if k not in live]
    for k in recorded.keys() & live.keys():
        if recorded[k] != "list" and live[k] != "list":
            problems += _compatible(recorded[k], live[k], f"{where}.{k}")
    return problems


async def test_recorded_payloads_match_what_a_real_server_answers(server):
    """The recorded answers still have the shape a real server gives today (else re-record):
    every screen's own `fetch()` against the tests' server, compared key by key."""
    app = LlmpApp(server.url, server.admin_key, live=False, permissions={"admin"})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for _, vid, _ in VIEWS:
            recorded = json.loads((DATA / f"{vid}.json").read_text())
            if vid == "moderation":
                continue  # no poll; needs a guard model (the TUI test drives it)
            live = await app.view_of(vid).fetch()
            assert not _compatible(_shape(recorded), _shape(live)), (vid, _compatible(
                _shape(recorded), _shape(live)))
