"""`llmp finetune create|list|show|events|checkpoints|cancel|pause|resume`: fine-tuning jobs
through the running server (/v1/fine_tuning/jobs)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmp.cli.files import upload_file
from llmp.cli.ui import (
    ApiKeyOpt,
    JsonOpt,
    UrlOpt,
    console,
    err_console,
    print_json,
    print_rows,
    when,
)
from llmp.cli.ui import client as api_client
from llmp.client import Client
from llmp.errors import InvalidRequestError, LlmpError
from llmp.services.finetune import validate_training_file

app = typer.Typer(help="Fine-tune models (LoRA) on chat examples: jobs run in the server, the "
                  "result is served at once as ft:<base>:<owner>:<suffix>:<job>.",
                  no_args_is_help=True)

FINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.5
JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The job's id (ftjob-...).")]
SPARK = "▁▂▃▄▅▆▇█"


def _lines(path: Path):
    with open(path, "rb") as f:
        yield from f


def _check(path: Path, param: str, min_examples: int) -> int:
    if not path.is_file():
        raise InvalidRequestError(f"no such file: {path}", param=param)
    return validate_training_file(_lines(path), param=param, min_examples=min_examples)


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line chart of the last `width` values."""
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1)))]
                   for v in vals)


def _metrics(client: Client, job_id: str) -> list[dict]:
    data = client.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events",
                          params={"limit": 1000})["data"]
    return [e["data"] for e in reversed(data)
            if e.get("type") == "metrics" and "train_loss" in (e.get("data") or {})
            and "total_steps" in e["data"]]


