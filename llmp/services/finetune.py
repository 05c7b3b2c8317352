"""Fine-tuning jobs (/v1/fine_tuning/jobs and the spec's /v1/fine-tuning/jobs): OpenAI's
fine-tuning API on local LoRA training.

Life cycle:

    queued -> running -> succeeded | failed | cancelled
    queued | running -> paused -> queued (resume: from the last checkpoint)

Everything is checked at create (`validate_training_file`: chat-format lines, roles,
non-empty content, at least one assistant message, `weight` 0/1, at least MIN_EXAMPLES
examples; errors name line numbers; the base model must have a Hugging Face source); a job
that fails those checks is never stored. Valid jobs are rows run by the durable job runner
(llmp.jobs), one at a time: `FineTuneHandler.run` starts one worker process per job
(`python -m llmp.models.train`, transformers + peft), turns its stdout into events,
checkpoints and the job's status, and on success registers the adapter (converted to GGUF by
the worker) as the model `ft:<base>:<owner>:<suffix>:<job id>`, served at once on the base.
Each epoch's checkpoint is a model too (`<that name>:ckpt-step-N`); the last
KEEP_CHECKPOINTS are kept.

Cancel stops the worker within CANCEL_GRACE_S (SIGTERM, then SIGKILL); pause stops it and a
resume continues from the last checkpoint; a server stopped cleanly queues the running job
again; a server killed mid-job finds it "running" on restart and resumes it from its last
checkpoint (the runner's crash guard ends it after two such crashes). A worker that dies
(out of memory, bad data) fails the job with the reason in `error`.

`result_files`: one `fine-tune-results` file, a CSV of step, train_loss, valid_loss,
train_accuracy, valid_accuracy. `trained_tokens` is recorded as one usage row (prompt tokens
of the endpoint /v1/fine_tuning/jobs, the base model), billed at the base's training price
per 1K tokens (`llmp models set-price --training`). Creating a job goes through the key's
limits: its request rate, and its monthly quotas (the job is one request; its estimated trained
tokens, the training file's tokens x n_epochs, and their cost must fit in what the key has left,
with the estimates of its unfinished jobs, else 429 quota_exceeded). Webhooks:
fine_tuning.job.succeeded (+ the spec's fine_tuning.job.completed), fine_tuning.job.failed,
fine_tuning.job.cancelled.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sqlite_utils import Database

import llmp
from llmp.config import Settings
from llmp.db import finetune as ft_db
from llmp.db import models as db_models
from llmp.db.lists import found
from llmp.db.writer import write
from llmp.errors import InvalidRequestError, LlmpError, NotFoundError
from llmp.events import Bus
from llmp.ids import random_base62
from llmp.jobs.runner import JobContext, JobRunner
from llmp.models import registry
from llmp.protocol.base import parse, parse_json
from llmp.protocol.finetune import TARGET_MODULES, CreateFineTuningJobRequest, TrainingLine
from llmp.services import usage as usage_service
from llmp.services.files import FileStore
from llmp.services.limits import Limiter
from llmp.services.lists import check_limit, list_object, owner_scope

log = logging.getLogger(__name__)

KIND = "fine_tuning"
ENDPOINT = "/v1/fine_tuning/jobs"
MIN_EXAMPLES = 10
MAX_REPORTED_ERRORS = 20
#: the learning rate a multiplier of 1 ("auto") means (LoRA's usual)
BASE_LEARNING_RATE = 2e-4
#: checkpoints kept per job (as OpenAI: the last three epochs); older ones, their files and
#: their served models are removed
KEEP_CHECKPOINTS = 3
#: the worker's niceness on CPU: training yields the cores to inference
WORKER_NICE = 10
CANCEL_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long (cancel within 5 s)
FINAL = ft_db.FINAL
WEBHOOKS = {"succeeded": ("fine_tuning.job.succeeded", "fine_tuning.job.completed"),
            "failed": ("fine_tuning.job.failed",),
            "cancelled": ("fine_tuning.job.cancelled",)}


def new_job_id() -> str:
    return "ftjob-" + random_base62(24)


def _event(job_id: str, message: str, *, level: str = "info", type: str = "message",
           data: dict | None = None) -> dict:
    return {"id": "ftevent-" + random_base62(24), "job_id": job_id,
            "created_at": int(time.time()), "level": level, "message": message, "type": type,
            "data": json.dumps(data or {})}


# -- validation ------------------------------------------------------------------------------------

def validate_training_file(lines: Any, *, param: str = "training_file",
                           min_examples: int = MIN_EXAMPLES) -> int:
    """Check a chat fine-tuning file (JSONL); returns the number of examples, or raises one
    InvalidRequestError naming the bad lines (1-based)."""
    errors: list[str] = []
    count = 0
    for n, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        count += 1
        try:
            obj = parse_json(text)
        except ValueError as e:
            errors.append(f"line {n}: not valid JSON ({e})")
        else:
            if not isinstance(obj, dict):
                errors.append(f"line {n}: not a JSON object")
            elif "messages" not in obj:
                errors.append(f"line {n}: missing 'messages' (each line is "
                              '{"messages": [{"role": ..., "content": ...}, ...]})')
            else:
                try:
                    parse(TrainingLine, obj)
                except InvalidRequestError as e:
                    errors.append(f"line {n}: {e.param + ': ' if e.param else ''}{e.message}")
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise InvalidRequestError(f"Invalid {param.replace('_', ' ')}: " + "; ".join(errors),
                                  param=param, code=f"invalid_{param}")
    if count < min_examples:
        raise InvalidRequestError(f"The {param.replace('_', ' ')} has {count} example(s); at "
                                  f"least {min_examples} are needed", param=param,
                                  code=f"invalid_{param}")
    return count


#: tokens a chat template adds per message (role markers), in the length estimate
TEMPLATE_TOKENS_PER_MESSAGE = 8


def _example_sizes(base: dict, path: Path) -> list[int] | None:
    """Each example's length in tokens, estimated with the base's own tokenizer
    (tokenizer.json of a local Hugging Face source: its messages' tokens plus
    TEMPLATE_TOKENS_PER_MESSAGE each); None when that tokenizer is not on this machine."""
    src = Path(str(base.get("hf_source") or "")).expanduser()
    tj = src / "tokenizer.json"
    if not tj.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tj))
    except Exception:  # noqa: BLE001 - an estimate only
        return None
    sizes = []
    for raw in _lines(path):
        if not raw.strip():
            sizes.append(0)
            continue
        msgs = json.loads(raw)["messages"]
        texts = [m.get("content") if isinstance(m.get("content"), str)
                 else json.dumps(m.get("content") or m.get("tool_calls") or "") for m in msgs]
        sizes.append(sum(len(t) for t in tok.encode_batch(texts, add_special_tokens=False))
                     + TEMPLATE_TOKENS_PER_MESSAGE * len(msgs))
    return sizes


def check_lengths(base: dict, path: Path, context: int, param: str,
                  sizes: list[int] | None = None) -> None:
    """Report the examples longer than the model's context (`_example_sizes`). Skipped when
    the base's tokenizer is not on this machine; the worker checks the exact rendered length
    anyway."""
    sizes = _example_sizes(base, path) if sizes is None else sizes
    errors = []
    for n, size in enumerate(sizes or [], 1):
        if size > context:
            errors.append(f"line {n}: about {size} tokens, more than the model's context of "
                          f"{context}")
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        raise InvalidRequestError(f"Invalid {param.replace('_', ' ')}: " + "; ".join(errors),
                                  param=param, code=f"invalid_{param}")


#: bytes per token in the trained-tokens estimate when the base's tokenizer is not here
BYTES_PER_TOKEN = 4


def estimate_epoch_tokens(base: dict, path: Path, sizes: list[int] | None = None) -> int:
    """The training file's tokens (one epoch): `_example_sizes` summed, else its size in bytes
    / BYTES_PER_TOKEN."""
    sizes = _example_sizes(base, path) if sizes is None else sizes
    if sizes is not None:
        return sum(sizes)
    return math.ceil(path.stat().st_size / BYTES_PER_TOKEN)


def resolve_hyperparameters(req: CreateFineTuningJobRequest, n_examples: int) -> dict:
    """"auto" turned into values from the dataset's size."""
    hp = req.resolved_hyperparameters()
    n_epochs = hp.n_epochs if hp.n_epochs != "auto" else min(10, max(3, math.ceil(100 / n_examples)))
    batch = hp.batch_size if hp.batch_size != "auto" else min(8, max(1, n_examples // 32))
    mult = hp.learning_rate_multiplier if hp.learning_rate_multiplier != "auto" else 1.0
    return {"n_epochs": int(n_epochs), "batch_size": int(batch),
            "learning_rate_multiplier": float(mult)}


def _model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    owner = registry.slugify(owner)[:16] or "local"
    suffix = registry.slugify(suffix)[:32] if suffix else ""
    return f"ft:{base[:64]}:{owner}:{suffix}:{job_id.lower()}"


# -- API objects -----------------------------------------------------------------------------------

def to_api(row: dict) -> dict:
    hp = json.loads(row["resolved"] or row["hyperparameters"] or "{}")
    hyper = {k: hp.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    extra = json.loads(row["method"] or "{}")
    return {
        "id": row["id"], "object": "fine_tuning.job", "model": row["model"],
        "created_at": row["created_at"], "finished_at": row["finished_at"],
        "fine_tuned_model": row["fine_tuned_model"], "organization_id": "org-local",
        "result_files": json.loads(row["result_files"] or "[]"), "status": row["status"],
        "validation_file": row["validation_file"], "training_file": row["training_file"],
        "hyperparameters": hyper, "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None,
        "seed": row["seed"], "estimated_finish": row["estimated_finish"],
        "integrations": [], "user_provided_suffix": row["suffix"],
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "lora": extra.get("lora"),  # llmp's extension
    }


def event_api(row: dict) -> dict:
    return {"object": "fine_tuning.job.event", "id": row["id"], "created_at": row["created_at"],
            "level": row["level"], "message": row["message"],
            "data": json.loads(row["data"] or "{}"), "type": row["type"] or "message"}


def checkpoint_api(row: dict) -> dict:
    return {"object": "fine_tuning.job.checkpoint", "id": row["id"],
            "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
            "step_number": row["step_number"], "metrics": json.loads(row["metrics"] or "{}"),
            "fine_tuning_job_id": row["job_id"]}


class FineTuning:
    """The API over one home."""

    def __init__(self, db: Database, settings: Settings, store: FileStore,
                 runner: JobRunner | None = None, *, limiter: Limiter | None = None):
        """`limiter`: the server's; the key's monthly quotas apply at create."""
        self.db = db
        self.settings = settings
        self.store = store
        self.runner = runner
        self.limiter = limiter

    def _file(self, file_id: str, key: dict, param: str) -> Path:
        try:
            f = self.store.row(file_id, key)
        except NotFoundError as e:
            raise InvalidRequestError(e.message, param=param, code="file_not_found") from None
        if f["purpose"] != "fine-tune":
            raise InvalidRequestError(
                f"File {file_id!r} has purpose {f['purpose']!r}; fine-tuning needs a file "
                "uploaded with purpose 'fine-tune'", param=param, code="invalid_file_purpose")
        return self.store.path(f)

    def base_model(self, model: str) -> dict:
        try:
            rec = registry.resolve(self.db, model)
        except NotFoundError:
            raise InvalidRequestError(f"The model {model!r} does not exist", param="model",
                                      code="model_not_found") from None
        if rec.get("parent"):
            raise InvalidRequestError(
                f"{rec['id']} is an adapter; fine-tune its base {rec['parent']} instead",
                param="model", code="model_not_available")
        src = rec.get("hf_source")
        if not src:
            raise InvalidRequestError(
                f"The model {rec['id']!r} has no Hugging Face source to train on: register it "
                "with `llmp models convert FOLDER` or `llmp models add FILE --hf-source REPO` "
                "(models pulled from the hub record theirs)", param="model",
                code="model_not_trainable")
        if src.startswith(("/", "~", ".")) and not Path(src).expanduser().is_dir():
            raise InvalidRequestError(f"The Hugging Face source of {rec['id']!r} ({src}) is "
                                      "not a folder on this machine", param="model",
                                      code="model_not_trainable")
        return rec

    async def create(self, key: dict, body: Any) -> dict:
        req = body if isinstance(body, CreateFineTuningJobRequest) else \
            parse(CreateFineTuningJobRequest, body)
        base = self.base_model(req.model)
        train = self._file(req.training_file, key, "training_file")
        valid = self._file(req.validation_file, key, "validation_file") \
            if req.validation_file else None
        n = await asyncio.to_thread(lambda: validate_training_file(_lines(train)))
        if valid is not None:
            await asyncio.to_thread(lambda: validate_training_file(
                _lines(valid), param="validation_file", min_examples=1))
        ctx = int(base.get("context_length") or 0)
        sizes = await asyncio.to_thread(_example_sizes, base, train)
        if ctx:
            await asyncio.to_thread(check_lengths, base, train, ctx, "training_file", sizes)
            if valid is not None:
                await asyncio.to_thread(check_lengths, base, valid, ctx, "validation_file")
        hp = resolve_hyperparameters(req, n)
        lo = req.lora_options()
        lora = {"rank": int(lo.rank), "alpha": float(lo.alpha or 2 * lo.rank),
                "target_modules": list(lo.target_modules or TARGET_MODULES)}
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(3), "big")
        job_id = new_job_id()
        # the key's monthly quotas, as on every path that spends compute: a job is one request
        # of the month and may train up to its estimated tokens (the file's tokens x
        # n_epochs), charged when it records its trained tokens; until then the key's
        # unfinished jobs hold theirs (read here and reserved with no await in between, so
        # two creates cannot both take the same room)
        epoch = await asyncio.to_thread(estimate_epoch_tokens, base, train, sizes)
        tokens = epoch * hp["n_epochs"]
        priced = db_models.get(self.db, base["id"]) or base
        cost = tokens * float(priced.get("price_training") or 0.0) / 1000.0
        hp = {**hp, "estimated_tokens": tokens, "estimated_cost": cost}
        admission = None
        if self.limiter is not None:
            held = [json.loads(r["resolved"] or "{}")
                    for r in ft_db.unfinished(self.db, key["id"])]
            held_tokens = sum(int(h.get("estimated_tokens") or 0) for h in held)
            held_cost = sum(float(h.get("estimated_cost") or 0.0) for h in held)
            others = f" (+ {held_tokens} of this key's {len(held)} unfinished job(s))" \
                if held else ""
            admission = self.limiter.admit(
                key, tokens + held_tokens, cost=cost + held_cost, per_minute=False,
                requests=1 + len(held),
                reserving=f"this fine-tuning job may train about {tokens} tokens ({epoch} per epoch "
                f"x {hp['n_epochs']} epochs){others}",
                fit="use a smaller training file or fewer epochs to fit")
        try:
            return await self._insert(key, req, base, job_id, n, hp, lora, seed)
        finally:
            if admission is not None:  # the job's row holds its share from now on
                self.limiter.settle_admission(admission, 0)  # type: ignore[union-attr]

    async def _insert(self, key: dict, req: CreateFineTuningJobRequest, base: dict, job_id: str,
                      n: int, hp: dict, lora: dict, seed: int) -> dict:
        now = int(time.time())
        record = {
            "id": job_id, "owner_key_id": key["id"], "model": base["id"],
            "training_file": req.training_file, "validation_file": req.validation_file,
            "status": "queued",
            "hyperparameters": json.dumps(req.resolved_hyperparameters().model_dump()),
            "resolved": json.dumps({**hp, "n_examples": n}),
            "method": json.dumps({"type": "supervised", "lora": lora}), "seed": seed,
            "suffix": req.suffix, "metadata": json.dumps(req.metadata) if req.metadata else None,
            "fine_tuned_model": None, "result_files": "[]", "trained_tokens": None,
            "error": None, "estimated_finish": None, "created_at": now}
        await write(self.db, _insert_with_event, record,
                    _event(job_id, f"Created fine-tuning job {job_id}"),
                    _event(job_id, f"Validated training file: {n} examples"))
        if self.runner is not None:
            self.runner.wake()
        return to_api(ft_db.get(self.db, job_id))  # type: ignore[arg-type]

    def row(self, job_id: str, key: dict) -> dict:
        row = ft_db.get(self.db, job_id, owner=owner_scope(key))
        if row is None:
            raise NotFoundError(f"No such fine-tuning job: {job_id!r}", param="fine_tuning_job_id",
                                code="fine_tuning_job_not_found")
        return row

    def get(self, job_id: str, key: dict) -> dict:
        return to_api(self.row(job_id, key))

    def list(self, key: dict, *, after: str | None = None, limit: int = 20,
             metadata: dict[str, str] | None = None) -> dict:
        rows, more = ft_db.page(self.db, owner=owner_scope(key), after=after,
                                limit=check_limit(limit, 100), metadata=metadata)
        return list_object([to_api(r) for r in rows], more)

    def events(self, job_id: str, key: dict, *, after: str | None = None, limit: int = 20) -> dict:
        self.row(job_id, key)
        rows, more = ft_db.events(self.db, job_id, after=after, limit=check_limit(limit, 1000))
        return list_object([event_api(r) for r in rows], more)

    def checkpoints(self, job_id: str, key: dict, *, after: str | None = None,
                    limit: int = 10) -> dict:
        self.row(job_id, key)
        rows, more = ft_db.checkpoints(self.db, job_id, after=after, limit=check_limit(limit, 100))
        return list_object([checkpoint_api(r) for r in rows], more)

    def _not(self, row: dict, what: str) -> InvalidRequestError:
        return InvalidRequestError(f"Fine-tuning job {row['id']!r} is {row['status']} and cannot "
                                   f"be {what}", param="fine_tuning_job_id",
                                   code=f"fine_tuning_job_not_{what.replace(' ', '_')}")

    async def cancel(self, job_id: str, key: dict) -> dict:
        row = self.row(job_id, key)
        if row["status"] == "cancelled":
            return to_api(row)
        if row["status"] in FINAL:
            raise self._not(row, "cancelled")
        runner = self.runner
        if runner is not None and await runner.cancel(job_id):
            await runner.wait_stopped(job_id, CANCEL_GRACE_S + 2)
        else:
            await _finish(self.db, job_id, "cancelled", allowed_from=("queued", "paused",
                                                                       "validating_files"),
                          message="Job cancelled")
        return self.get(job_id, key)

    async def pause(self, job_id: str, key: dict) -> dict:
        row = self.row(job_id, key)
        if row["status"] == "paused":
            return to_api(row)
        if row["status"] not in ("queued", "running"):
            raise self._not(row, "paused")
        runner = self.runner
        if runner is not None and await runner.pause(job_id):
            await runner.wait_stopped(job_id, CANCEL_GRACE_S + 2)
        else:
            await write(self.db, ft_db.transition, job_id, "paused", allowed_from=("queued",),
                        job_state="paused", at=time.time(),
                        event=_event(job_id, "Job paused"))
        return self.get(job_id, key)

    async def resume(self, job_id: str, key: dict) -> dict:
        row = self.row(job_id, key)
        if row["status"] != "paused":
            if row["status"] in ("queued", "running"):
                return to_api(row)
            raise self._not(row, "resumed")
        last = ft_db.last_checkpoint(self.db, job_id)
        await write(self.db, ft_db.transition, job_id, "queued", allowed_from=("paused",),
                    job_state="queued", at=time.time(), event=_event(
                        job_id, "Job resumed" + (f"; it continues from the checkpoint at step "
                                                 f"{last['step_number']}" if last else "")))
        if self.runner is not None:
            self.runner.wake()
        return self.get(job_id, key)

    async def delete_model(self, model_id: str, key: dict) -> dict:
        """DELETE /v1/models/{id}: a fine-tuned model (or checkpoint) of the key's jobs."""
        rec = db_models.get(self.db, model_id)
        if rec is None or not str(rec.get("source") or "").startswith("ftjob:"):
            raise NotFoundError(f"The model {model_id!r} does not exist or is not a "
                                "fine-tuned model", param="model", code="model_not_found")
        job_id = str(rec["source"]).split(":", 1)[1]
        self.row(job_id, key)  # 404 for another key's model
        await write(self.db, registry.remove, self.settings, model_id)
        return {"id": model_id, "object": "model", "deleted": True}


def _lines(path: Path):
    with open(path, "rb") as f:
        yield from f


def _insert_with_event(db: Database, record: dict, *events: dict) -> None:
    from llmp.db import _lock

    with _lock, db.atomic():
        ft_db.insert(db, record, kind=KIND)
        for e in events:
            ft_db.add_event(db, e)


async def _finish(db: Database, job_id: str, status: str, *, allowed_from: tuple[str, ...],
                  message: str, level: str = "info", changes: dict | None = None,
                  files: list[dict] | None = None, bus: Bus | None = None) -> bool:
    ok = await write(db, ft_db.transition, job_id, status, allowed_from=allowed_from,
                     job_state="done", at=time.time(),
                     changes={"finished_at": int(time.time()), "estimated_finish": None,
                              **(changes or {})}, files=files or [],
                     event=_event(job_id, message, level=level))
    if ok and bus is not None:
        row = found(ft_db.get(db, job_id))
        for name in WEBHOOKS.get(status, ()):
            bus.publish(name, to_api(row), key_id=row["owner_key_id"])  # type: ignore[arg-type]
    return bool(ok)


# -- execution -------------------------------------------------------------------------------------

class FineTuneHandler:
    """Runs one job: a worker process, its events and checkpoints, the result (see the module
    doc). The job runner calls it."""

    kind = KIND

    def __init__(self, db: Database, settings: Settings, store: FileStore, bus: Bus, *,
                 event_every: int | None = None, device: str = "auto"):
        self.db = db
        self.settings = settings
        self.store = store
        self.bus = bus
        self.event_every = event_every
        self.device = device
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def job_dir(self, job_id: str) -> Path:
        return self.settings.home / "fine_tuning" / job_id

    # -- the runner's calls ------------------------------------------------------------------------
    async def run(self, ctx: JobContext) -> None:
        job_id = ctx.job_id
        row = ft_db.get(self.db, job_id)
        if row is None or row["status"] not in ("queued", "running"):
            return
        base = registry.resolve(self.db, row["model"])
        last = ft_db.last_checkpoint(self.db, job_id)
        resume = last["path"] if last and last["path"] and Path(last["path"]).is_dir() else None
        msg = "Fine-tuning job started" if resume is None and ctx.attempt <= 1 else \
            (f"Fine-tuning job resumed from the checkpoint at step {last['step_number']}"
             if resume and last else "Fine-tuning job restarted from the beginning")
        await write(self.db, ft_db.transition, job_id, "running",
                    allowed_from=("queued", "running"),
                    changes={"started_at": row.get("started_at") or int(time.time()),
                             "error": None}, event=_event(job_id, msg))
        cfg = self._config(row, base, resume)
        jdir = self.job_dir(job_id)
        jdir.mkdir(parents=True, exist_ok=True)
        cfg_path = jdir / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(llmp.__file__).resolve().parent.parent)]
            + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error"}
        with open(jdir / "worker.log", "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmp.models.train", str(cfg_path),
                stdout=asyncio.subprocess.PIPE, stderr=logf, stdin=asyncio.subprocess.DEVNULL,
                env=env, start_new_session=True)
        self.procs[job_id] = proc
        state: dict[str, Any] = {"done": None, "error": None}
        pump = asyncio.create_task(self._pump(job_id, row, base, proc, state))
        stop = asyncio.create_task(ctx.stopped.wait())
        try:
            await asyncio.wait({pump, stop}, return_when=asyncio.FIRST_COMPLETED)
            if ctx.stopped.is_set() and state["done"] is None:
                await self._kill(proc)
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
                return
            await pump
            rc = await proc.wait()
        finally:
            stop.cancel()
            if proc.returncode is None:
                await self._kill(proc)
            self.procs.pop(job_id, None)
        if state["done"] is not None and rc == 0:
            if ctx.stopped.is_set() and ctx.stop_reason == "cancel":
                ctx.stop_reason = None  # it finished first: it succeeded
            await self._succeed(row, base, state["done"])
            return
        err = state["error"] or {"code": "worker_crashed", "message": self._crash_reason(jdir, rc)}
        await _finish(self.db, job_id, "failed", allowed_from=("running",), level="error",
                      message=f"Fine-tuning job failed: {err['message']}",
                      changes={"error": json.dumps({**err, "param": None})}, bus=self.bus)

    async def failed(self, job_id: str, error: BaseException) -> None:
        msg = error.message if isinstance(error, LlmpError) else f"{type(error).__name__}: {error}"
        await _finish(self.db, job_id, "failed", allowed_from=("queued", "running"),
                      level="error", message=f"Fine-tuning job failed: {msg}",
                      changes={"error": json.dumps({"code": "internal_error", "message": msg,
                                                    "param": None})}, bus=self.bus)

    async def stopped(self, job_id: str, reason: str) -> None:
        if reason == "cancel":
            await _finish(self.db, job_id, "cancelled", allowed_from=("queued", "running",
                                                                       "paused"),
                          message="Job cancelled", bus=self.bus)
            return
        last = ft_db.last_checkpoint(self.db, job_id)
        where = f"the checkpoint at step {last['step_number']}" if last else "the beginning"
        if reason == "pause":
            await write(self.db, ft_db.transition, job_id, "paused", allowed_from=("running",),
                        changes={"estimated_finish": None}, event=_event(
                            job_id, f"Job paused; a resume continues from {where}"))
        else:
            await write(self.db, ft_db.transition, job_id, "queued", allowed_from=("running",),
                        changes={"estimated_finish": None}, event=_event(
                            job_id, f"The server stopped; the job resumes from {where} when it "
                            "starts again"))

    async def recover(self, job_id: str, crashes: int, *, final: bool) -> bool:
        row = ft_db.get(self.db, job_id)
        if row is None or row["status"] in FINAL:
            return False
        if row["status"] == "paused":
            await write(self.db, ft_db.transition, job_id, "paused", allowed_from=("paused",),
                        job_state="paused", at=time.time())
            return False
        last = ft_db.last_checkpoint(self.db, job_id)
        if final:
            msg = (f"The server stopped unexpectedly while this job was running ({crashes} "
                   "times); it is not resumed again")
            await _finish(self.db, job_id, "failed", allowed_from=("queued", "running"),
                          level="error", message=msg, bus=self.bus,
                          changes={"error": json.dumps({"code": "server_crashed",
                                                        "message": msg, "param": None})})
            return False
        where = f"the checkpoint at step {last['step_number']}" if last else "the beginning"
        await write(self.db, ft_db.transition, job_id, "queued",
                    allowed_from=("queued", "running"), changes={"estimated_finish": None},
                    event=_event(job_id, "The server stopped unexpectedly while this job was "
                                 f"running; it resumes from {where}", level="warn"))
        return True

    # -- helpers -----------------------------------------------------------------------------------
    def _config(self, row: dict, base: dict, resume: str | None) -> dict:
        hp = json.loads(row["resolved"])
        lora = json.loads(row["method"])["lora"]
        train = self.store.path(self.store.row(row["training_file"], None))
        valid = self.store.path(self.store.row(row["validation_file"], None)) \
            if row["validation_file"] else None
        n, bs = hp.get("n_examples") or 1, hp["batch_size"]
        total = math.ceil(n / bs) * hp["n_epochs"]
        src = str(base["hf_source"])
        if src.startswith("~"):
            src = str(Path(src).expanduser())
        return {
            "job_id": row["id"], "hf_source": src, "base_gguf": base["path"],
            "train_path": str(train), "valid_path": str(valid) if valid else None,
            "out_dir": str(self.job_dir(row["id"])), "n_epochs": hp["n_epochs"],
            "batch_size": bs, "learning_rate": BASE_LEARNING_RATE * hp["learning_rate_multiplier"],
            "seed": row["seed"], "rank": lora["rank"], "alpha": lora["alpha"],
            "targets": lora["target_modules"], "resume": resume,
            "event_every": self.event_every or max(1, total // 20),
            "max_len": base.get("context_length") or None, "device": self.device,
            "threads": max(1, min(4, self.settings.threads)),
            "name": row["fine_tuned_model"] or row["id"],
            "nice": WORKER_NICE if self.device != "cuda" else 0}

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the worker's process group, SIGKILL it after CANCEL_GRACE_S."""
        for sig, wait in ((signal.SIGTERM, CANCEL_GRACE_S), (signal.SIGKILL, 5.0)):
            if proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), wait)

    @staticmethod
    def _crash_reason(jdir: Path, rc: int | None) -> str:
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        if rc == -signal.SIGKILL:
            how += " (out of memory?)"
        tail = ""
        with contextlib.suppress(OSError):
            lines = [ln for ln in (jdir / "worker.log").read_text(errors="replace").splitlines()
                     if ln.strip()]
            if lines:
                tail = f": {lines[-1][:500]}"
        return f"the training worker stopped ({how}){tail}"

    async def _pump(self, job_id: str, row: dict, base: dict,
                    proc: asyncio.subprocess.Process, state: dict) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "message":
                await write(self.db, ft_db.add_event,
                            _event(job_id, msg["message"], data=msg.get("data")))
            elif kind == "metrics":
                data = {k: msg.get(k) for k in ("step", "total_steps", "epoch", "train_loss",
                                               "train_mean_token_accuracy", "learning_rate",
                                               "tokens_per_second", "eta_seconds")}
                eta = msg.get("eta_seconds")
                await write(self.db, _metrics, job_id, _event(
                    job_id, f"Step {msg['step']}/{msg['total_steps']}: training loss="
                    f"{msg['train_loss']:.4f}", type="metrics", data=data),
                    int(time.time() + eta) if eta is not None else None)
            elif kind == "checkpoint":
                await self._checkpoint(job_id, row, base, msg)
            elif kind == "done":
                state["done"] = msg
            elif kind == "error":
                state["error"] = {"code": msg.get("code") or "training_failed",
                                  "message": msg.get("message") or "training failed"}

    def _name(self, row: dict) -> str:
        from llmp.db import keys as db_keys

        key = db_keys.by_id(self.db, row["owner_key_id"]) if row["owner_key_id"] else None
        return _model_name(row["model"], (key or {}).get("name") or "local", row["suffix"],
                           row["id"])

    async def _register(self, gguf: str, base: dict, model_id: str, job_id: str) -> dict:
        """Move a worker's GGUF adapter into the home's adapters/ and register it."""
        dest = self.settings.adapters_dir / f"{model_id.replace(':', '-')}.gguf"
        await asyncio.to_thread(shutil.copyfile, gguf, dest)
        try:
            rec = registry.adapter_record(self.db, self.settings, dest, base["id"],
                                          model_id=model_id, source=f"ftjob:{job_id}")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        rec["hf_source"] = base.get("hf_source")
        await write(self.db, db_models.upsert, rec)
        return rec

    async def _checkpoint(self, job_id: str, row: dict, base: dict, msg: dict) -> None:
        name = f"{self._name(row)}:ckpt-step-{msg['step']}"
        served = None
        if msg.get("gguf"):
            try:
                await self._register(msg["gguf"], base, name, job_id)
                served = name
            except LlmpError as e:
                log.warning("checkpoint %s of %s not served: %s", msg["step"], job_id, e.message)
        ckpt = {"id": "ftckpt-" + random_base62(24), "job_id": job_id,
                "created_at": int(time.time()), "step_number": msg["step"],
                "epoch": msg.get("epoch"), "metrics": json.dumps(msg.get("metrics") or {}),
                "fine_tuned_model_checkpoint": served or name, "path": msg["path"]}
        m = msg.get("metrics") or {}
        text = f"Checkpoint created at step {msg['step']} (epoch {msg.get('epoch')}): train " \
               f"loss={m.get('train_loss')}" + (f", valid loss={m['valid_loss']}"
                                                 if m.get("valid_loss") is not None else "")
        await write(self.db, ft_db.add_checkpoint, ckpt,
                    _event(job_id, text, type="metrics", data={"checkpoint": ckpt["id"], **m}))
        for old in ft_db.all_checkpoints(self.db, job_id)[KEEP_CHECKPOINTS:]:
            await self._drop_checkpoint(old)

    async def _drop_checkpoint(self, ckpt: dict) -> None:
        name = ckpt["fine_tuned_model_checkpoint"]
        if name and db_models.get(self.db, name) is not None:
            with contextlib.suppress(LlmpError):
                await write(self.db, registry.remove, self.settings, name)
        await write(self.db, ft_db.delete_checkpoint, ckpt["id"])
        if ckpt.get("path"):
            await asyncio.to_thread(shutil.rmtree, ckpt["path"], True)

    async def _succeed(self, row: dict, base: dict, done: dict) -> None:
        job_id = row["id"]
        name = self._name(row)
        try:
            if not done.get("gguf"):
                raise InvalidRequestError("the worker made no GGUF adapter")
            await self._register(done["gguf"], base, name, job_id)
        except LlmpError as e:
            await _finish(self.db, job_id, "failed", allowed_from=("running",), level="error",
                          message=f"The adapter could not be served: {e.message}",
                          changes={"error": json.dumps({"code": "adapter_conversion_failed",
                                                        "message": e.message, "param": None})},
                          bus=self.bus)
            return
        up = self.store.begin_staged()
        try:
            await asyncio.to_thread(up.write, metrics_csv(self.db, job_id).encode())
            await asyncio.to_thread(up.close)
        except BaseException:
            up.discard()
            raise
        f = self.store.record(up, owner=row["owner_key_id"], filename=f"{job_id}_results.csv",
                              purpose="fine-tune-results")
        tokens = int(done.get("trained_tokens") or 0)
        await write(self.db, ft_db.add_event, _event(
            job_id, f"Trained {tokens} tokens in {done.get('steps')} steps "
            f"({done.get('seconds')} s)", data={k: done.get(k) for k in (
                "trained_tokens", "steps", "seconds", "bitsandbytes_imported")}))
        usage = usage_service.usage_row(self.db, row["owner_key_id"], row["model"], ENDPOINT,
                                        prompt_tokens=tokens, request_id=job_id)
        priced = db_models.get(self.db, row["model"]) or base
        usage["cost"] = tokens * float(priced.get("price_training") or 0.0) / 1000.0
        usage_service.record_many(self.db, [usage], bus=self.bus)
        await _finish(self.db, job_id, "succeeded", allowed_from=("running",),
                      message="The job has successfully completed",
                      changes={"fine_tuned_model": name, "result_files": json.dumps([f["id"]]),
                               "trained_tokens": tokens}, files=[f], bus=self.bus)


