"""A DataTable with a `/` filter above it, paged (PAGE rows at a time: 10k keys or a year of
hourly usage stay responsive), whose rows are replaced only when they change."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Label

Row = tuple[str, Sequence[Any]]  # (row key, cells)

#: rows shown at a time (DataTable builds every row it holds; paging keeps that bounded)
PAGE = 500


class FilterTable(Vertical):
    """`set_rows(rows)` shows rows (key, cells) under `columns`; `open_filter()` shows an input
    whose text (case-insensitive, any cell) filters them; esc closes it and clears it."""

    DEFAULT_CSS = """
    FilterTable { height: 1fr; }
    FilterTable > Input.filter { display: none; height: 3; }
    FilterTable > Input.filter.open { display: block; }
    FilterTable > DataTable { height: 1fr; }
    FilterTable > Label.pages { display: none; height: 1; color: $text-muted; }
    FilterTable > Label.pages.paged { display: block; }
    """

    BINDINGS = [Binding("greater_than_sign", "page(1)", "Next page", show=False),
                Binding("less_than_sign", "page(-1)", "Previous page", show=False)]

    def __init__(self, columns: Sequence[str], *, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.columns = list(columns)
        self.rows: list[Row] = []
        self._shown: list[Row] | None = None
        self.query_text = ""
        self.page = 0

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter (esc closes)", classes="filter")
        table: DataTable = DataTable(cursor_type="row", zebra_stripes=True)
        table.add_columns(*self.columns)
        yield table
        yield Label("", classes="pages")

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one(Input)

    @property
    def filter_open(self) -> bool:
        return self.filter_input.has_class("open")

    def open_filter(self) -> None:
        self.filter_input.add_class("open")
        self.filter_input.focus()

    def close_filter(self) -> None:
        self.filter_input.remove_class("open")
        if self.filter_input.value:
            self.filter_input.value = ""
        self.table.focus()

    @on(Input.Changed, ".filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.query_text = event.value.strip().lower()
        self.page = 0
        self._render_rows()

    @on(Input.Submitted, ".filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    def set_rows(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)
        self._render_rows()

    def visible_rows(self) -> list[Row]:
        q = self.query_text
        if not q:
            return self.rows
        return [r for r in self.rows
                if q in r[0].lower() or any(q in _plain(c).lower() for c in r[1])]

    def action_page(self, by: int) -> None:
        self.page += by
        self._render_rows()

    def _render_rows(self) -> None:
        if not self.query_children(DataTable) or not self.query_children(Label):
            # rows that came before this widget's children were mounted: show them after
            self.call_after_refresh(self._render_rows)
            return
        matching = self.visible_rows()
        pages = max(1, -(-len(matching) // PAGE))
        self.page = min(max(0, self.page), pages - 1)
        shown = matching[self.page * PAGE:(self.page + 1) * PAGE]
        label = self.query_one(Label)
        label.set_class(pages > 1, "paged")
        if pages > 1:
            first = self.page * PAGE
            label.update(f"rows {first + 1}-{first + len(shown)} of {len(matching)}  "
                         f"(page {self.page + 1}/{pages}: < and > turn pages)")
        if shown == self._shown:
            return  # nothing changed: no redraw (an idle dashboard stays idle)
        self._shown = shown
        table = self.table
        selected = self.selected_key
        table.clear()
        for key, cells in shown:
            table.add_row(*cells, key=key)
        if selected is not None:
            for i, (key, _) in enumerate(shown):
                if key == selected:
                    table.move_cursor(row=i)
                    break

    @property
    def selected_key(self) -> str | None:
        if not self.query_children(DataTable):
            return None
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - no cursor row yet
            return None
        return None if key.value is None else str(key.value)

    def select(self, key: str) -> bool:
        """Move the cursor to row `key` (turning to its page); False when not shown."""
        for i, (k, _) in enumerate(self.visible_rows()):
            if k == key:
                self.page = i // PAGE
                self._render_rows()
                self.table.move_cursor(row=i % PAGE)
                return True
        return False


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)
