"""`llmp batch submit|list|status|results|cancel`: /v1/batches through the running server."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmp.cli.files import upload_file
from llmp.cli.ui import (
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    console,
    err_console,
    flags,
    print_json,
    print_rows,
    when,
)
from llmp.cli.ui import client as api_client
from llmp.client import Client
from llmp.errors import InvalidRequestError, LlmpError, NotFoundError
from llmp.services.batches import ENDPOINTS, read_lines, validate_lines

app = typer.Typer(help="Run OpenAI-style batches: a JSONL of requests executed in the "
                  "background at batch priority.", no_args_is_help=True)

FINAL = ("completed", "failed", "expired", "cancelled")
POLL_S = 0.5


def _endpoint_of(path: Path) -> str:
    """The `url` of the file's first request (the default endpoint)."""
    for raw in read_lines(path):
        if raw.strip():
            try:
                url = json.loads(raw).get("url")
            except (ValueError, AttributeError):
                break
            return url if url in ENDPOINTS else "/v1/chat/completions"
    return "/v1/chat/completions"


def _model_served(client: Client):
    def known(model: str) -> bool:
        try:
            client.request("GET", f"/v1/models/{model}")
        except NotFoundError:
            return False
        return True
    return known


def _results(client: Client, b: dict, output: Path) -> int:
    """Write the output and error files' lines (successes first) to `output`."""
    n = 0
    with open(output, "wb") as f:
        for fid in (b["output_file_id"], b["error_file_id"]):
            if fid:
                data = client.request("GET", f"/v1/files/{fid}/content")
                f.write(data)
                n += data.count(b"\n")
    return n


def _wait(client: Client, batch_id: str) -> dict:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                  console=err_console) as progress:
        task = progress.add_task("validating", total=None, failed=0)
        while True:
            b = client.request("GET", f"/v1/batches/{batch_id}")
            c = b["request_counts"]
            progress.update(task, description=b["status"], total=c["total"] or None,
                            completed=c["completed"] + c["failed"], failed=c["failed"])
            if b["status"] in FINAL:
                return b
            time.sleep(POLL_S)


def _summary(b: dict) -> None:
    c = b["request_counts"]
    colour = "green" if b["status"] == "completed" else "red" if b["status"] == "failed" else "yellow"
    console.print(f"[bold]{b['id']}[/bold] [{colour}]{b['status']}[/{colour}]: "
                  f"{c['completed']}/{c['total']} completed, {c['failed']} failed")
    for e in ((b.get("errors") or {}).get("data") or []):
        where = f"line {e['line']}: " if e.get("line") else ""
        err_console.print(f"  [red]{escape(where)}{escape(e['code'])}[/red]: {escape(e['message'])}")


