"""The CS job runner: long operations as jobs claimed from the database, with steps and leases.

A job is a row of ``jobs`` (cs/db/models.py). :func:`submit` queues one inside the caller's write
transaction; a :class:`Runner` (one per CS process, started by CSService) claims queued jobs of the
kinds that have a :func:`handler`, and runs each handler with a :class:`JobContext`.

Rules (several CS processes may share one database, ARCHITECTURE.md §9):
- a claim is one write transaction: PostgreSQL locks the row with ``SELECT ... FOR UPDATE SKIP
  LOCKED`` (without the global write lock: ``write(exclusive=False)``); SQLite takes the database
  lock at ``BEGIN IMMEDIATE`` (cs/db/engine.py), so two claimers queue and the second sees the
  first's update. A claim sets ``state=running``,
  ``claimed_by=owner``, ``lease_until_ns`` and bumps ``attempts``;
- the lease is renewed every third of its length while the handler runs; every write of the
  runner (step, renewal, finish) is conditional on (``claimed_by``, ``attempts``) still being the
  claim's: a runner that lost its lease stops its handler and writes nothing more;
- a ``running`` job whose lease expired (its CS died) is claimed again, by any runner; its
  handler re-runs with ``ctx.done_steps`` = the steps already recorded, which it skips (handlers
  are idempotent per step). After ``MAX_ATTEMPTS`` claims the job fails instead;
- a handler's return value is the job's result (``succeeded``); a :class:`DrlabError` fails it with
  its message, any other exception with the exception's class name (the details go to the log);
- kinds without a handler (the MT's ``failover`` and ``points`` jobs) are never touched;
- ``Runner.stop()`` cancels the running handlers and, unless told otherwise, hands their jobs back
  (``queued``) so that another runner starts them at once; a killed CS leaves them to expire.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common import errors
from common import logging as dlog
from cs.db import meta
from cs.db.models import Job
from cs.state import CSState

log = dlog.get("drlab.cs.runner")

Handler = Callable[["JobContext"], Coroutine[Any, Any, dict[str, Any] | None]]
HANDLERS: dict[str, Handler] = {}
FINAL_STATES = ("succeeded", "failed")
MAX_ATTEMPTS = 5
MAX_ERROR_CHARS = 4000
MAX_DETAIL_CHARS = 1000


class LeaseLost(errors.Conflict):
    """This runner no longer holds the job (its lease expired and another runner claimed it)."""

    code = "lease_lost"


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register ``async def run(ctx) -> dict | None`` as the handler of jobs of ``kind``."""

    def register(fn: Handler) -> Handler:
        if kind in HANDLERS and HANDLERS[kind] is not fn:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        HANDLERS[kind] = fn
        return fn

    return register


def new_job(kind: str, params: dict[str, Any], target_id: str, now_ns: int) -> Job:
    return Job(job_id=uuid.uuid4().hex, kind=kind, disk_id=target_id, state="queued", params=params, result=None,
               error=None, created_ns=now_ns, updated_ns=now_ns, steps=[], percent=0.0, attempts=0)


async def submit(session: AsyncSession, kind: str, params: dict[str, Any], *, target_id: str) -> str:
    """Queue a job (in the caller's write transaction); a runner claims it once committed."""
    job = new_job(kind, dict(params), target_id, time.time_ns())
    session.add(job)
    await session.flush()
    log.info("job_submitted", job_id=job.job_id, kind=kind, target_id=target_id)
    return job.job_id


def step_record(name: str, at_ns: int, percent: float | None, detail: str | None) -> dict[str, Any]:
    """One entry of a job's ``steps`` (pure)."""
    if not name or len(name) > 128:
        raise ValueError("a step name is 1 to 128 characters")
    record: dict[str, Any] = {"name": name, "at_ns": at_ns}
    if percent is not None:
        record["percent"] = max(0.0, min(100.0, float(percent)))
    if detail is not None:
        record["detail"] = detail[:MAX_DETAIL_CHARS]
    return record


def failure_message(exc: BaseException) -> str:
    """What a job's ``error`` says of an exception: a DrlabError's message, else only its class."""
    if isinstance(exc, errors.DrlabError):
        return exc.message[:MAX_ERROR_CHARS]
    return type(exc).__name__


@dataclass
class _Claim:
    job_id: str
    kind: str
    params: dict[str, Any]
    target_id: str
    attempt: int
    done: set[str]


