"""`LlmpApp`: the dashboard. Tabs (number keys 1-9, 0; `[` / `]`; click) switch screens;
only the shown screen polls; a "reconnecting" banner shows while the server is unreachable.

The key's permissions come from the server (GET /v1/auth/me); actions it may not do are
hidden, and `readonly` hides every action."""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane, Tabs

from llmp.client import AsyncClient, ServerUnreachableError
from llmp.errors import AuthenticationError, LlmpError, NotFoundError
from llmp.tui import bindings
from llmp.tui.screens.base import View
from llmp.tui.screens.batches import BatchesView
from llmp.tui.screens.chat import ChatView
from llmp.tui.screens.finetunes import FineTunesView
from llmp.tui.screens.keys import KeysView
from llmp.tui.screens.logs import LogsView
from llmp.tui.screens.models import ModelsView
from llmp.tui.screens.moderation import ModerationView
from llmp.tui.screens.overview import OverviewView
from llmp.tui.screens.usage import UsageView
from llmp.tui.screens.webhooks import WebhooksView
from llmp.tui.widgets.dialogs import TextScreen

#: (number key, id, view class), in tab order
VIEWS: list[tuple[str, str, type[View]]] = [
    ("1", "overview", OverviewView), ("2", "models", ModelsView), ("3", "keys", KeysView),
    ("4", "usage", UsageView), ("5", "batches", BatchesView), ("6", "webhooks", WebhooksView),
    ("7", "finetunes", FineTunesView), ("8", "chat", ChatView),
    ("9", "moderation", ModerationView), ("0", "logs", LogsView),
]


class LlmpApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "llmp"
    BINDINGS = [*bindings.GLOBAL,
                *[Binding(key, f"view('{vid}')", cls.TITLE, show=False) for key, vid, cls in VIEWS]]

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 readonly: bool = False, poll_interval: float = 1.0,
                 client: AsyncClient | None = None, initial: str = "overview",
                 live: bool = True, permissions: set[str] | None = None):
        """`live=False`: no polls and no GET /v1/auth/me; the screens show only what is
        given to their `show_payload` (the snapshot tests), with `permissions` as the key's."""
        super().__init__()
        self.client = client or AsyncClient(url, api_key, timeout=30.0)
        self.readonly = readonly
        self.poll_interval = poll_interval
        self.initial = initial
        #: the key's permissions (None until the server told them)
        self.permissions: set[str] | None = permissions
        self.live = live
        self.me: dict[str, Any] | None = None
        self.connected = True
        self.sub_title = self.client.url + ("  (read-only)" if readonly else "")

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Server unreachable at {self.client.url}: reconnecting...", id="banner")
        with TabbedContent(initial=self.initial, id="tabs"):
            for key, vid, cls in VIEWS:
                with TabPane(f"{key} {cls.TITLE}", id=vid):
                    yield cls(id=f"view-{vid}")
        yield Footer()

    def on_mount(self) -> None:
        if self.live:
            self.run_worker(self._whoami(), group="whoami", exclusive=True)
        self._show(self.initial)

    @property
    def tabs(self) -> TabbedContent:
        return self.query_one("#tabs", TabbedContent)

    def view_of(self, vid: str | None = None) -> View:
        return self.query_one(f"#view-{vid or self.tabs.active}", View)

    @property
    def current_view(self) -> View:
        return self.view_of()

    def _show(self, vid: str) -> None:
        for _, other, _ in VIEWS:
            if other != vid:
                self.view_of(other).stop()
        v = self.view_of(vid)
        v.start()
        v.focus_main()
        self.refresh_bindings()

    @on(TabbedContent.TabActivated, "#tabs")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self._show(event.pane.id)

    # ------------------------------------------------------------------ server state
    async def _whoami(self) -> None:
        """The key's permissions, retried until the server answers."""
        import asyncio

        while True:
            try:
                try:
                    me = await self.client.request("GET", "/v1/auth/me")
                except NotFoundError:  # an older server: find the key by its display prefix
                    keys = await self.client.request("GET", "/v1/auth/api-keys")
                    secret = self.client.api_key or ""
                    me = next((k for k in keys.get("data", [])
                               if k.get("prefix") and secret.startswith(k["prefix"])), {})
            except ServerUnreachableError:
                self.set_connected(False)
            except AuthenticationError as e:
                self.set_connected(True)
                self.notify(f"The API key was refused: {e.message}", severity="error", timeout=10)
                self.permissions = set()
                self.refresh_bindings()
                return
            except LlmpError as e:
                self.set_connected(True)
                self.notify(e.message, severity="error")
            else:
                self.set_connected(True)
                self.me = me
                self.permissions = set(me.get("permissions") or [])
                self.refresh_bindings()
                return
            await asyncio.sleep(self.poll_interval)

    def allowed(self, permission: str, *, action: bool = True) -> bool:
        """May the key do what needs `permission`? Actions are never allowed read-only, nor
        before the server told the key's permissions; reads are tried until then."""
        if action and self.readonly:
            return False
        if self.permissions is None:
            return not action
        return "admin" in self.permissions or permission in self.permissions

    def set_connected(self, ok: bool) -> None:
        if ok == self.connected:
            return
        try:
            banner = self.query_one("#banner", Static)
        except NoMatches:  # the app is closing
            return
        self.connected = ok
        banner.set_class(not ok, "down")
        if ok and self.permissions is None and self.live:
            self.run_worker(self._whoami(), group="whoami", exclusive=True)

    # ------------------------------------------------------------------ actions
    def action_view(self, vid: str) -> None:
        self.tabs.active = vid

    def _step(self, by: int) -> None:
        ids = [vid for _, vid, _ in VIEWS]
        self.tabs.active = ids[(ids.index(self.tabs.active) + by) % len(ids)]

    def action_next_view(self) -> None:
        self._step(1)

    def action_prev_view(self) -> None:
        self._step(-1)

    def action_filter(self) -> None:
        v = self.current_view
        if isinstance(v, LogsView):
            v.open_filter()
        elif (t := v.main_table) is not None:
            t.open_filter()

    def action_esc_back(self) -> None:
        """Close the filter; out of a text box (chat, moderation) to the tabs, so that the
        number keys switch screens again; else focus the screen's table."""
        v = self.current_view
        focused = self.screen.focused
        if isinstance(focused, Input) and not focused.has_class("filter"):
            self.tabs.query_one(Tabs).focus()
            return
        if isinstance(v, LogsView):
            if not v.close_filter():
                v.focus_main()
            return
        t = v.main_table
        if t is not None and t.filter_open:
            t.close_filter()
        else:
            v.focus_main()

    def action_refresh(self) -> None:
        self.run_worker(self.current_view.poll_once(), group="refresh", exclusive=True)

    def action_help(self) -> None:
        self.push_screen(TextScreen("Help", bindings.help_text(
            self.screen, [(key, cls.TITLE) for key, _, cls in VIEWS])))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette: the screens, then every action the footer and help show."""
        yield from super().get_system_commands(screen)
        for key, vid, cls in VIEWS:
            yield SystemCommand(f"Go to {cls.TITLE}", f"key {key}", partial(self.action_view, vid))
        for _key, ab in screen.active_bindings.items():
            b = ab.binding
            if ab.enabled and b.description and not b.action.startswith("view(") \
                    and b.action not in ("quit", "esc_back"):
                yield SystemCommand(b.description, f"key {self.get_key_display(b)}",
                                    partial(self.run_action, b.action, ab.node))

    async def action_quit(self) -> None:
        self.exit()

    async def on_unmount(self) -> None:
        await self.client.aclose()
