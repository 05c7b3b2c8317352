"""`llmp embed TEXT...`: embeddings from the running server (POST /v1/embeddings)."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from llmp.cli.ui import ApiKeyOpt, JsonOpt, UrlOpt, console, flags, print_json
from llmp.cli.ui import client as api_client
from llmp.client import Client
from llmp.errors import InvalidRequestError, NotFoundError

SHOWN = 8  # values shown per vector in the summary


def first_model(client: Client, category: str) -> str:
    """The first registered model of a category (what a command uses without --model)."""
    page = client.request("GET", "/v1/models", params={"category": category, "per_page": 1})
    data = page.get("data") or page.get("models") or []
    if not data:
        raise NotFoundError(f"no {category} model is registered: add one (e.g. `llmp models "
                            "synth --preset embed --register`) or pass --model")
    return data[0]["id"]


def embed(
    text: Annotated[list[str], typer.Argument(help="Texts to embed ('-': read one from stdin).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Embedding model id (default: the first registered).")] = None,
    dimensions: Annotated[Optional[int], typer.Option(
        "--dimensions", help="Truncate to this many dimensions (models that support it).")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Embed texts with an embedding model of the running server.

    Examples:

      llmp embed 'hello world' -m embed

      echo 'some text' | llmp embed - --json
    """
    texts = [sys.stdin.read() if t == "-" else t for t in text]
    if not texts or any(not t for t in texts):
        raise InvalidRequestError("give non-empty texts to embed", param="text")
    client = api_client()
    body: dict = {"model": model or first_model(client, "embedding"), "input": texts,
                  "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    with flags(input="TEXT", model="--model", dimensions="--dimensions"):
        resp = client.request("POST", "/v1/embeddings", json=body)
    if json_out:
        print_json(resp)
        return
    for item in resp["data"]:
        v = item["embedding"]
        head = ", ".join(f"{x:+.4f}" for x in v[:SHOWN])
        more = ", …" if len(v) > SHOWN else ""
        console.print(f"[bold]{item['index']}[/bold] ({len(v)} dims) [{head}{more}]")
    console.print(f"[dim]{resp['model']} · {resp['usage']['prompt_tokens']} tokens[/dim]")
