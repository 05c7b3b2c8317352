"""`llmp run MODEL "prompt"`: one prompt, the reply streamed to stdout (and nothing else)."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from llmp.cli.ui import ApiKeyOpt, UrlOpt, client, flags, print_json
from llmp.errors import InvalidRequestError


def read_stdin() -> str:
    """What is piped in ('' when stdin is a terminal or closed)."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return ""
        return sys.stdin.read()
    except (OSError, ValueError):
        return ""


def run(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model id or alias.")],
    prompt: Annotated[Optional[str], typer.Argument(
        metavar="PROMPT", help="The prompt; piped stdin is added after it (or is the prompt).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", metavar="TEXT",
                                                  help="A system prompt.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", help="Stop after N tokens (default: the model's context).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", "-t", metavar="T", help="Sampling temperature (default 1.0).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="N",
                                                help="Seed for reproducible sampling.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the whole chat.completion response as JSON (no streaming).")] = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Send one prompt to MODEL and stream the reply to stdout.

    Only the reply goes to stdout (errors go to stderr), so the output can be piped or
    redirected. Text piped in is appended to PROMPT, separated by a blank line.

    Examples:

      llmp run tiny "Why is the sky blue?"

      git diff | llmp run tiny "Write a commit message for this diff:"

      llmp run tiny "Hi" --json | jq .usage
    """
    piped = read_stdin()
    text = "\n\n".join(p for p in (prompt, piped.strip("\n")) if p)
    if not text.strip():
        raise InvalidRequestError("give a PROMPT, or pipe text in (`echo hi | llmp run MODEL`)",
                                  param="prompt")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed}
    body = {k: v for k, v in body.items() if v is not None}
    c = client()
    with flags(model="MODEL", max_tokens="--max-tokens", temperature="--temperature",
               seed="--seed"):
        if json_out:
            print_json(c.request("POST", "/v1/chat/completions", json=body))
            return
        body["stream"] = True
        out = sys.stdout
        last = "\n"
        for event in c.request("POST", "/v1/chat/completions", json=body, stream=True):
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    out.write(piece)
                    out.flush()
                    last = piece
    if not last.endswith("\n"):
        out.write("\n")
    out.flush()
