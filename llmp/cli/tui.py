"""`llmp tui`: the live dashboard of a running server (llmp.tui), a client of its HTTP API."""
from __future__ import annotations

from typing import Annotated

import typer

from llmp.cli.ui import CONN, ApiKeyOpt, UrlOpt


def tui(
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    readonly: Annotated[bool, typer.Option("--readonly", help="Hide every action: look, don't touch.")] = False,
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", min=0.1,
                                            help="Seconds between refreshes of the shown screen.")] = 1.0,
) -> None:
    """Open the dashboard: overview, models, keys, usage, batches and files, webhooks,
    fine-tunes, chat, moderation and logs of the running server (or --url).

    Keys: 1-9, 0 switch screens; / filters; ctrl+p palette; ? help; esc back; q quits.
    NO_COLOR=1 renders without colour.

    Examples:

      llmp tui

      llmp tui --readonly --interval 5
    """
    from llmp.client import AsyncClient
    from llmp.tui.app import LlmpApp

    client = AsyncClient(CONN["url"], CONN["api_key"], timeout=30.0)
    LlmpApp(client=client, readonly=readonly, poll_interval=interval).run()