@dataclass
class JobContext:
    """What a handler gets: its job, and ways to record steps and to wait while holding the lease."""

    state: CSState
    job_id: str
    kind: str
    params: dict[str, Any]
    target_id: str
    _runner: Runner = field(repr=False)
    _attempt: int = field(repr=False)
    _done: set[str] = field(default_factory=set, repr=False)

    @property
    def done_steps(self) -> set[str]:
        """Steps recorded by this or an earlier run of the job (a re-run skips them)."""
        return set(self._done)

    async def step(self, name: str, *, percent: float | None = None, detail: str | None = None) -> None:
        """Record a step (and the job's overall percent, if given); renews the lease."""
        record = step_record(name, time.time_ns(), percent, detail)
        await self._runner.record_step(self.job_id, self._attempt, record)
        self._done.add(name)

    async def sleep(self, seconds: float) -> None:
        """Sleep; raises :class:`LeaseLost` if the job was lost meanwhile."""
        await asyncio.sleep(seconds)
        if self._runner.lost(self.job_id):
            raise LeaseLost(f"job {self.job_id} is no longer held by this CS")


class Runner:
    """Claims and runs jobs for one CS process (``owner_id`` unique per process)."""

    def __init__(self, state: CSState, owner_id: str, *, poll_interval_s: float = 0.5, lease_s: float = 30.0,
                 max_jobs: int = 8, handlers: dict[str, Handler] | None = None) -> None:
        if lease_s <= 0 or poll_interval_s <= 0 or max_jobs < 1:
            raise ValueError("lease_s and poll_interval_s must be > 0, max_jobs >= 1")
        self.state = state
        self.owner_id = owner_id
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.max_jobs = max_jobs
        self._handlers = handlers  # None: the module registry, read at each claim
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, tuple[asyncio.Task[None], int]] = {}
        self._lost: set[str] = set()
        self._slots = asyncio.Semaphore(max_jobs)

    def __repr__(self) -> str:
        return f"Runner({self.owner_id}, running={len(self._running)})"

    @property
    def handlers(self) -> dict[str, Handler]:
        return HANDLERS if self._handlers is None else self._handlers

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"cs-job-runner-{self.owner_id}")

    async def stop(self, *, release: bool = True) -> None:
        """Stop claiming, cancel running handlers; ``release`` hands their jobs back (queued)."""
        tasks = [t for t, _ in self._running.values()]
        held = {job_id: attempt for job_id, (_, attempt) in self._running.items()}
        if self._task is not None:
            self._task.cancel()
            tasks.append(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if release and held:
            await self._release(held)

    def lost(self, job_id: str) -> bool:
        return job_id in self._lost

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                claim = await self.claim_one()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database hiccup: log, retry after a pause
                log.error("job_claim_failed", owner=self.owner_id, error=f"{type(exc).__name__}: {exc}")
                claim = None
            if claim is None:
                self._slots.release()
                try:
                    await self._wait()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: try again later
                    log.error("job_wait_failed", owner=self.owner_id, error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(self.poll_interval_s)
                continue
            task = asyncio.create_task(self._run(claim), name=f"cs-job-{claim.kind}-{claim.job_id}")
            self._running[claim.job_id] = (task, claim.attempt)

    async def _wait(self) -> None:
        async with self.state.db.read() as session:
            version = await meta.settings_version(session)
        started = time.monotonic()
        await self.state.watch.wait_newer(version, self.poll_interval_s)
        await asyncio.sleep(max(0.01, 0.05 - (time.monotonic() - started)))  # closed watch: no busy loop

    async def claim_one(self, now_ns: int | None = None) -> _Claim | None:
        """Claim the oldest queued job of a handled kind, or a running one whose lease expired."""
        kinds = sorted(self.handlers)
        if not kinds:
            return None
        async with self.state.db.write(exclusive=False) as session:
            now = time.time_ns() if now_ns is None else now_ns
            claimable = or_(Job.state == "queued",
                            and_(Job.state == "running", Job.lease_until_ns.is_not(None), Job.lease_until_ns < now))
            stmt = (select(Job).where(Job.kind.in_(kinds), claimable)
                    .order_by(Job.created_ns).limit(1).with_for_update(skip_locked=True))
            if self._running:
                stmt = stmt.where(Job.job_id.not_in(list(self._running)))
            job = (await session.scalars(stmt)).first()
            if job is None:
                return None
            if job.attempts >= MAX_ATTEMPTS:
                job.state, job.error, job.ended_ns, job.updated_ns = (
                    "failed", f"abandoned after {job.attempts} attempts (its CS stopped each time)", now, now)
                job.claimed_by = job.lease_until_ns = None
                log.error("job_abandoned", job_id=job.job_id, kind=job.kind, attempts=job.attempts)
                return None
            reclaimed = job.state == "running"
            job.state, job.claimed_by, job.attempts = "running", self.owner_id, job.attempts + 1
            job.lease_until_ns = now + int(self.lease_s * 1e9)
            job.started_ns = job.started_ns or now
            job.updated_ns = now
            claim = _Claim(job.job_id, job.kind, dict(job.params or {}), job.disk_id, job.attempts,
                           {s.get("name", "") for s in job.steps or []})
        log.info("job_claimed", job_id=claim.job_id, kind=claim.kind, owner=self.owner_id, attempt=claim.attempt,
                 reclaimed=reclaimed, done_steps=len(claim.done))
        return claim

    async def _run(self, claim: _Claim) -> None:
        ctx = JobContext(self.state, claim.job_id, claim.kind, claim.params, claim.target_id,
                         _runner=self, _attempt=claim.attempt, _done=set(claim.done))
        work = asyncio.create_task(self.handlers[claim.kind](ctx), name=f"cs-job-handler-{claim.job_id}")
        renew = asyncio.create_task(self._renew(claim, work), name=f"cs-job-lease-{claim.job_id}")
        try:
            failure: BaseException | None = None
            try:
                result = await work
            except asyncio.CancelledError:
                if not self.lost(claim.job_id):
                    raise  # the runner is stopping
                log.warning("job_lease_lost", job_id=claim.job_id, owner=self.owner_id)
                return
            except Exception as exc:
                result, failure = None, exc
            if result is not None and not isinstance(result, dict):
                result, failure = None, errors.DrlabError(f"the {claim.kind} handler returned no object")
            try:
                await self._finish(claim, result, failure)
            except Exception as exc:  # the lease expires and another claim runs the job again
                log.error("job_finish_failed", job_id=claim.job_id, error=f"{type(exc).__name__}: {exc}")
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
            self._running.pop(claim.job_id, None)
            self._lost.discard(claim.job_id)
            self._slots.release()

    async def _renew(self, claim: _Claim, work: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = await self._extend(claim.job_id, claim.attempt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying: the lease has two more thirds to go
                log.warning("job_lease_renew_failed", job_id=claim.job_id, error=f"{type(exc).__name__}: {exc}")
                continue
            if not held:
                self._lost.add(claim.job_id)
                work.cancel()
                return

    def _mine(self, job_id: str, attempt: int) -> Any:
        return and_(Job.job_id == job_id, Job.state == "running", Job.claimed_by == self.owner_id,
                    Job.attempts == attempt)

    async def _extend(self, job_id: str, attempt: int) -> bool:
        now = time.time_ns()
        async with self.state.db.write(exclusive=False) as session:
            res = await session.execute(update(Job).where(self._mine(job_id, attempt))
                                        .values(lease_until_ns=now + int(self.lease_s * 1e9)))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    async def record_step(self, job_id: str, attempt: int, record: dict[str, Any]) -> None:
        now = time.time_ns()
        async with self.state.db.write(exclusive=False) as session:
            job = (await session.scalars(select(Job).where(self._mine(job_id, attempt))
                                         .with_for_update())).first()
            if job is None:
                self._lost.add(job_id)
                raise LeaseLost(f"job {job_id} is no longer held by this CS")
            job.steps = [*(job.steps or []), record]
            if "percent" in record:
                job.percent = record["percent"]
            job.lease_until_ns, job.updated_ns = now + int(self.lease_s * 1e9), now
        log.info("job_step", job_id=job_id, step=record["name"], percent=record.get("percent"))

    async def _finish(self, claim: _Claim, result: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None and not isinstance(exc, errors.DrlabError):
            log.error("job_handler_crashed", job_id=claim.job_id, kind=claim.kind,
                      error=f"{type(exc).__name__}: {exc}")
        now = time.time_ns()
        async with self.state.change() as session:
            job = (await session.scalars(select(Job).where(self._mine(claim.job_id, claim.attempt))
                                         .with_for_update())).first()
            if job is None:
                log.warning("job_lease_lost", job_id=claim.job_id, owner=self.owner_id)
                return
            job.state = "failed" if exc is not None else "succeeded"
            job.result = result if exc is None else None
            job.error = failure_message(exc) if exc is not None else None
            if exc is None:
                job.percent = 100.0
            job.ended_ns = job.updated_ns = now
            job.claimed_by, job.lease_until_ns = None, None
        log.info("job_finished", job_id=claim.job_id, kind=claim.kind, state="failed" if exc else "succeeded",
                 error=failure_message(exc) if exc is not None else None)

    async def _release(self, held: dict[str, int]) -> None:
        now = time.time_ns()
        try:
            async with self.state.db.write(exclusive=False) as session:
                for job_id, attempt in held.items():
                    await session.execute(update(Job).where(self._mine(job_id, attempt))
                                          .values(state="queued", claimed_by=None, lease_until_ns=None,
                                                  attempts=Job.attempts - 1, updated_ns=now))
        except Exception as exc:  # the leases expire anyway
            log.warning("job_release_failed", owner=self.owner_id, error=f"{type(exc).__name__}: {exc}")
        else:
            log.info("jobs_released", owner=self.owner_id, jobs=len(held))
