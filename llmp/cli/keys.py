"""`llmp keys create|list|revoke`: API keys, through the running server (admin key).
Keys are named by id (key_...) or by name wherever a command takes one."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Column

from llmp.cli.ui import ApiKeyOpt, JsonOpt, UrlOpt, client, console, flags, print_json, print_rows
from llmp.client import Client
from llmp.errors import InvalidRequestError, NotFoundError
from llmp.services.keys import PERMISSIONS
from llmp.services.limits import TIERS

app = typer.Typer(help="Create, list and revoke API keys (needs the admin key).",
                  no_args_is_help=True)

#: terminal columns from which `keys list` is a table (narrower: one block per key)
WIDE = 140

_PERMS_HELP = "Permission (repeatable): " + ", ".join(PERMISSIONS) + ". Default: inference, models.read."


def find_key(c: Client, key: str) -> dict:
    """The key record named `key`: an id (key_...) or a name (which must be unambiguous)."""
    keys = c.request("GET", "/v1/auth/api-keys")["data"]
    by_id = [k for k in keys if k["id"] == key]
    if by_id:
        return by_id[0]
    named = [k for k in keys if k["name"] == key]
    live = [k for k in named if k["status"] == "active"] or named
    if not named:
        raise NotFoundError(f"no API key with id or name {key!r} (`llmp keys list` shows them)",
                            param="KEY")
    if len(live) > 1:
        raise InvalidRequestError(f"{len(live)} keys are named {key!r}: give its id (one of "
                                  f"{', '.join(k['id'] for k in live)})", param="KEY")
    return live[0]


def _n(v: int | float | None) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}" if isinstance(v, float) else "-"


def limits_text(k: dict) -> str:
    """'3,500 rpm · 90,000 tpm' (the key's own or its tier's), plus monthly quotas."""
    tier = TIERS.get(k.get("tier") or "pro", TIERS["pro"])
    rl = k.get("rate_limit") or {}
    rpm = rl.get("requests_per_minute") or tier.requests_per_minute
    tpm = rl.get("tokens_per_minute") or tier.tokens_per_minute
    parts = [f"{rpm:,} rpm", f"{tpm:,} tpm"]
    q = k.get("limits") or {}
    if q.get("monthly_budget") is not None:
        parts.append(f"budget {_n(q['monthly_budget'])}/mo")
    if q.get("requests_per_month") is not None:
        parts.append(f"{_n(q['requests_per_month'])} req/mo")
    if q.get("tokens_per_month") is not None:
        parts.append(f"{_n(q['tokens_per_month'])} tok/mo")
    return ", ".join(parts)


def _time(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z")[:16] if iso else "-"


@app.command()
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name for the key (who or what uses it).")],
    permission: Annotated[Optional[list[str]], typer.Option(
        "--permission", "-p", metavar="PERM", help=_PERMS_HELP)] = None,
    tier: Annotated[Optional[str], typer.Option(
        metavar="free|pro|enterprise", help="Rate-limit tier (default: pro; enterprise for admin keys).")] = None,
    rpm: Annotated[Optional[int], typer.Option("--rpm", metavar="N", help="Requests per minute (overrides the tier).")] = None,
    tpm: Annotated[Optional[int], typer.Option("--tpm", metavar="N", help="Tokens per minute (overrides the tier).")] = None,
    budget: Annotated[Optional[float], typer.Option(metavar="AMOUNT", help="Monthly cost budget.")] = None,
    monthly_requests: Annotated[Optional[int], typer.Option(metavar="N", help="Requests per month.")] = None,
    monthly_tokens: Annotated[Optional[int], typer.Option(metavar="N", help="Tokens per month.")] = None,
    expires: Annotated[Optional[str], typer.Option(
        metavar="DATE", help="Expiry, ISO date or time in UTC (e.g. 2027-01-31).")] = None,
    moderate_input: Annotated[bool, typer.Option(
        "--moderate-input", help="Check this key's chat/completion inputs with the guard "
        "model first (flagged input: 400 content_policy_violation).")] = False,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Create a key; its secret is printed once.

    Examples:

      llmp keys create my-app -p inference -p models.read --rpm 60

      llmp keys create ci --tier free --expires 2027-01-31 --json
    """
    body: dict[str, Any] = {"name": name, "tier": tier, "expires_at": expires,
            "rate_limit": {"requests_per_minute": rpm, "tokens_per_minute": tpm},
            "limits": {"monthly_budget": budget, "requests_per_month": monthly_requests,
                       "tokens_per_month": monthly_tokens}}
    if permission:
        body["permissions"] = permission
    if moderate_input:
        body["moderate_input"] = True
    with flags(name="NAME", permissions="--permission", tier="--tier", expires_at="--expires",
               **{"rate_limit.requests_per_minute": "--rpm",
                  "rate_limit.tokens_per_minute": "--tpm",
                  "limits.monthly_budget": "--budget",
                  "limits.requests_per_month": "--monthly-requests",
                  "limits.tokens_per_month": "--monthly-tokens"}):
        key = client().request("POST", "/v1/auth/api-keys", json=body)
    if json_out:
        print_json(key)
        return
    console.print(f"Created [bold]{key['id']}[/bold] ({key['name']}): "
                  f"{', '.join(key['permissions'])}; tier {key['tier']} ({limits_text(key)})")
    console.print("Secret (shown once, store it now):")
    typer.echo(key["api_key"])


@app.command("list")
def list_(json_out: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List keys (never their secrets) with their tier and limits, expiry and last use.

    Examples:

      llmp keys list

      llmp keys list --json | jq '.[] | select(.status == "active") | .name'
    """
    keys = client().request("GET", "/v1/auth/api-keys")["data"]
    if not json_out and keys and console.width < WIDE:
        for k in keys:  # a narrow terminal: one block per key instead of a squeezed table
            console.print(f"[bold]{escape(k['name'])}[/bold]  {k['id']}  {k['status']}")
            console.print(f"  tier {k['tier']}: {limits_text(k)}")
            console.print(f"  expires {_time(k['expires_at'])} · last used "
                          f"{_time(k['last_used_at']) if k['last_used_at'] else 'never'}")
            console.print(f"  permissions: {', '.join(k['permissions'])}")
        return
    print_rows(keys, json_out, (Column("NAME", no_wrap=True), Column("ID", no_wrap=True),
                                "STATUS", "TIER", "LIMITS", "EXPIRES", "LAST USED",
                                "PERMISSIONS"),
               lambda k: (k["name"], k["id"], k["status"], k["tier"], limits_text(k),
                          _time(k["expires_at"]),
                          _time(k["last_used_at"]) if k["last_used_at"] else "never",
                          ", ".join(k["permissions"])),
               empty="No API keys yet: `llmp keys create NAME`.")


@app.command()
def revoke(key: Annotated[str, typer.Argument(metavar="KEY", help="The key's id (key_...) or name.")],
           url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Revoke a key: its next request is refused.

    Examples:

      llmp keys revoke my-app

      llmp keys revoke key_3hF2...
    """
    c = client()
    rec = find_key(c, key)
    rec = c.request("DELETE", f"/v1/auth/api-keys/{rec['id']}")
    console.print(f"Revoked [bold]{rec['id']}[/bold] ({rec['name']}).")
