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
