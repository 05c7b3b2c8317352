"""`llmp files upload|list|show|download|rm`: /v1/files through the running server."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from llmp.cli.ui import (
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    console,
    err_console,
    flags,
    human_bytes,
    print_json,
    print_rows,
    when,
)
from llmp.cli.ui import client as api_client
from llmp.client import Client
from llmp.errors import InvalidRequestError
from llmp.services.files import PURPOSES, UPLOAD_PURPOSES

app = typer.Typer(help="Upload, list, show, download and delete files (batch inputs, results, "
                  "fine-tuning data).", no_args_is_help=True)


#: uploads of at least this many bytes show a progress bar
PROGRESS_MIN = 8 << 20


def upload_file(client: Client, path: Path, purpose: str) -> dict:
    """Upload `path`, streamed from disk; a progress bar on stderr for files of PROGRESS_MIN
    bytes or more."""
    if not path.is_file():
        raise InvalidRequestError(f"no such file: {path}")
    files = {"purpose": purpose, "file": (path.name, path)}
    if path.stat().st_size < PROGRESS_MIN:
        return client.request("POST", "/v1/files", files=files)
    with Progress(TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(path.name, total=None)
        return client.request("POST", "/v1/files", files=files, progress=lambda sent, total:
                              bar.update(task, completed=sent, total=total))


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(help="The file to upload.")],
    purpose: Annotated[str, typer.Option(help=f"One of: {', '.join(UPLOAD_PURPOSES)}.")] = "batch",
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Upload a file; prints its id.

    Example:

      llmp files upload requests.jsonl --purpose batch
    """
    with flags(purpose="--purpose", file="PATH"):
        f = upload_file(api_client(), path, purpose)
    if json_out:
        print_json(f)
        return
    console.print(f"Uploaded [bold]{f['id']}[/bold] ({f['filename']}, {human_bytes(f['bytes'])}, "
                  f"purpose {f['purpose']}, sha256 {f['sha256'][:12]}...)")


@app.command("list")
def list_(
    purpose: Annotated[Optional[str], typer.Option(help=f"Only this purpose: {', '.join(PURPOSES)}.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 100,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """List files, newest first.

    Example:

      llmp files list --purpose batch_output --limit 10
    """
    with flags(purpose="--purpose", limit="--limit"):
        files = api_client().request("GET", "/v1/files",
                                     params={"purpose": purpose, "limit": limit})["data"]
    print_rows(files, json_out, ("id", "filename", "purpose", "size", "created", "status"),
               lambda f: (f["id"], f["filename"], f["purpose"], human_bytes(f["bytes"]),
                          when(f["created_at"]), f["status"]),
               empty="No files yet: `llmp files upload PATH`.")


@app.command()
def show(file_id: Annotated[str, typer.Argument(help="The file's id (file_...).")],
         json_out: JsonOpt = False,
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Show a file's details.

    Examples:

      llmp files show file_abc123

      llmp files show file_abc123 --json
    """
    f = api_client().request("GET", f"/v1/files/{file_id}")
    if json_out:
        print_json(f)
        return
    for k in ("id", "filename", "purpose", "bytes", "sha256", "status", "created_at"):
        v = when(f[k]) if k == "created_at" else f[k]
        console.print(f"[bold]{k}[/bold]: {v}")


@app.command()
def download(
    file_id: Annotated[str, typer.Argument(help="The file's id (file_...).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write it "
                                                   "(default: its filename; '-' for stdout).")] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download a file's content.

    Examples:

      llmp files download file_abc123 -o out.jsonl

      llmp files download file_abc123 -o - | head
    """
    client = api_client()
    data = client.request("GET", f"/v1/files/{file_id}/content")
    if str(output) == "-":
        typer.echo(data.decode("utf-8", "replace"), nl=False)
        return
    dest = output or Path(client.request("GET", f"/v1/files/{file_id}")["filename"])
    dest.write_bytes(data)
    console.print(f"Wrote {dest} ({human_bytes(len(data))})")


@app.command()
def rm(file_id: Annotated[str, typer.Argument(help="The file's id (file_...).")],
    url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Delete a file.

    Example:

      llmp files rm file_abc123
    """
    api_client().request("DELETE", f"/v1/files/{file_id}")
    console.print(f"Deleted {file_id}.")
