"""`llmp webhooks add|list|rm|deliveries|test`: /v1/webhooks through the running server."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Annotated, Optional

import typer

from llmp.cli.ui import (
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    client,
    console,
    err_console,
    flags,
    print_json,
    print_rows,
    when,
)
from llmp.errors import LlmpError, ServiceUnavailableError
from llmp.services.webhooks import EVENTS

app = typer.Typer(help="Register webhook endpoints (signed per Standard Webhooks) and inspect "
                  "their deliveries.", no_args_is_help=True)


@app.command()
def add(
    endpoint: Annotated[str, typer.Argument(metavar="URL", help="The http(s) URL to POST events to.")],
    event: Annotated[list[str], typer.Option("--event", "-e", metavar="EVENT", help=f"Event (repeatable): {', '.join(EVENTS)}.")],
    secret: Annotated[Optional[str], typer.Option(metavar="SECRET", help="Signing secret (default: a new whsec_ secret).")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Register an endpoint; prints its signing secret.

    Example:

      llmp webhooks add https://example.com/hooks -e batch.completed -e batch.failed
    """
    body = {"url": endpoint, "events": event, **({"secret": secret} if secret else {})}
    with flags(url="URL", events="--event", secret="--secret"):
        w = client().request("POST", "/v1/webhooks", json=body)
    if json_out:
        print_json(w)
        return
    console.print(f"Added [bold]{w['id']}[/bold] -> {w['url']} ({', '.join(w['events'])})")
    console.print("Signing secret (verify `webhook-signature` with it):")
    typer.echo(w["secret"])


@app.command("list")
def list_(json_out: JsonOpt = False,
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List endpoints.

    Examples:

      llmp webhooks list

      llmp webhooks list --json
    """
    hooks = client().request("GET", "/v1/webhooks")["data"]
    print_rows(hooks, json_out, ("id", "url", "events", "scope", "created"),
               lambda w: (w["id"], w["url"], ", ".join(w["events"]),
                          "all keys" if w["all_keys"] else "own key", when(w["created_at"])),
               empty="No webhooks yet: `llmp webhooks add URL -e EVENT`.")


@app.command()
def rm(webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Delete an endpoint (and its delivery log).

    Example:

      llmp webhooks rm wh_abc123
    """
    client().request("DELETE", f"/v1/webhooks/{webhook_id}")
    console.print(f"Deleted {webhook_id}.")


@app.command()
def deliveries(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Recent deliveries of an endpoint: status, attempts, last HTTP status or error.

    Example:

      llmp webhooks deliveries wh_abc123 --limit 5
    """
    with flags(limit="--limit"):
        rows = client().request("GET", f"/v1/webhooks/{webhook_id}/deliveries",
                                params={"limit": limit})["data"]
    print_rows(rows, json_out, ("event id", "event", "status", "attempts", "last", "created"),
               lambda d: (d["event_id"], d["event"], d["status"], str(d["attempts"]),
                          str(d["last_status_code"] or d["last_error"] or "-"),
                          when(d["created_at"])),
               empty="No deliveries yet.")


@app.command()
def test(
    webhook_id: Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The endpoint's id (wh_...).")],
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for the first delivery attempt and report it (exit 1 if it failed).")] = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", help="How long --wait waits.")] = 30.0,
    url: UrlOpt = None, api_key: ApiKeyOpt = None,
) -> None:
    """Send a signed `webhook.test` event to an endpoint.

    Example:

      llmp webhooks test wh_abc123 --wait
    """
    c = client()
    r = c.request("POST", f"/v1/webhooks/{webhook_id}/test")
    if not wait:
        console.print(f"Queued test event {r['event_id']}; see `llmp webhooks deliveries "
                      f"{webhook_id}` (or use --wait).")
        return
    deadline = time.monotonic() + timeout
    d: dict | None = None
    with err_console.status("delivering ...") if err_console.is_terminal else nullcontext():
        while time.monotonic() < deadline:
            rows = c.request("GET", f"/v1/webhooks/{webhook_id}/deliveries",
                             params={"limit": 100})["data"]
            d = next((x for x in rows if x["event_id"] == r["event_id"]), None)
            if d is not None and (d["status"] != "pending" or d["attempts"] > 0):
                break
            time.sleep(0.2)
    if d is None or (d["status"] == "pending" and not d["attempts"]):
        raise ServiceUnavailableError(f"test event {r['event_id']} not attempted within "
                                      f"{timeout:g} s; see `llmp webhooks deliveries {webhook_id}`",
                                      code="timeout")
    if d["status"] == "delivered":
        console.print(f"Delivered test event {r['event_id']}: HTTP {d['last_status_code']} "
                      f"(attempt {d['attempts']}).")
        return
    what = (f"HTTP {d['last_status_code']}" if d["last_status_code"] else d["last_error"]) or "failed"
    more = ("; retrying with backoff (`llmp webhooks deliveries " + webhook_id + "`)"
            if d["status"] == "pending" else "; no more retries")
    raise LlmpError(f"test event {r['event_id']}: attempt {d['attempts']} failed: {what}{more}")
