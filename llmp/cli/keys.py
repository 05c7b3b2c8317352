"""`llmp keys create|list|revoke`: API keys, through the running server (admin key)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Column

from llmp.cli.ui import JsonOpt, console, print_json, print_rows
from llmp.client import Client
from llmp.services.keys import PERMISSIONS

app = typer.Typer(help="Create, list and revoke API keys (needs the admin key).",
                  no_args_is_help=True)

_PERMS_HELP = "Permission (repeatable): " + ", ".join(PERMISSIONS) + ". Default: inference, models.read."


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    permission: Annotated[Optional[list[str]], typer.Option("--permission", "-p", help=_PERMS_HELP)] = None,
    tier: Annotated[Optional[str], typer.Option(help="free | pro | enterprise (default pro).")] = None,
    rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute (overrides the tier).")] = None,
    tpm: Annotated[Optional[int], typer.Option("--tpm", help="Tokens per minute (overrides the tier).")] = None,
    budget: Annotated[Optional[float], typer.Option(help="Monthly cost budget.")] = None,
    monthly_requests: Annotated[Optional[int], typer.Option(help="Requests per month.")] = None,
    monthly_tokens: Annotated[Optional[int], typer.Option(help="Tokens per month.")] = None,
    expires: Annotated[Optional[str], typer.Option(help="Expiry, ISO date or time (UTC).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key; its secret is printed once."""
    body = {"name": name, "tier": tier, "expires_at": expires,
            "rate_limit": {"requests_per_minute": rpm, "tokens_per_minute": tpm},
            "limits": {"monthly_budget": budget, "requests_per_month": monthly_requests,
                       "tokens_per_month": monthly_tokens}}
    if permission:
        body["permissions"] = permission
    key = Client().request("POST", "/v1/auth/api-keys", json=body)
    if json_out:
        print_json(key)
        return
    console.print(f"Created [bold]{key['id']}[/bold] ({key['name']}): "
                  f"{', '.join(key['permissions'])}; tier {key['tier']}")
    console.print("Secret (shown once, store it now):")
    typer.echo(key["api_key"])


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    keys = Client().request("GET", "/v1/auth/api-keys")["data"]
    print_rows(keys, json_out, ("name", "prefix", "permissions", "tier", "status", "last used",
                                "expires", Column("id", no_wrap=True)),
               lambda k: (k["name"], k["prefix"] + "...", ", ".join(k["permissions"]), k["tier"],
                          k["status"], k["last_used_at"] or "-", k["expires_at"] or "-", k["id"]))


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key: its next request is refused."""
    key = Client().request("DELETE", f"/v1/auth/api-keys/{key_id}")
    console.print(f"Revoked [bold]{key['id']}[/bold] ({key['name']}).")
