"""Shared CLI pieces: consoles, option types, output helpers."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

if TYPE_CHECKING:
    from llmp.client import Client

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

# ---------------------------------------------------------------- which server (every client command)
#: --url / --api-key as given on this command line (`llmp --url X keys list` or
#: `llmp keys list --url X`); reset by the root callback for each invocation
CONN: dict[str, Optional[str]] = {"url": None, "api_key": None}


def _remember(name: str) -> Callable[[Optional[str]], Optional[str]]:
    def callback(value: Optional[str]) -> Optional[str]:
        if value is not None:
            CONN[name] = value
        return value
    return callback


UrlOpt = Annotated[Optional[str], typer.Option(
    "--url", metavar="URL", callback=_remember("url"), expose_value=False,
    help="The server (default: LLMP_URL, else the `llmp serve` running on this home, else "
    "http://127.0.0.1:8000).", rich_help_panel="Server")]
ApiKeyOpt = Annotated[Optional[str], typer.Option(
    "--api-key", metavar="KEY", callback=_remember("api_key"), expose_value=False,
    help="API key (default: LLMP_API_KEY, else the home's admin key).",
    rich_help_panel="Server")]


@contextlib.contextmanager
def flags(**names: str) -> Iterator[None]:
    """Errors name the flag the user typed, not the API field: `with flags(max_tokens=
    "--max-tokens"): ...` turns "Invalid 'max_tokens': ..." into "Invalid --max-tokens: ..."
    (for an InvalidRequestError whose `param` is one of `names`)."""
    from llmp.errors import InvalidRequestError

    try:
        yield
    except InvalidRequestError as e:
        flag = names.get(e.param or "")
        if flag:
            e.message = e.message.replace(f"'{e.param}'", flag)
            e.param = flag
        raise


def client(**kwargs: Any) -> Client:
    """The API client for this command line's --url / --api-key (see `llmp.client`)."""
    from llmp.client import Client

    return Client(CONN["url"], CONN["api_key"], **kwargs)


def table(*columns: str | Column, **kwargs: Any) -> Table:
    """The one table style of the CLI: no outer box, bold headers (as `llmp models list`)."""
    kwargs.setdefault("box", box.SIMPLE_HEAD)
    kwargs.setdefault("header_style", "bold")
    kwargs.setdefault("pad_edge", False)
    return Table(*columns, **kwargs)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup, so scripts can parse it)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def print_rows(rows: list[dict], json_out: bool, columns: Iterable[str | Column],
               cells: Callable[[dict], Iterable[str]], empty: str = "Nothing yet.") -> None:
    """A list command's output: the rows as JSON with `--json`, else a table of `columns`
    with `cells(row)` for each row; `empty` (one line) when there are no rows."""
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print(empty)
        return
    data = [list(cells(row)) for row in rows]
    cols: list[Column] = []
    for i, c in enumerate(columns):
        col = Column(c.upper()) if isinstance(c, str) else c  # headers as in every table
        if str(col.header).lower() in ("id", "event id"):  # ids are copied: never cut
            col.no_wrap = True
            col.min_width = max(len(str(r[i])) for r in data)
        elif not col.no_wrap:
            col.overflow = "fold"  # a narrow terminal wraps a cell, never cuts it
        cols.append(col)
    t = table(*cols)
    for r in data:
        t.add_row(*r)
    console.print(t)


def when(ts: int | None) -> str:
    """A unix time as local 'YYYY-MM-DD HH:MM:SS'; '-' for none."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
