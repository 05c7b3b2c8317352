"""Shared CLI pieces: consoles, option types, output helpers."""
from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Callable, Iterable

import typer
from rich.console import Console
from rich.table import Column, Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup, so scripts can parse it)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def print_rows(rows: list[dict], json_out: bool, columns: Iterable[str | Column],
               cells: Callable[[dict], Iterable[str]]) -> None:
    """A list command's output: the rows as JSON with `--json`, else a table of `columns`
    with `cells(row)` for each row."""
    if json_out:
        print_json(rows)
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*cells(row))
    console.print(table)


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