@app.command()
def submit(
    path: Annotated[Path, typer.Argument(help="JSONL file: one {custom_id, method, url, body} per line.")],
    endpoint: Annotated[Optional[str], typer.Option(help=f"One of: {', '.join(ENDPOINTS)} "
                                                    "(default: the first line's url).")] = None,
    window: Annotated[str, typer.Option("--window", help="completion_window: 24h (or e.g. 1h, 30m).")] = "24h",
    wait: Annotated[bool, typer.Option("--wait", help="Follow it with a progress bar and "
                                       "write the results when it ends.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Results file for "
                                                   "--wait (default: <file>.results.jsonl).")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Validate FILE locally, upload it and create a batch.

    Examples:

      llmp batch submit requests.jsonl

      llmp batch submit requests.jsonl --wait -o results.jsonl
    """
    if not path.is_file():
        raise InvalidRequestError(f"no such file: {path}")
    out = output or path.with_suffix(".results.jsonl")
    if wait and not out.parent.is_dir():  # checked before the batch runs, not after
        raise InvalidRequestError(f"cannot write the results to {out}: no directory "
                                  f"{out.parent}", param="output")
    endpoint = endpoint or _endpoint_of(path)
    client = api_client()
    v = validate_lines(read_lines(path), endpoint, known_model=_model_served(client))
    if not v.ok:
        for e in v.errors:
            where = f"line {e['line']}" if e["line"] else str(path)
            err_console.print(f"[red]{escape(where)}[/red]: {escape(e['code'])}: {escape(e['message'])}")
        raise InvalidRequestError(f"{path}: {len(v.errors)} invalid line(s); nothing was submitted")
    f = upload_file(client, path, "batch")
    with flags(completion_window="--window", endpoint="--endpoint"):
        b = client.request("POST", "/v1/batches", json={
            "input_file_id": f["id"], "endpoint": endpoint, "completion_window": window})
    if not wait:
        if json_out:
            print_json(b)
        else:
            console.print(f"Submitted [bold]{b['id']}[/bold] ({len(v.lines)} requests, {endpoint}); "
                          f"follow it with `llmp batch status {b['id']}`")
        return
    b = _wait(client, b["id"])
    n = _results(client, b, out)
    if json_out:
        print_json(b)
    else:
        _summary(b)
        console.print(f"Wrote {n} results to {out}")
    if b["status"] == "failed":
        raise LlmpError(f"batch {b['id']} failed")


@app.command("list")
def list_(limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
          json_out: JsonOpt = False,
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List batches, newest first.

    Example:

      llmp batch list --limit 5
    """
    with flags(limit="--limit"):
        rows = api_client().request("GET", "/v1/batches", params={"limit": limit})["data"]
    print_rows(rows, json_out, ("id", "status", "endpoint", "completed", "failed", "total", "created"),
               lambda b: (b["id"], b["status"], b["endpoint"], str(b["request_counts"]["completed"]),
                          str(b["request_counts"]["failed"]), str(b["request_counts"]["total"]),
                          when(b["created_at"])),
               empty="No batches yet: `llmp batch submit FILE.jsonl`.")


@app.command()
def status(batch_id: Annotated[str, typer.Argument(help="The batch's id (batch_...).")],
           json_out: JsonOpt = False,
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A batch's status, counts, timestamps and validation errors.

    Example:

      llmp batch status batch_abc123
    """
    b = api_client().request("GET", f"/v1/batches/{batch_id}")
    if json_out:
        print_json(b)
        return
    _summary(b)
    for k in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at", "expires_at"):
        if b.get(k):
            console.print(f"  {k}: {when(b[k])}")
    for k in ("input_file_id", "output_file_id", "error_file_id"):
        if b.get(k):
            console.print(f"  {k}: {b[k]}")


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(metavar="BATCH_ID", help="The batch's id (batch_...).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="PATH",
        help="Where to write them (default: <batch>.results.jsonl).")] = None,
    url: UrlOpt = None, api_key: ApiKeyOpt = None,
) -> None:
    """Write a finished batch's results (output then error lines) to a file. A batch that
    failed says so, shows its errors and exits non-zero.

    Example:

      llmp batch results batch_abc123 -o results.jsonl
    """
    client = api_client()
    b = client.request("GET", f"/v1/batches/{batch_id}")
    if b["status"] not in FINAL:
        raise InvalidRequestError(f"batch {batch_id} is {b['status']}; results come when it ends "
                                  f"(`llmp batch status {batch_id}`)")
    out = output or Path(f"{batch_id}.results.jsonl")
    if not b["output_file_id"] and not b["error_file_id"]:
        _summary(b)
        if b["status"] == "failed":
            raise LlmpError(f"batch {batch_id} failed with no results (errors above); nothing "
                            "was written")
        console.print(f"Batch {batch_id} is {b['status']} with no results; nothing was written.")
        return
    n = _results(client, b, out)
    if b["status"] == "failed":
        _summary(b)
        console.print(f"Wrote {n} results to {out}")
        raise LlmpError(f"batch {batch_id} failed")
    console.print(f"Wrote {n} results to {out}")


@app.command()
def cancel(batch_id: Annotated[str, typer.Argument(help="The batch's id (batch_...).")],
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Cancel a batch: finished lines are kept, the rest are reported cancelled.

    Example:

      llmp batch cancel batch_abc123
    """
    b = api_client().request("POST", f"/v1/batches/{batch_id}/cancel")
    console.print(f"{b['id']}: {b['status']}")
