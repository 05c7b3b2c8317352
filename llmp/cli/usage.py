"""`llmp usage`: requests, tokens, cost and latency from the running server."""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Optional

import typer

from llmp.cli.keys import find_key
from llmp.cli.ui import ApiKeyOpt, JsonOpt, UrlOpt, client, console, print_json, table
from llmp.errors import InvalidRequestError, LlmpError

BAR_WIDTH = 40

_DAYS = re.compile(r"^(\d{1,4})d$")


def parse_day(value: str | None, flag: str, today: dt.date | None = None) -> str | None:
    """A --since/--until value as YYYY-MM-DD (UTC days, as the server counts them):
    YYYY-MM-DD, `today`, `yesterday`, or `Nd` (the last N days, today included)."""
    if value is None:
        return None
    today = today or dt.datetime.now(dt.UTC).date()
    v = value.strip().lower()
    if v == "today":
        return today.isoformat()
    if v == "yesterday":
        return (today - dt.timedelta(days=1)).isoformat()
    m = _DAYS.match(v)
    if m and int(m.group(1)) >= 1:
        return (today - dt.timedelta(days=int(m.group(1)) - 1)).isoformat()
    try:
        return dt.date.fromisoformat(v).isoformat()
    except ValueError:
        raise InvalidRequestError(f"{flag} {value!r}: give a date (2026-11-01), today, yesterday "
                                  "or a number of days (7d)", param=flag) from None


def _bars(title: str, rows: list[tuple[str, int]]) -> None:
    """A horizontal bar chart of tokens per row, with its title and each bar's label."""
    top = max((v for _, v in rows), default=0)
    if not top:
        return
    console.print(f"\n[bold]{title}[/bold]")
    width = max(len(label) for label, _ in rows)
    for label, v in rows:
        n = round(v / top * BAR_WIDTH)
        console.print(f"  {label:<{width}} [cyan]{'█' * n}[/cyan]{' ' * (BAR_WIDTH - n)} {v:,}")


def usage(
    since: Annotated[Optional[str], typer.Option(
        metavar="DATE|Nd|yesterday", help="First day: YYYY-MM-DD, today, yesterday or Nd "
        "(the last N days). Default: 30d.")] = None,
    until: Annotated[Optional[str], typer.Option(
        metavar="DATE", help="Last day, as --since (default: today).")] = None,
    by: Annotated[str, typer.Option(metavar="model|key|day", help="Group by model, key or day.")] = "model",
    model: Annotated[Optional[str], typer.Option(metavar="MODEL", help="Only this model.")] = None,
    key: Annotated[Optional[str], typer.Option(
        "--key", metavar="KEY", help="Only this key (id or name).")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show usage per model, key or day, with totals and a chart of tokens. Days are UTC.

    Examples:

      llmp usage --since 7d

      llmp usage --by key --since yesterday

      llmp usage --by day --since 2026-11-01 --until 2026-11-30 --json
    """
    if by not in ("model", "key", "day"):
        raise InvalidRequestError(f"--by {by!r}: give model, key or day", param="--by")
    start, end = parse_day(since, "--since"), parse_day(until, "--until")
    if start and end and start > end:
        raise InvalidRequestError(f"--since {since} is after --until {until}", param="--since")
    c = client()
    names: dict[str, str] = {}
    key_id = None
    if key:
        rec = find_key(c, key)
        key_id, names[rec["id"]] = rec["id"], rec["name"]
    if by == "key" and not json_out:
        try:  # names for the key ids (admin keys can list them)
            names.update({k["id"]: k["name"] for k in c.request("GET", "/v1/auth/api-keys")["data"]})
        except LlmpError:
            pass
    params = {"start_date": start, "end_date": end, "model": model, "granularity": "day",
              "group_by": "key" if by == "key" else "model", "key_id": key_id}
    try:
        data = c.request("GET", "/v1/usage", params=params)
    except InvalidRequestError as e:  # name the flag, not the API field
        flags = {"start_date": "--since", "end_date": "--until", "model": "--model",
                 "key_id": "--key"}
        if e.param in flags:
            e.message = re.sub(r"'?\b(start_date|end_date|key_id)\b'?",
                               lambda m: flags[m.group(1)], e.message)
            e.param = flags[e.param]
        raise
    if json_out:
        print_json(data)
        return
    groups: dict[str, dict] = {}
    for row in data["data"]:
        name = row["date"] if by == "day" else row["key_id"] if by == "key" else row["model"]
        g = groups.setdefault(name or "-", {"requests": 0, "errors": 0, "prompt": 0,
                                            "completion": 0, "cost": 0.0})
        g["requests"] += row["requests"]
        g["errors"] += row["errors"]
        g["prompt"] += row["tokens"]["prompt_tokens"]
        g["completion"] += row["tokens"]["completion_tokens"]
        g["cost"] += row["cost"]["amount"]
    t = data["total"]
    lat = t["latency"]

    def label(name: str) -> str:
        return f"{names[name]} ({name})" if by == "key" and name in names else name

    title = f"Usage {data['start_date']} .. {data['end_date']} (UTC)"
    if not groups:
        console.print(f"{title}: no requests.")
        return
    tab = table(by.upper(), "REQUESTS", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS",
                "TOTAL TOKENS", "COST", title=title, show_footer=False,
                caption=f"latency p50 {lat['p50_ms'] or '-'} ms · p95 {lat['p95_ms'] or '-'} ms"
                        f" · p99 {lat['p99_ms'] or '-'} ms")
    for col in list(tab.columns)[1:]:
        col.justify = "right"
    for name, g in sorted(groups.items()):
        tab.add_row(label(name), f"{g['requests']:,}", f"{g['errors']:,}", f"{g['prompt']:,}",
                    f"{g['completion']:,}", f"{g['prompt'] + g['completion']:,}",
                    f"{g['cost']:.4f}")
    tp = sum(g["prompt"] for g in groups.values())
    tc = sum(g["completion"] for g in groups.values())
    tab.add_section()
    tab.add_row("[bold]total[/bold]", f"{t['requests']:,}",
                f"{sum(g['errors'] for g in groups.values()):,}", f"{tp:,}", f"{tc:,}",
                f"{t['tokens']:,}", f"{t['cost']:.4f}")
    console.print(tab)
    if by == "day":  # every day of the range, idle ones too
        first = dt.date.fromisoformat(data["start_date"])
        days = (dt.date.fromisoformat(data["end_date"]) - first).days + 1
        rows = [(d, groups.get(d, {}).get("prompt", 0) + groups.get(d, {}).get("completion", 0))
                for d in ((first + dt.timedelta(i)).isoformat() for i in range(days))]
    else:
        rows = [(label(name), g["prompt"] + g["completion"]) for name, g in sorted(groups.items())]
    _bars(f"Tokens (prompt + completion) by {by}", rows)
