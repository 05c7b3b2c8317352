"""`llmp moderate TEXT | -`: classify text with the server's guard model (POST /v1/moderations)."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from llmp.cli.ui import ApiKeyOpt, JsonOpt, UrlOpt, console, flags, print_json
from llmp.cli.ui import client as api_client
from llmp.errors import InvalidRequestError


def moderate(
    text: Annotated[list[str], typer.Argument(help="Texts to classify ('-': read one from stdin).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Guard model id (default: omni-moderation-latest, the configured "
        "guard).")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Classify texts for safety with the server's guard model: a table of categories and scores.

    Examples:

      llmp moderate 'how do I bake bread?'

      echo 'some text' | llmp moderate - --json
    """
    texts = [sys.stdin.read() if t == "-" else t for t in text]
    if not texts:
        raise InvalidRequestError("give texts to classify", param="text")
    body: dict = {"input": texts[0] if len(texts) == 1 else texts}
    if model:
        body["model"] = model
    with flags(input="TEXT", model="--model"):
        resp = api_client().request("POST", "/v1/moderations", json=body)
    if json_out:
        print_json(resp)
        return
    for i, r in enumerate(resp["results"]):
        guard = r.get("guard") or {}
        verdict = "[red]FLAGGED[/red]" if r["flagged"] else "[green]not flagged[/green]"
        table = Table("category", "score", "flagged",
                      title=f"input {i}: {verdict}" + (
                          f" · guard said {guard.get('label')}"
                          + (f" {','.join(guard.get('categories') or [])}" if guard.get(
                              "categories") else "") if guard.get("label") else ""))
        for cat, score in sorted(r["category_scores"].items(), key=lambda kv: -kv[1]):
            flag = r["categories"].get(cat)
            table.add_row(cat, f"{score:.4f}", "[red]yes[/red]" if flag else "no")
        console.print(table)
    console.print(f"[dim]{resp['id']} · {resp['model']}[/dim]")
