"""`llmp webhooks add|list|rm|deliveries|test`: /v1/webhooks through the running server."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmp.cli.ui import JsonOpt, console, print_json, print_rows, when
from llmp.client import Client
from llmp.services.webhooks import EVENTS

app = typer.Typer(help="Register webhook endpoints (signed per Standard Webhooks) and inspect "
                  "their deliveries.", no_args_is_help=True)


@app.command()
def add(
    url: Annotated[str, typer.Argument(help="The http(s) URL to POST events to.")],
    event: Annotated[list[str], typer.Option("--event", "-e", help=f"Event (repeatable): {', '.join(EVENTS)}.")],
    secret: Annotated[Optional[str], typer.Option(help="Signing secret (default: a new whsec_ secret).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register an endpoint; prints its signing secret."""
    body = {"url": url, "events": event, **({"secret": secret} if secret else {})}
    w = Client().request("POST", "/v1/webhooks", json=body)
    if json_out:
        print_json(w)
        return
    console.print(f"Added [bold]{w['id']}[/bold] -> {w['url']} ({', '.join(w['events'])})")
    console.print("Signing secret (verify `webhook-signature` with it):")
    typer.echo(w["secret"])


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List endpoints."""
    hooks = Client().request("GET", "/v1/webhooks")["data"]
    print_rows(hooks, json_out, ("id", "url", "events", "scope", "created"),
               lambda w: (w["id"], w["url"], ", ".join(w["events"]),
                          "all keys" if w["all_keys"] else "own key", when(w["created_at"])))


@app.command()
def rm(webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")]) -> None:
    """Delete an endpoint (and its delivery log)."""
    Client().request("DELETE", f"/v1/webhooks/{webhook_id}")
    console.print(f"Deleted {webhook_id}.")


@app.command()
def deliveries(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Recent deliveries of an endpoint: status, attempts, last HTTP status or error."""
    rows = Client().request("GET", f"/v1/webhooks/{webhook_id}/deliveries",
                            params={"limit": limit})["data"]
    print_rows(rows, json_out, ("event id", "event", "status", "attempts", "last", "created"),
               lambda d: (d["event_id"], d["event"], d["status"], str(d["attempts"]),
                          str(d["last_status_code"] or d["last_error"] or "-"),
                          when(d["created_at"])))


@app.command()
def test(webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")]) -> None:
    """Send a signed `webhook.test` event to an endpoint."""
    r = Client().request("POST", f"/v1/webhooks/{webhook_id}/test")
    console.print(f"Queued test event {r['event_id']}; see `llmp webhooks deliveries {webhook_id}`.")
