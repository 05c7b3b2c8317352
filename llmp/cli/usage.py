"""`llmp usage`: requests, tokens, cost and latency from the running server."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Optional

import typer
from rich.table import Table

from llmp.cli.ui import JsonOpt, console, print_json
from llmp.client import Client
from llmp.errors import InvalidRequestError

BAR_WIDTH = 40


def _bars(rows: list[tuple[str, int]]) -> None:
    """A small horizontal bar chart of tokens per row."""
    top = max((v for _, v in rows), default=0)
    if not top:
        return
    width = max(len(label) for label, _ in rows)
    for label, v in rows:
        n = round(v / top * BAR_WIDTH)
        console.print(f"{label:>{width}} [cyan]{'█' * n}[/cyan] {v:,}")


def usage(
    since: Annotated[Optional[str], typer.Option(help="First day (YYYY-MM-DD; default 30 days ago).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Last day (YYYY-MM-DD; default today).")] = None,
    by: Annotated[str, typer.Option(help="Group by: model, key or day.")] = "model",
    model: Annotated[Optional[str], typer.Option(help="Only this model.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show usage per model, key or day, with totals and a chart."""
    if by not in ("model", "key", "day"):
        raise InvalidRequestError("--by must be model, key or day", param="by")
    params = {"start_date": since, "end_date": until, "model": model, "granularity": "day",
              "group_by": "key" if by == "key" else "model"}
    data = Client().request("GET", "/v1/usage", params=params)
    if json_out:
        print_json(data)
        return
    label = "key_id" if by == "key" else "model"
    groups: dict[str, dict] = {}
    for e in data["data"]:
        g = groups.setdefault(e["date"] if by == "day" else e[label],
                              {"requests": 0, "errors": 0, "prompt": 0, "completion": 0, "cost": 0.0})
        g["requests"] += e["requests"]
        g["errors"] += e["errors"]
        g["prompt"] += e["tokens"]["prompt_tokens"]
        g["completion"] += e["tokens"]["completion_tokens"]
        g["cost"] += e["cost"]["amount"]
    t = data["total"]
    lat = t["latency"]
    table = Table(by, "requests", "errors", "prompt tokens", "completion tokens", "cost",
                  title=f"Usage {data['start_date']} .. {data['end_date']}",
                  caption=f"latency p50 {lat['p50_ms'] or '-'} ms · p95 {lat['p95_ms'] or '-'} ms"
                          f" · p99 {lat['p99_ms'] or '-'} ms")
    for name, g in sorted(groups.items()):
        table.add_row(name, f"{g['requests']:,}", f"{g['errors']:,}", f"{g['prompt']:,}",
                      f"{g['completion']:,}", f"{g['cost']:.4f}")
    table.add_row("[bold]total[/bold]", f"{t['requests']:,}", "", "", f"{t['tokens']:,} in all",
                  f"{t['cost']:.4f}")
    console.print(table)
    if by == "day":  # every day of the range, idle ones too
        start = dt.date.fromisoformat(data["start_date"])
        days = (dt.date.fromisoformat(data["end_date"]) - start).days + 1
        rows = [((start + dt.timedelta(d)).isoformat(), 0) for d in range(days)]
        rows = [(d, groups.get(d, {}).get("prompt", 0) + groups.get(d, {}).get("completion", 0))
                for d, _ in rows]
    else:
        rows = [(name, g["prompt"] + g["completion"]) for name, g in sorted(groups.items())]
    _bars(rows)
