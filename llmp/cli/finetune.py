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
    flags,
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


_HP = "method.supervised.hyperparameters."
#: the request's fields -> the flags of `llmp finetune create` (errors name what was typed)
CREATE_FLAGS = {"model": "--model", "training_file": "FILE", "validation_file": "--validation",
                f"{_HP}n_epochs": "--epochs", f"{_HP}batch_size": "--batch-size",
                f"{_HP}learning_rate_multiplier": "--lr-multiplier", "suffix": "--suffix",
                "seed": "--seed", "lora.rank": "--rank"}


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
    """Validate FILE locally, upload it and start a fine-tuning job.

    Examples:

      llmp finetune create train.jsonl -m qwen-0.5b --wait

      llmp finetune create train.jsonl -m qwen-0.5b --validation val.jsonl --epochs 3
    """
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
    with flags(**CREATE_FLAGS):
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
    """List fine-tuning jobs, newest first.

    Examples:

      llmp finetune list

      llmp finetune list --limit 5 --json
    """
    with flags(limit="--limit"):
        rows = api_client().request("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]
    print_rows(rows, json_out, ("id", "status", "model", "fine_tuned_model", "created"),
               lambda j: (j["id"], j["status"], j["model"], j["fine_tuned_model"] or "",
                          when(j["created_at"])),
               empty="No fine-tuning jobs yet: `llmp finetune create FILE --model M`.")


@app.command()
def show(job_id: JobId, json_out: JsonOpt = False, url: UrlOpt = None,
         api_key: ApiKeyOpt = None) -> None:
    """A job's status, hyper-parameters, result and error.

    Example:

      llmp finetune show ftjob-abc123
    """
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
    """A job's events, oldest first.

    Examples:

      llmp finetune events ftjob-abc123 -f

      llmp finetune events ftjob-abc123 --limit 10
    """
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
    """A job's checkpoints (one per epoch), each servable as a model.

    Example:

      llmp finetune checkpoints ftjob-abc123
    """
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
    command.__doc__ += f"\n\n    Example:\n\n      llmp finetune {verb} ftjob-abc123\n    "
    return command


for _verb in ("cancel", "pause", "resume"):
    app.command(_verb)(_action(_verb))


# -- benchmark -------------------------------------------------------------------------------------

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
          "zulu").split()


def bench_lines(n: int, seed: int = 0) -> bytes:
    """`n` synthetic chat examples (a question and a 20-40 word answer), deterministic."""
    import json
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(_WORDS) for _ in range(8))
        a = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 40)))
        out.append(json.dumps({"messages": [{"role": "user", "content": f"{i}: {q}?"},
                                            {"role": "assistant", "content": a}]}))
    return ("\n".join(out) + "\n").encode()