def _wait(client: Client, job_id: str) -> dict:
    """Follow a job with a progress bar (steps) and a live loss chart until it ends."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                        console=err_console)
    task = progress.add_task("queued", total=None, loss="")
    chart_line = [""]

    def render() -> Table:
        t = Table.grid()
        t.add_row(progress)
        if chart_line[0]:
            t.add_row(f"loss {chart_line[0]}")
        return t

    with Live(render(), console=err_console, refresh_per_second=4, transient=False) as live:
        while True:
            job = client.request("GET", f"/v1/fine_tuning/jobs/{job_id}")
            m = _metrics(client, job_id) if job["status"] in ("running", *FINAL) else []
            if m:
                last = m[-1]
                progress.update(task, total=last["total_steps"], completed=last["step"],
                                loss=f"loss {last['train_loss']:.4f}")
                chart_line[0] = sparkline([x["train_loss"] for x in m])
            progress.update(task, description=job["status"])
            live.update(render())
            if job["status"] in FINAL:
                return job
            time.sleep(POLL_S)


def _summary(job: dict) -> None:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job["status"],
                                                                              "cyan")
    console.print(f"[bold]{job['id']}[/bold] [{colour}]{job['status']}[/{colour}] "
                  f"model={escape(job['model'])}")
    if job.get("fine_tuned_model"):
        console.print(f"  fine_tuned_model: [bold]{escape(job['fine_tuned_model'])}[/bold]")
    if job.get("error"):
        err_console.print(f"  [red]{escape(job['error'].get('code') or '')}[/red]: "
                          f"{escape(job['error'].get('message') or '')}")


@app.command()
def create(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="Training data: JSONL, one "
                                         '{"messages": [...]} chat example per line.')],
    model: Annotated[str, typer.Option("--model", "-m", help="The base model (it needs a "
                                       "Hugging Face source).")],
    validation: Annotated[Optional[Path], typer.Option("--validation", help="Validation data "
                                                       "(same format).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="n_epochs (default: auto).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="batch_size (default: auto).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr-multiplier", help="learning_rate_multiplier "
                                                "(default: auto).")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Up to 64 characters in the "
                                                  "model's name.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (default 8).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar and "
                                       "a live loss chart.")] = False,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Validate FILE locally, upload it and start a fine-tuning job."""
    n = _check(path, "training_file", 10)
    if validation is not None:
        _check(validation, "validation_file", 1)
    client = api_client()
    body: dict = {"model": model, "training_file": upload_file(client, path, "fine-tune")["id"]}
    if validation is not None:
        body["validation_file"] = upload_file(client, validation, "fine-tune")["id"]
    hp = {k: v for k, v in (("n_epochs", epochs), ("batch_size", batch_size),
                            ("learning_rate_multiplier", lr)) if v is not None}
    if hp:
        body["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
    if suffix:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    if rank is not None:
        body["lora"] = {"rank": rank}
    job = client.request("POST", "/v1/fine_tuning/jobs", json=body)
    if not wait:
        if json_out:
            print_json(job)
        else:
            console.print(f"Created [bold]{job['id']}[/bold] ({n} examples, "
                          f"{job['hyperparameters']['n_epochs']} epochs); follow it with "
                          f"`llmp finetune events {job['id']}`")
        return
    job = _wait(client, job["id"])
    if json_out:
        print_json(job)
    else:
        _summary(job)
    if job["status"] != "succeeded":
        raise LlmpError(f"fine-tuning job {job['id']} {job['status']}")


@app.command("list")
def list_(limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
          json_out: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List fine-tuning jobs, newest first."""
    rows = api_client().request("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]
    print_rows(rows, json_out, ("id", "status", "model", "fine_tuned_model", "created"),
               lambda j: (j["id"], j["status"], j["model"], j["fine_tuned_model"] or "",
                          when(j["created_at"])),
               empty="No fine-tuning jobs yet: `llmp finetune create FILE --model M`.")


@app.command()
def show(job_id: JobId, json_out: JsonOpt = False, url: UrlOpt = None,
         api_key: ApiKeyOpt = None) -> None:
    """A job's status, hyper-parameters, result and error."""
    job = api_client().request("GET", f"/v1/fine_tuning/jobs/{job_id}")
    if json_out:
        print_json(job)
        return
    _summary(job)
    console.print(f"  hyperparameters: {job['hyperparameters']}")
    for k in ("training_file", "validation_file", "trained_tokens", "seed", "result_files"):
        if job.get(k):
            console.print(f"  {k}: {job[k]}")
    for k in ("created_at", "estimated_finish", "finished_at"):
        if job.get(k):
            console.print(f"  {k}: {when(job[k])}")


@app.command()
def events(job_id: JobId,
           follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new "
                                                "events until the job ends.")] = False,
           limit: Annotated[int, typer.Option(help="The last this many events.")] = 50,
           json_out: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A job's events, oldest first."""
    client = api_client()
    seen: set[str] = set()
    while True:
        data = client.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events",
                              params={"limit": limit})["data"]
        new = [e for e in reversed(data) if e["id"] not in seen]
        for e in new:
            seen.add(e["id"])
            if json_out:
                print_json(e)
            else:
                colour = {"error": "red", "warn": "yellow"}.get(e["level"], "dim")
                console.print(f"[{colour}]{when(e['created_at'])}[/{colour}] "
                              f"{escape(e['message'])}")
        if not follow:
            return
        job = client.request("GET", f"/v1/fine_tuning/jobs/{job_id}")
        if job["status"] in FINAL and not new:
            return
        time.sleep(POLL_S)


@app.command()
def checkpoints(job_id: JobId, json_out: JsonOpt = False, url: UrlOpt = None,
                api_key: ApiKeyOpt = None) -> None:
    """A job's checkpoints (one per epoch), each servable as a model."""
    rows = api_client().request("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
                                params={"limit": 100})["data"]
    print_rows(rows, json_out, ("step", "train_loss", "valid_loss", "model"),
               lambda c: (str(c["step_number"]), str(c["metrics"].get("train_loss", "")),
                          str(c["metrics"].get("valid_loss", "")),
                          c["fine_tuned_model_checkpoint"]),
               empty="No checkpoints yet.")


def _action(verb: str):
    def command(job_id: JobId, json_out: JsonOpt = False, url: UrlOpt = None,
                api_key: ApiKeyOpt = None) -> None:
        job = api_client().request("POST", f"/v1/fine_tuning/jobs/{job_id}/{verb}")
        if json_out:
            print_json(job)
        else:
            _summary(job)

    command.__doc__ = {"cancel": "Cancel a job (its worker stops within seconds).",
                       "pause": "Pause a job; `resume` continues from its last checkpoint.",
                       "resume": "Resume a paused job from its last checkpoint."}[verb]
    return command


for _verb in ("cancel", "pause", "resume"):
    app.command(_verb)(_action(_verb))