def _metrics(db: Database, job_id: str, event: dict, estimated_finish: int | None) -> None:
    from llmp.db import _lock

    with _lock, db.atomic():
        ft_db.add_event(db, event)
        ft_db.update(db, job_id, {"estimated_finish": estimated_finish},
                     allowed_from=("running",))


def metrics_csv(db: Database, job_id: str) -> str:
    """step, train_loss, train_accuracy, valid_loss, valid_accuracy: every metrics event, and
    each checkpoint's validation figures at its step."""
    rows: dict[int, dict] = {}
    for e in ft_db.all_events(db, job_id, type="metrics"):
        d = json.loads(e["data"] or "{}")
        if "step" not in d or d.get("step") is None:
            continue
        r = rows.setdefault(int(d["step"]), {})
        if "checkpoint" in d:
            r.setdefault("valid_loss", d.get("valid_loss"))
            r.setdefault("valid_accuracy", d.get("valid_mean_token_accuracy"))
        else:
            r["train_loss"] = d.get("train_loss")
            r["train_accuracy"] = d.get("train_mean_token_accuracy")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy"])
    for step in sorted(rows):
        r = rows[step]
        w.writerow([step] + ["" if r.get(k) is None else r[k]
                             for k in ("train_loss", "train_accuracy", "valid_loss",
                                       "valid_accuracy")])
    return out.getvalue()