def _direct(hf_source: str, data: Path, epochs: int, batch: int, lr: float, seed: int,
            rank: int, workdir: Path) -> dict:
    """The same training loop run directly (the worker module in its own process, no server,
    no job system): its `done` record and wall time."""
    import json
    import os
    import subprocess
    import sys

    cfg = {"hf_source": hf_source, "base_gguf": None, "train_path": str(data),
           "out_dir": str(workdir / "direct"), "n_epochs": epochs, "batch_size": batch,
           "learning_rate": lr, "seed": seed, "rank": rank, "alpha": 2.0 * rank,
           "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"], "device": "auto",
           "event_every": max(1, -(-examples_of(data) // batch) * epochs // 20)}
    path = workdir / "direct.json"
    path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "llmp.models.train", str(path)],
                       capture_output=True, text=True, env={**os.environ,
                                                            "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    msgs = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    done = next((m for m in msgs if m["type"] == "done"), None)
    if done is None:
        err = next((m["message"] for m in msgs if m["type"] == "error"), p.stderr[-500:])
        raise LlmpError(f"the direct training run failed: {err}")
    last = [m for m in msgs if m["type"] == "metrics"]
    return {**done, "wall": wall, "tokens_per_second": last[-1]["tokens_per_second"]
            if last else None}


def examples_of(path: Path) -> int:
    return sum(1 for ln in path.read_bytes().splitlines() if ln.strip())


def bench_finetune(model: str, examples: int = 64, epochs: int = 2, batch_size: int = 4,
                   lr_multiplier: float = 1.0, rank: int = 8, json_out: bool = False) -> None:
    """Training tokens/s through the job system (a running server) against the same training
    loop run directly, on the same data, in one run."""
    import tempfile

    from llmp.services.finetune import BASE_LEARNING_RATE

    client = api_client()
    info = client.request("GET", f"/v1/models/{model}")
    src = (info.get("details") or {}).get("hf_source")
    if not src:
        raise InvalidRequestError(f"{model} has no Hugging Face source", param="model")
    with tempfile.TemporaryDirectory(prefix="llmp-bench-ft-") as tmp:
        work = Path(tmp)
        data = work / "train.jsonl"
        data.write_bytes(bench_lines(examples))
        fid = upload_file(client, data, "fine-tune")["id"]
        t0 = time.time()
        job = client.request("POST", "/v1/fine_tuning/jobs", json={
            "model": model, "training_file": fid, "seed": 1, "lora": {"rank": rank},
            "hyperparameters": {"n_epochs": epochs, "batch_size": batch_size,
                                "learning_rate_multiplier": lr_multiplier}})
        while job["status"] not in FINAL:
            time.sleep(0.2)
            job = client.request("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        job_wall = time.time() - t0
        if job["status"] != "succeeded":
            raise LlmpError(f"the job {job['id']} {job['status']}: {job.get('error')}")
        ms = _metrics(client, job["id"])
        job_tps = ms[-1]["tokens_per_second"] if ms else None
        direct = _direct(src, data, epochs, batch_size, BASE_LEARNING_RATE * lr_multiplier, 1,
                         rank, work)
    direct_tps = direct["tokens_per_second"]
    out = {"model": model, "examples": examples, "epochs": epochs, "batch_size": batch_size,
           "trained_tokens": job["trained_tokens"],
           "job": {"train_tokens_per_s": job_tps, "wall_s": round(job_wall, 2),
                   "end_to_end_tokens_per_s": round(job["trained_tokens"] / job_wall, 1)},
           "direct": {"train_tokens_per_s": round(direct_tps, 1) if direct_tps else None,
                      "wall_s": round(direct["wall"], 2),
                      "end_to_end_tokens_per_s": round(direct["trained_tokens"] / direct["wall"], 1)}}
    if job_tps and direct_tps:
        out["training_overhead_pct"] = round(100 * (1 - job_tps / direct_tps), 1)
    out["end_to_end_overhead_pct"] = round(100 * (1 - direct["wall"] / job_wall), 1)
    if json_out:
        print_json(out)
        return
    t = Table(title=f"fine-tuning {model}: {examples} examples x {epochs} epochs, batch "
              f"{batch_size}, LoRA rank {rank}")
    for c in ("", "training tok/s", "wall s", "end-to-end tok/s"):
        t.add_column(c, justify="right")
    for name in ("job", "direct"):
        r = out[name]
        t.add_row(name, str(r["train_tokens_per_s"]), str(r["wall_s"]),
                  str(r["end_to_end_tokens_per_s"]))
    console.print(t)
    console.print(f"job system overhead: training {out.get('training_overhead_pct')}%, end to "
                  f"end {out['end_to_end_overhead_pct']}% (start, validation, GGUF conversion, "
                  "registration)")


@app.command("bench")
def bench(model: Annotated[str, typer.Option("--model", "-m", help="A model with a Hugging "
                                             "Face source.")],
          examples: Annotated[int, typer.Option(help="Synthetic examples.")] = 64,
          epochs: Annotated[int, typer.Option()] = 2,
          batch_size: Annotated[int, typer.Option()] = 4,
          rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
          json_out: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Training tokens/s through the job system against the same loop run directly.

    Examples:

      llmp finetune bench -m qwen-0.5b

      llmp finetune bench -m qwen-0.5b --examples 32 --epochs 1 --json
    """
    bench_finetune(model, examples, epochs, batch_size, rank=rank, json_out=json_out)
