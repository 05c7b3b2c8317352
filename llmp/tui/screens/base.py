"""`View`: one screen of the dashboard (a tab). Each has at most one poll worker, started
when it is shown and cancelled when it is hidden, so polls never overlap; an unreachable
server turns the app's "reconnecting" banner on, the next good answer turns it off."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.worker import Worker

from llmp.client import AsyncClient, ServerUnreachableError
from llmp.errors import LlmpError
from llmp.tui.widgets.table import FilterTable

if TYPE_CHECKING:
    from llmp.tui.app import LlmpApp


class View(Vertical):
    TITLE: ClassVar[str] = ""
    #: action -> the permission it needs; hidden when the key lacks it, or with --readonly
    ACTIONS: ClassVar[dict[str, str]] = {}
    #: poll while shown (False: the view refreshes on demand only)
    POLL: ClassVar[bool] = True

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._poller: Worker | None = None
        self.polls = 0  # answered polls (tests wait on it)
        self.last_error: Exception | None = None  # the last unexpected failure of a poll

    @property
    def llmp(self) -> LlmpApp:
        return cast("LlmpApp", self.app)

    @property
    def client(self) -> AsyncClient:
        return self.llmp.client

    # ------------------------------------------------------------------ polling
    async def fetch(self) -> dict[str, Any]:
        """One poll's answers from the server (override)."""
        return {}

    def show_payload(self, payload: dict[str, Any]) -> None:
        """Render what `fetch` returned; no I/O (the snapshot tests call it with recorded
        answers), so what a screen shows depends on the payload only (override)."""

    async def refresh_data(self) -> None:
        """One poll: fetch, then show."""
        self.show_payload(await self.fetch())

    def start(self) -> None:
        if not self.llmp.live:
            return
        if self._poller is not None and self._poller.is_running:
            return
        self._poller = self.run_worker(self._loop(), group="poll", exclusive=True,
                                       name=f"poll {self.TITLE}")

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def poll_once(self) -> bool:
        """One poll with the app's connection state updated; True when it answered."""
        try:
            await self.refresh_data()
        except ServerUnreachableError:
            self.llmp.set_connected(False)
            return False
        except LlmpError as e:
            self.llmp.set_connected(True)
            self.show_error(e)
            return False
        except (OSError, ValueError) as e:  # a broken answer: say so, keep the dashboard up
            self.last_error = e
            self.notify(f"{type(e).__name__}: {e}", title=self.TITLE, severity="error")
            return False
        self.llmp.set_connected(True)
        self.polls += 1
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except NoMatches:
                if not self.is_attached:
                    return  # the app closed while a poll was answered
                # the view's widgets are not mounted yet (a tab's content can mount after
                # the tab is activated): show the next poll instead
                await asyncio.sleep(0.05)
                continue
            if not self.POLL:
                return
            await asyncio.sleep(self.llmp.poll_interval)

    def show_error(self, e: LlmpError) -> None:
        self.notify(e.message, title=self.TITLE, severity="error", timeout=4)

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        perm = self.ACTIONS.get(action)
        if perm is not None and not self.llmp.allowed(perm):
            return False  # hidden from the footer, the help and the palette
        return True

    def act(self, coro: Any, done: str | None = None) -> None:
        """Run an action's API call in a worker; errors are notified, then the view polls."""

        async def run() -> None:
            try:
                await coro
            except ServerUnreachableError:
                self.llmp.set_connected(False)
                return
            except LlmpError as e:
                self.show_error(e)
                return
            except (OSError, ValueError) as e:  # e.g. a local file that cannot be read
                self.notify(f"{type(e).__name__}: {e}", title=self.TITLE, severity="error")
                return
            if done:
                self.notify(done, title=self.TITLE)
            await self.poll_once()

        self.run_worker(run(), group="action")

    @property
    def main_table(self) -> FilterTable | None:
        tables = list(self.walk_children(FilterTable))
        focused = self.screen.focused
        for t in tables:
            if focused is not None and (focused is t or t in focused.ancestors):
                return t
        return tables[0] if tables else None

    def focus_main(self) -> None:
        t = self.main_table
        if t is not None:
            t.table.focus()
