"""The durable job runner: claim, heartbeat, resume after a restart, cancel, pause, crash guard.

Work of any kind is a row of the `jobs` table (llmp.db.jobs) keyed by the resource's own id;
a `Handler` of that kind does the work and keeps its resource's own status. One `JobRunner`
per kind runs in the serving process:

    runner = JobRunner(db, handler, concurrency=1)
    await runner.start()        # takes back what a dead process left running, then runs
    runner.wake()               # a job was queued (llmp.db.jobs.enqueue)
    runner.cancel(id) / pause(id) / resume(id)
    await runner.stop()         # running jobs are stopped and queued again (not a crash)

States: queued -> running -> done; running -> paused (pause) -> queued (resume); a job found
running by a fresh process was running when the previous one died: its crash is counted and
`Handler.recover` decides (run it again from where it can, or end it); after `max_crashes`
it is ended for good, so a job that kills the server cannot do so at every start. A job
never stays "running" without a live runner. The runner heartbeats the jobs it holds, and
takes back jobs whose heartbeat is stale (another process died) while it runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from sqlite_utils import Database

from llmp.db import jobs as jobs_db
from llmp.db.writer import write
from llmp.ids import random_base62

log = logging.getLogger(__name__)

#: why a running job was asked to stop
STOP_REASONS = ("cancel", "pause", "shutdown")


@dataclass
class JobContext:
    """What a handler's `run` gets: the job, and the signal to stop."""
    job_id: str
    attempt: int
    crashes: int
    stop_reason: str | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self, reason: str) -> None:
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}")
        if self.stop_reason is None or reason == "cancel":
            self.stop_reason = reason
        self.stopped.set()


class Handler(Protocol):
    """Does the work of one kind of job."""

    kind: str

    async def run(self, ctx: JobContext) -> None:
        """Do the job; return when it is finished (succeeded or failed: the handler records
        which) or, promptly, once `ctx.stopped` is set (`ctx.stop_reason` says why). An
        exception is a crash of the job: `failed` is called with it."""

    async def failed(self, job_id: str, error: BaseException) -> None:
        """`run` raised: record the job as failed with the reason."""

    async def stopped(self, job_id: str, reason: str) -> None:
        """`run` returned after a stop: record the job as cancelled, paused or (shutdown)
        waiting to resume."""

    async def recover(self, job_id: str, crashes: int, *, final: bool) -> bool:
        """The job was running when its process died (`crashes` times now). Return True to
        run it again (it is queued), False when the handler ended it; `final`: the crash
        guard's limit is reached, the handler must end it."""


class JobRunner:
    def __init__(self, db: Database, handler: Handler, *, concurrency: int = 1,
                 poll_s: float = 5.0, heartbeat_s: float = 5.0, max_crashes: int = 2):
        self.db = db
        self.handler = handler
        self.kind = handler.kind
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.max_crashes = max_crashes
        #: this process's token on the rows it claims
        self.token = f"{os.getpid()}-{random_base62(8)}"
        self.running: dict[str, tuple[JobContext, asyncio.Task]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self._recover(stale_before=None)
        self._tasks = [asyncio.create_task(self._loop(), name=f"jobs-{self.kind}"),
                       asyncio.create_task(self._heartbeat(), name=f"jobs-{self.kind}-hb")]

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the running jobs (they are queued again and resume on the next start)."""
        self._stopping = True
        for ctx, _ in list(self.running.values()):
            ctx.stop("shutdown")
        tasks = [t for _, t in self.running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def wake(self) -> None:
        self._wake.set()

    # -- control ---------------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> bool:
        """Stop the job if it runs (True), else take it out of the queue."""
        if job_id in self.running:
            self.running[job_id][0].stop("cancel")
            return True
        await write(self.db, jobs_db.set_state, job_id, "done",
                    allowed_from=("queued", "paused"), at=time.time())
        return False

    async def pause(self, job_id: str) -> bool:
        """Stop the job if it runs (True; the handler keeps what it can resume from), else
        hold it in the queue."""
        if job_id in self.running:
            self.running[job_id][0].stop("pause")
            return True
        await write(self.db, jobs_db.set_state, job_id, "paused", allowed_from=("queued",),
                    at=time.time())
        return False

    async def resume(self, job_id: str) -> bool:
        ok = await write(self.db, jobs_db.set_state, job_id, "queued", allowed_from=("paused",),
                         at=time.time())
        self.wake()
        return bool(ok)

    async def wait_stopped(self, job_id: str, timeout: float) -> bool:
        """Wait until the job is no longer running here (True) or `timeout` passes."""
        entry = self.running.get(job_id)
        if entry is None:
            return True
        done, _ = await asyncio.wait([entry[1]], timeout=timeout)
        return bool(done)

    # -- internals -------------------------------------------------------------------------------
    async def _recover(self, *, stale_before: float | None) -> None:
        for row in jobs_db.orphans(self.db, self.kind, self.token, stale_before=stale_before):
            crashes = await write(self.db, jobs_db.count_crash, row["id"], row["runner"],
                                  at=time.time())
            if crashes is None:
                continue
            final = crashes >= self.max_crashes
            log.warning("job %s was running when its process stopped (%d time(s))%s",
                        row["id"], crashes, "; it is ended" if final else "; it resumes")
            try:
                again = await self.handler.recover(row["id"], crashes, final=final)
            except Exception:
                log.exception("recovering job %s failed", row["id"])
                again = False
            if final or not again:
                await write(self.db, jobs_db.set_state, row["id"], "done",
                            allowed_from=("queued",), at=time.time())
        self.wake()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            while not self._stopping and len(self.running) < self.concurrency:
                row = await write(self.db, jobs_db.claim, self.kind, self.token, at=time.time())
                if row is None:
                    break
                ctx = JobContext(row["id"], row["attempts"], row["crashes"])
                task = asyncio.create_task(self._run(ctx), name=f"job-{row['id']}")
                self.running[row["id"]] = (ctx, task)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _run(self, ctx: JobContext) -> None:
        state = "done"
        try:
            try:
                await self.handler.run(ctx)
                if ctx.stop_reason is not None:
                    await self.handler.stopped(ctx.job_id, ctx.stop_reason)
                    state = {"cancel": "done", "pause": "paused", "shutdown": "queued"}[
                        ctx.stop_reason]
            except asyncio.CancelledError:
                state = "queued"
                raise
            except Exception as e:  # the crash guard: a broken job fails, the runner goes on
                log.exception("job %s failed", ctx.job_id)
                with contextlib.suppress(Exception):
                    await self.handler.failed(ctx.job_id, e)
        finally:
            self.running.pop(ctx.job_id, None)
            with contextlib.suppress(Exception):
                await asyncio.shield(write(self.db, jobs_db.set_state, ctx.job_id, state,
                                           allowed_from=("running",), at=time.time(),
                                           runner=self.token))
            self.wake()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await write(self.db, jobs_db.heartbeat, self.token, list(self.running),
                            at=time.time())
                # another process that held jobs and died: take its jobs back
                await self._recover(stale_before=time.time() - 6 * self.heartbeat_s)
            except Exception:
                log.exception("job heartbeat failed")
