"""The batch runner: drives every active batch of a home (as jobs of the durable job
runner), line by line, through the engine at batch priority."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from llmp import events
from llmp.db import batches as batches_db
from llmp.db import jobs as jobs_db
from llmp.db import keys as db_keys
from llmp.db import models as db_models
from llmp.db.lists import found
from llmp.db.writer import write
from llmp.engine.types import Priority
from llmp.errors import (
    AuthenticationError,
    LlmpError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
)
from llmp.events import Bus
from llmp.ids import new_id
from llmp.jobs import JobContext, JobRunner
from llmp.logs import event
from llmp.services import embeddings, inference, moderation
from llmp.services import keys as keys_service
from llmp.services import usage as usage_service
from llmp.services.batches.api import ACTIVE, to_api
from llmp.services.batches.validation import (
    LINE_PERMISSIONS,
    Validation,
    _error,
    read_lines,
    validate_lines,
)
from llmp.services.files import FileStore, Upload
from llmp.services.models import model_version

log = logging.getLogger("llmp.services.batches")  # one logger for the package

# against its key's limits in between, as an HTTP request is
PREPARE: dict[str, Callable[..., Any]] = {
    "/v1/chat/completions": inference.prepare_chat,
    "/v1/completions": inference.prepare_completion,
    "/v1/embeddings": embeddings.prepare_embeddings,
    "/v1/moderations": moderation.prepare_moderation,
}
#: the longest a line waits for its key's rate limits before trying again (pacing)
MAX_PACE_WAIT_S = 5.0
JOB_KIND = "batch"  # the batches' jobs in the durable job runner
MAX_ACTIVE_BATCHES = 10_000  # batches driven at once (their lines share the engine's slots)
TERMINAL_EVENTS = {"completed": events.BATCH_COMPLETED, "failed": events.BATCH_FAILED,
                   "expired": events.BATCH_EXPIRED, "cancelled": events.BATCH_CANCELLED}
# Lines in flight per model: the engine's slots plus a few queued behind them (at batch
# priority, so interactive requests still go first) to hide the per-line bookkeeping gap.
LOOKAHEAD = 2
RETRY_BUSY_S = 0.25  # wait before resubmitting a line the engine refused (queue full)
FLUSH_LINES = 64  # group commit: write results when this many wait ...
FLUSH_S = 0.02  # ... or this long after the first one
#: a line that was running when the process died this many times is failed, not run again
#: (it may be what kills the process: a resumed batch must not crash every restart)
MAX_CRASHES = 2


def _crashed_error(crashes: int) -> dict:
    return {"message": f"This request was running when the server stopped unexpectedly "
                       f"{crashes} times; it is not run again", "type": "server_error",
            "param": None, "code": "request_crashed"}



@dataclass
class _Run:
    """An active batch in the runner: its driving task and the line tasks in flight."""
    task: asyncio.Task
    lines: set[asyncio.Task] = field(default_factory=set)
    cancelled: bool = False
    #: set when the batch's key was revoked or expired: no further line runs, and the batch
    #: ends failed with this error {code, message}
    stop_error: dict | None = None


class _BatchJobs:
    """The job handler of kind "batch" (see `llmp.jobs.runner.Handler`)."""

    kind = JOB_KIND

    def __init__(self, runner: BatchRunner):
        self.runner = runner

    async def run(self, ctx: JobContext) -> None:
        await self.runner._drive_job(ctx)

    async def failed(self, job_id: str, error: BaseException) -> None:
        pass  # logged by the job runner; the batch is still active and is driven again

    async def stopped(self, job_id: str, reason: str) -> None:
        pass  # the batch's own status says where it stands

    async def recover(self, job_id: str, crashes: int, *, final: bool) -> bool:
        return True  # lines have their own crash guard; the batch always resumes


class BatchRunner:
    """Drives every active batch of a home. Start it once in the serving process; on start it
    resumes whatever a previous process left unfinished.

    Each active batch is a job of the durable job runner (`llmp.jobs`, kind "batch", the job
    id is the batch id): the runner claims it, heartbeats it, takes it back when the process
    that drove it died, and stops it at shutdown (queued again, resumed at the next start).
    The batches table stays the truth of what is left to do, and lines have their own crash
    guard (`batches_db.count_crashes`): a batch job found running after a crash always runs
    again."""

    def __init__(self, db: Database, store: FileStore, pool: Any, *,
                 known_model: Callable[[str], bool] | None = None, poll_s: float = 5.0,
                 limiter: Any = None, bus: Bus | None = None):
        self.db = db
        #: the durable job runner of the "batch" kind (every active batch runs at once)
        # no job-level crash limit: the per-line guard (MAX_CRASHES) fails the line that
        # crashes, and the batch itself always resumes at once
        self.jobs = JobRunner(db, _BatchJobs(self), concurrency=MAX_ACTIVE_BATCHES,
                              poll_s=poll_s, max_crashes=2**31)
        #: the app's event bus: batch.* events and the lines' usage rows (None: a private one)
        self.bus = bus if bus is not None else Bus()
        #: the server's Limiter: each line is a request of the batch's key (None: no limits)
        self.limiter = limiter
        self.store = store
        self.pool = pool
        self.known_model = known_model or self._resolvable
        self.poll_s = poll_s
        self._runs: dict[str, _Run] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._results: list[dict] = []  # finished lines not yet written (see _flush)
        self._have_results = asyncio.Event()
        self._many_results = asyncio.Event()

    def _resolvable(self, model: str) -> bool:
        try:
            self.pool.resolve(model)
        except NotFoundError:
            return False
        return True

    async def start(self) -> None:
        self.store.sweep_partials()
        crashed = await write(self.db, batches_db.count_crashes)
        if crashed:
            log.warning("%d batch line(s) were running when the server stopped unexpectedly; "
                        "each is retried once, then failed", crashed)
        self._tasks = [asyncio.create_task(self._loop(), name="batch-runner"),
                       asyncio.create_task(self._writer(), name="batch-writer")]
        await self.jobs.start()

    async def stop(self) -> None:
        """Stop driving batches; unfinished lines stay pending and resume on the next start
        (the job runner stops the drives first: their jobs are queued again)."""
        await self.jobs.stop()
        tasks = self._tasks + [r.task for r in self._runs.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._flush()
        self._runs.clear()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """Stop the lines in flight of a batch that was just moved to cancelling."""
        run = self._runs.get(batch_id)
        if run is not None:
            run.cancelled = True
            for t in run.lines:
                t.cancel()
        self.wake()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            for b in batches_db.with_status(self.db, ACTIVE):
                if b["id"] in self._runs:
                    continue
                job = jobs_db.get(self.db, b["id"])
                if job is None or job["state"] == "done":  # the job runner claims it
                    await write(self.db, jobs_db.enqueue, b["id"], JOB_KIND, at=time.time())
            self.jobs.wake()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _drive_job(self, ctx: JobContext) -> None:
        """Drive the claimed batch until it is final, or until the job runner stops it
        (shutdown): then its lines in flight are cancelled and stay pending."""
        drive = asyncio.create_task(self._drive(ctx.job_id), name=f"batch-{ctx.job_id}")
        self._runs[ctx.job_id] = _Run(drive)
        stop = asyncio.create_task(ctx.stopped.wait())
        try:
            await asyncio.wait({drive, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not drive.done():
                drive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drive
            self._runs.pop(ctx.job_id, None)
        if not drive.cancelled():
            drive.result()  # an error: the job runner logs it (the batch is retried later)

    async def _drive(self, batch_id: str) -> None:
        """Take one batch from wherever it is to a final status."""
        b = found(batches_db.get(self.db, batch_id))
        if b["status"] == "validating":
            await self._validate(b)
            b = found(batches_db.get(self.db, batch_id))
        stop_error = None
        if b["status"] == "in_progress":
            expired = await self._execute(b)
            stop_error = self._runs[batch_id].stop_error if batch_id in self._runs else None
            now = int(time.time())
            if stop_error is not None:  # the key was revoked or expired: the rest fails
                await write(self.db, batches_db.close_pending, batch_id, status="failed", at=now,
                            error={**stop_error, "message": stop_error["message"]
                                   + " This request was not executed."})
            elif expired:
                await write(self.db, batches_db.close_pending, batch_id, status="expired", at=now,
                            error={"code": "batch_expired", "message": "This request could not "
                                   "be executed before the completion window expired."})
            await write(self.db, batches_db.transition, batch_id, "finalizing",
                        allowed_from=("in_progress",), at=now)
            b = found(batches_db.get(self.db, batch_id))
        if b["status"] == "cancelling":
            await write(self.db, batches_db.close_pending, batch_id, status="cancelled",
                        at=int(time.time()), error={
                            "code": "batch_cancelled", "message": "The batch was cancelled "
                            "before this request was executed."})
            await self._finalize(b, "cancelled", ("cancelling",))
        elif b["status"] == "finalizing":
            if stop_error is None:
                stop_error = self._key_problem(b)
            if stop_error is not None:
                await self._finalize(b, "failed", ("finalizing",), errors=[
                    {**stop_error, "param": None, "line": None}])
                return
            to = "expired" if batches_db.counts(self.db, batch_id)["expired"] else "completed"
            await self._finalize(b, to, ("finalizing",))

    async def _validate(self, b: dict) -> None:
        """Check the input file (read in a worker thread; every database call stays on the
        event loop's thread, which owns the connection) and start or fail the batch."""
        try:
            path = self.store.path(self.store.row(b["input_file_id"], None))
            v = await asyncio.to_thread(lambda: validate_lines(read_lines(path), b["endpoint"]))
            v.check_models(self.known_model)
        except NotFoundError as e:
            v = Validation(errors=[_error("invalid_file", e.message, None, "input_file_id")])
        now = int(time.time())
        if v.ok:
            await write(self.db, batches_db.start, b["id"], v.lines, model=v.models[0], at=now)
            event(log, "batch.started", f"batch {b['id']} started", batch=b["id"],
                  key_id=b["owner_key_id"], lines=len(v.lines), model=v.models[0])
        elif await write(self.db, batches_db.transition, b["id"], "failed",
                         allowed_from=("validating",), at=now,
                         changes={"errors": json.dumps(v.errors)}):
            self._emit(b["id"], "failed")

    async def _slots_for(self, model: str) -> asyncio.Semaphore:
        """One semaphore per model, as wide as the engine's slots plus LOOKAHEAD (shared by
        all batches)."""
        sem = self._slots.get(model)
        if sem is None:
            engine = await self.pool.get(model)
            sem = self._slots.setdefault(model, asyncio.Semaphore(engine.n_slots + LOOKAHEAD))
        return sem

    async def _execute(self, b: dict) -> bool:
        """Run the pending lines until none is left (False), the window ends (True) or the
        batch is cancelled. Lines in flight when it stops stay pending."""
        run = self._runs[b["id"]]
        try:
            async with asyncio.timeout(max(0.0, b["expires_at"] - time.time())):
                after = 0
                while not run.cancelled:
                    rows = batches_db.pending_lines(self.db, b["id"], after_line=after)
                    if not rows:
                        break
                    for r in rows:
                        after = r["line"]
                        run.stop_error = self._key_problem(b)
                        if run.stop_error is not None:
                            break
                        body = json.loads(r["body"])
                        if r["crashes"] >= MAX_CRASHES:
                            self._done_line(b, r["line"], r["custom_id"], body, new_id("req"),
                                            500, {"error": _crashed_error(r["crashes"])}, 0.0)
                            continue
                        try:
                            sem = await self._slots_for(body["model"])
                        except LlmpError as e:  # the model is gone or cannot load
                            self._done_line(b, r["line"], r["custom_id"], body, new_id("req"),
                                            e.status, {"error": e.to_dict()}, 0.0)
                            continue
                        await sem.acquire()
                        if run.cancelled:
                            sem.release()
                            break
                        t = asyncio.create_task(
                            self._run_line(b, r["line"], r["custom_id"], body, sem))
                        run.lines.add(t)
                        t.add_done_callback(run.lines.discard)
                    if run.stop_error is not None:
                        break
                if run.lines:
                    await asyncio.wait(set(run.lines))
        except TimeoutError:
            return True
        finally:
            for t in list(run.lines):
                t.cancel()
            if run.lines:
                await asyncio.wait(set(run.lines))
            await self._flush()
        return False

    def _key_problem(self, b: dict) -> dict | None:
        """Why the batch's key may run no further line (revoked, expired, deleted), as a
        batch error {code, message}; None when it may."""
        key = db_keys.by_id(self.db, b["owner_key_id"]) if b["owner_key_id"] else None
        if key is None:
            return None if not b["owner_key_id"] else {
                "code": "invalid_api_key", "message": "The batch's API key no longer exists."}
        st = keys_service.status(key)
        if st == "active":
            return None
        return {"code": f"api_key_{st}",
                "message": f"The batch's API key was {st}; the batch was stopped (the "
                "requests already answered are kept)."}

    async def _run_line(self, b: dict, line: int, custom_id: str, body: dict,
                        slot: asyncio.Semaphore) -> None:
        """Execute one request (holding one of the model's slots) as a request of the batch's
        key, and queue its result."""
        request_id = new_id("req")
        t0 = time.perf_counter()
        finished = False
        call: inference.Call | None = None
        admission = None
        key: dict | None = None
        try:
            await write(self.db, batches_db.mark_in_flight, b["id"], line)
            while True:
                try:
                    key = self._line_key(b)
                    if key is not None and key.get("moderate_input") and \
                            b["endpoint"] in moderation.MODERATED_ENDPOINTS:
                        await moderation.check_input(self.pool, b["endpoint"], body,
                                                     request_id=request_id,
                                                     priority=Priority.BATCH)
                    call = await PREPARE[b["endpoint"]](self.pool, body, request_id=request_id,
                                                        priority=Priority.BATCH)
                    registered = db_models.get(self.db, call.model)
                    if registered is not None:  # as interactive replies name it
                        call.model_version = model_version(registered)
                    call.check_context()
                    if key is not None and self.limiter is not None and admission is None:
                        admission = await self._admit(key, call)
                    resp = await call.run()
                    status_code, payload = 200, resp
                    break
                except ServiceUnavailableError:  # the engine's queue is full: interactive first
                    await asyncio.sleep(RETRY_BUSY_S)
                except LlmpError as e:
                    status_code, payload = e.status, {"error": e.to_dict()}
                    break
                except Exception as e:  # one broken line must not stop the batch
                    log.exception("batch %s line %d failed", b["id"], line)
                    status_code = 500
                    payload = {"error": {"message": f"internal error: {e}", "type": "server_error",
                                         "param": None, "code": "internal_error"}}
                    break
            finished = True
        finally:
            slot.release()
            if not finished:  # stopped cleanly (shutdown, cancel): not a crash
                if admission is not None:
                    self.limiter.settle_admission(admission, 0)
                await asyncio.shield(write(self.db, batches_db.clear_in_flight, b["id"], [line]))
        self._done_line(b, line, custom_id, body, request_id, status_code, payload,
                        (time.perf_counter() - t0) * 1000, admission=admission)

    def _line_key(self, b: dict) -> dict | None:
        """The batch's key as it is now; a line needs its `inference` permission
        (PermissionDeniedError otherwise: that line fails)."""
        if not b["owner_key_id"]:
            return None
        key = db_keys.by_id(self.db, b["owner_key_id"])
        if key is None or keys_service.status(key) != "active":
            raise AuthenticationError("The batch's API key is no longer active",
                                      code="invalid_api_key")
        perm = LINE_PERMISSIONS.get(b["endpoint"], "inference")
        if not keys_service.has_permission(key, perm):
            raise PermissionDeniedError(f"The batch's API key lacks the '{perm}' permission: "
                                        f"each request of this batch is a {b['endpoint']} "
                                        "request")
        return key

    async def _admit(self, key: dict, call: inference.Call) -> Any:
        """Admit a line against its key's limits as an HTTP request is admitted: monthly
        quotas refuse it (QuotaExceededError: the line fails), while the requests- and
        tokens-per-minute limits pace it: it waits until the buckets have room."""
        registered = db_models.get(self.db, call.model)
        tokens = call.token_estimate
        cost = usage_service.price(registered, call.prompt_tokens, tokens - call.prompt_tokens)
        least = call.prompt_tokens if call.max_tokens is None else None
        took_request = False
        while True:
            try:
                if not took_request:
                    self.limiter.take_request(key)
                    took_request = True
                return self.limiter.admit(key, tokens, cost=cost, min_tokens=least)
            except QuotaExceededError:
                raise
            except RateLimitError as e:
                retry = e.headers.get("Retry-After")
                if retry is None:  # larger than the bucket: it can never run
                    raise
                await asyncio.sleep(min(MAX_PACE_WAIT_S, max(0.05, float(retry))))

    def _done_line(self, b: dict, line: int, custom_id: str, body: dict, request_id: str,
                   status_code: int, payload: dict, latency_ms: float, *,
                   admission: Any = None) -> None:
        """Queue a finished line's result, with its usage row, for the writer; count the row
        against the key's quotas now, in the same step as its admission is settled (as an
        HTTP request is)."""
        ok = status_code == 200
        u = (payload.get("usage") or {}) if ok else {}
        prompt, completion = u.get("prompt_tokens", 0) or 0, u.get("completion_tokens", 0) or 0
        row = usage_service.usage_row(
            self.db, b["owner_key_id"], body.get("model"), b["endpoint"], prompt, completion,
            latency_ms, None, status_code, error_type=None if ok else payload["error"]["type"],
            request_id=request_id, batch_id=b["id"])
        usage_service.notify(self.bus, [row])
        if admission is not None and self.limiter is not None:
            self.limiter.settle_admission(admission, prompt + completion)
        self._results.append({
            "usage": row,
            "batch_id": b["id"], "owner": b["owner_key_id"], "endpoint": b["endpoint"],
            "model": body.get("model"), "line": line, "status": "completed" if ok else "failed",
            "at": int(time.time()), "latency_ms": latency_ms, "status_code": status_code,
            "error_type": None if ok else payload["error"]["type"], "request_id": request_id,
            "prompt_tokens": u.get("prompt_tokens", 0) or 0,
            "completion_tokens": u.get("completion_tokens", 0) or 0,
            "result": {"id": "batch_req_" + request_id.removeprefix("req_"), "custom_id": custom_id,
                       "response": {"status_code": status_code, "request_id": request_id,
                                    "body": payload}, "error": None}})
        self._have_results.set()
        if len(self._results) >= FLUSH_LINES:
            self._many_results.set()

    async def _writer(self) -> None:
        """Group commit: write the queued results when FLUSH_LINES are waiting or FLUSH_S
        after the first one, whichever comes first."""
        while True:
            await self._have_results.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._many_results.wait(), FLUSH_S)
            self._have_results.clear()
            self._many_results.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Write every queued result and its usage row in one transaction (off the event
        loop, through the process's writer). A result counts once it is written: a line whose
        result was still queued when the process died is pending again and runs again (so no
        line is lost or answered twice, and no usage row is kept without its line)."""
        items, self._results = self._results, []
        if items:
            await asyncio.shield(write(self.db, batches_db.record_results_and_usage, items))

    async def _finalize(self, b: dict, to: str, allowed_from: tuple[str, ...], *,
                        errors: list[dict] | None = None) -> None:
        """Write the output and error files from the persisted lines, register them and move
        the batch to `to`, atomically (a crash before that leaves it to be finalized again)."""
        counts = batches_db.counts(self.db, b["id"])
        files = {}
        for kind, statuses in (("output", ("completed",)),
                               ("error", ("failed", "expired", "cancelled"))):
            if any(counts[s] for s in statuses):
                up = await self._stage(b["id"], statuses)
                files[kind] = self.store.record(up, owner=b["owner_key_id"],
                                                filename=f"{b['id']}_{kind}.jsonl",
                                                purpose="batch_output")
        changes: dict[str, Any] = {f"{kind}_file_id": f["id"] for kind, f in files.items()}
        if errors:
            changes["errors"] = json.dumps(errors)
        if await write(self.db, batches_db.finish, b["id"], to, allowed_from=allowed_from,
                       at=int(time.time()), files=list(files.values()), changes=changes):
            self._emit(b["id"], to)
        else:
            for f in files.values():
                (self.store.dir / f["storage"]).unlink(missing_ok=True)

    async def _stage(self, batch_id: str, statuses: tuple[str, ...]) -> Upload:
        """The result lines in input order, written to a staged file a page at a time
        (rows read here, bytes written in a worker thread)."""
        up = self.store.begin_staged()
        try:
            after = 0
            while rows := batches_db.results(self.db, batch_id, statuses, after_line=after):
                data = b"".join(self._output_line(r) for r in rows)
                await asyncio.to_thread(up.write, data)
                after = rows[-1]["line"]
            await asyncio.to_thread(up.close)
        except BaseException:
            up.discard()
            raise
        return up

    @staticmethod
    def _output_line(row: dict) -> bytes:
        out = json.loads(row["result"])
        if "response" not in out:  # an expired or cancelled line: no response
            out = {"id": new_id("batch_req"), "custom_id": row["custom_id"], "response": None,
                   "error": out["error"]}
        return (json.dumps(out) + "\n").encode()

    def _emit(self, batch_id: str, status: str) -> None:
        row = found(batches_db.get(self.db, batch_id))
        c = batches_db.counts(self.db, batch_id)
        event(log, f"batch.{status}", f"batch {batch_id} {status}",
              logging.WARNING if status == "failed" else logging.INFO, batch=batch_id,
              key_id=row["owner_key_id"], completed=c.get("completed"), failed=c.get("failed"))
        self.bus.publish(TERMINAL_EVENTS[status], to_api(self.db, row),
                         key_id=row["owner_key_id"])
