"""Bookmarks on the agent: crash-consistent tags, app-consistent tags, and the member side of the CS's
two-phase multi-machine bookmarks (cs/bookmarks.py; docs/PROTOCOL.md, "Bookmarks"). The hooks and the
freeze guard they run around are in agent/quiesce.py.

Rules:
- a crash-consistent tag is a cut at a batch boundary (``Replicator.bookmark``): no hook, no freeze;
  one every ``crash_consistent_interval_s``;
- an app-consistent tag runs, in this order: the pre-freeze hook, freeze (every write of the
  machine held; one in progress finishes first), cut and tag every replicating disk, thaw, the
  post-thaw hook; one every ``app_consistent_interval_s``;
- a hook that exits non-zero or outlives ``hook_timeout_s`` (its process group is killed) aborts the
  bookmark: nothing is frozen or tagged after it; the post-thaw hook runs whenever the pre-freeze
  hook ran, whatever the outcome;
- writes are never held beyond ``freeze_timeout_s`` (a group member: nor beyond the CS's deadline plus
  ``COMMIT_GRACE_S``): a watchdog releases the freeze at its deadline
  and every path releases it in a ``finally`` (CS silent, a report hanging, the task cancelled);
  a cut happens only while the freeze is still held;
- a group member (the settings document's ``bookmarks``, phase ``prepare``): hook, freeze by the
  CS's deadline, report ``frozen`` (with a session id for that freeze), then wait for the decision:
  ``commit`` -> tag, thaw, report ``tagged`` with the points; ``abort``, the bookmark gone from the
  document, or the freeze deadline -> thaw without a tag, report ``thawed`` / ``expired``;
  a ``commit`` for a bookmark this process never froze for (a restart) is answered ``expired``;
- one bookmark (hooks and freeze) at a time; a bookmark is refused while any disk is not protected
  (its tag would mark no valid point).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.quiesce import FreezeGuard, Replicating, run_hook
from common import errors
from common import logging as dlog
from common.config import AgentConfig
from common.http import backoff_s
from common.tasks import cancel_and_wait

log = dlog.get("drlab.agent.bookmarks")

HISTORY = 256
REPORT_WINDOW_S = 30.0  # final reports are retried this long
COMMIT_GRACE_S = 2.0  # a member waits for the commit this long past the CS's deadline, then thaws
SEEN = 4096  # bookmark ids remembered (the CS lists one for at most its timeout and a minute)
PHASES = ("prepare", "commit", "abort")
STOP_GRACE_S = 5.0  # stop() waits for the bookmark tasks their hook timeout and this long

Reporter = Callable[[str, dict[str, Any]], Awaitable[Any]]  # (bookmark id, body) -> the CS's reply
Decide = Callable[[float], Awaitable[str]]  # (seconds left frozen) -> commit | abort | gone | timeout
OnFrozen = Callable[[], Coroutine[Any, Any, None]]


# ------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class GroupRequest:
    bookmark_id: str
    tag: str
    consistency: str
    phase: str
    remaining_s: float


def parse_requests(document: dict[str, Any]) -> list[GroupRequest]:
    """The document's ``bookmarks`` list (malformed entries are logged and skipped)."""
    out = []
    for item in document.get("bookmarks", []) or []:
        try:
            bid, tag = str(item["bookmark_id"]), str(item["tag"])
            if len(bid) != 32 or not all(c in "0123456789abcdef" for c in bid) or not 1 <= len(tag.encode()) <= 160:
                raise ValueError("bookmark id or tag")
            req = GroupRequest(bid, tag, str(item.get("consistency", "app")), str(item["phase"]),
                               max(0.0, float(item.get("remaining_ms", 0)) / 1000.0))
            if req.phase not in PHASES or req.consistency not in ("app", "crash"):
                raise ValueError("phase or consistency")
            out.append(req)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("bookmark_request_ignored", error=f"{type(exc).__name__}: {exc}")
    return out


class Decision:
    """What the CS decided for a member's freeze: ``commit``, ``abort`` or ``gone``."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def set(self, value: str) -> None:
        if not self._fut.done():
            self._fut.set_result(value)

    def peek(self) -> str | None:
        return self._fut.result() if self._fut.done() else None

    async def wait(self, timeout_s: float) -> str:
        try:
            return await asyncio.wait_for(asyncio.shield(self._fut), max(0.0, timeout_s))
        except TimeoutError:
            return "timeout"


def stamp(now_ns: int) -> str:
    t = datetime.fromtimestamp(now_ns / 1e9, UTC)
    return t.strftime("%Y%m%dT%H%M%S") + f".{now_ns // 1_000_000 % 1000:03d}Z"


# ------------------------------------------------------------------------------------ the agent side


class BookmarkAgent:
    def __init__(self, cfg: AgentConfig, replicator: Replicating, report: Reporter | None = None) -> None:
        self.cfg = cfg
        self.rep = replicator
        self._report = report
        self._one = asyncio.Lock()  # one bookmark (hooks + freeze) at a time
        self._sessions: dict[str, Decision] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.app_consistent_interval_s > 0 or self.cfg.crash_consistent_interval_s > 0:
            self._scheduler = asyncio.create_task(self._schedule(), name="bookmark-scheduler")

    async def stop(self) -> None:
        """Stop scheduling and cancel sessions (a freeze in progress is released)."""
        await cancel_and_wait([self._scheduler, *self._tasks], timeout_s=self.cfg.hook_timeout_s + STOP_GRACE_S)
        self._scheduler = None
        self._tasks.clear()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the settings document -----------------------------------------------------------------

    def on_settings(self, document: dict[str, Any]) -> None:
        """Act on the document's bookmark requests (never blocks the settings loop)."""
        requests = parse_requests(document)
        listed = {r.bookmark_id for r in requests}
        for req in requests:
            decision = self._sessions.get(req.bookmark_id)
            if req.phase == "prepare" and req.bookmark_id not in self._seen:
                self._remember(req.bookmark_id)
                self._sessions[req.bookmark_id] = Decision()
                self._spawn(self._member(req, self._sessions[req.bookmark_id]), f"bookmark-{req.bookmark_id[:8]}")
            elif req.phase in ("commit", "abort") and decision is not None:
                decision.set(req.phase)
            elif req.phase == "commit" and req.bookmark_id not in self._seen:
                self._remember(req.bookmark_id)  # frozen by a previous run of the agent: that freeze is gone
                log.warning("bookmark_commit_without_freeze", bookmark_id=req.bookmark_id, tag=req.tag)
                self._spawn(self._send(req.bookmark_id, {"state": "expired", "error": "the agent restarted"},
                                       time.monotonic() + REPORT_WINDOW_S), "bookmark-report")
        for bookmark_id, decision in self._sessions.items():
            if bookmark_id not in listed:
                decision.set("gone")

    def _remember(self, bookmark_id: str) -> None:
        self._seen[bookmark_id] = None
        while len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    # -- group member ------------------------------------------------------------------------

    async def _member(self, req: GroupRequest, decision: Decision) -> None:
        loop = asyncio.get_running_loop()
        freeze_by = loop.time() + req.remaining_s
        session = uuid.uuid4().hex
        rec = self._record(f"group-{req.consistency}", req.tag, bookmark_id=req.bookmark_id)
        blog = log.bind(bookmark_id=req.bookmark_id, tag=req.tag)
        blog.info("bookmark_prepare", consistency=req.consistency, remaining_s=round(req.remaining_s, 3))

        async def frozen() -> None:
            reply = await self._send(req.bookmark_id, {"state": "frozen", "session": session,
                                                       **_ms("hook_ms", rec.get("hook_s"))}, freeze_by)
            phase = reply.get("phase") if isinstance(reply, dict) else None
            if phase in ("commit", "abort"):
                decision.set(str(phase))  # the last member to freeze learns the decision at once

        try:
            async with asyncio.timeout_at(freeze_by):
                await self._one.acquire()
        except TimeoutError:
            rec.update(outcome="failed", error="busy with another bookmark until the deadline")
        else:
            try:
                await self._hooks_and_freeze(rec, app=req.consistency == "app", freeze_by=freeze_by,
                                             decide=decision.wait, on_frozen=frozen, peek=decision.peek)
            except Exception as exc:  # reported as a failure: the freeze was released on the way out
                rec.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
                blog.error("bookmark_member_failed", error=rec["error"])
            finally:
                self._one.release()
        finally:
            self._sessions.pop(req.bookmark_id, None)
        body = self._final_report(rec, session)
        blog.info("bookmark_member_done", outcome=rec["outcome"], error=rec.get("error"),
                  freeze_ms=rec.get("freeze_ms"))
        await self._send(req.bookmark_id, body, time.monotonic() + REPORT_WINDOW_S)

    @staticmethod
    def _final_report(rec: dict[str, Any], session: str) -> dict[str, Any]:
        outcome = rec["outcome"]
        body: dict[str, Any] = {**_ms("freeze_ms", rec.get("freeze_s")), **_ms("hook_ms", rec.get("hook_s"))}
        if outcome == "tagged":
            return {"state": "tagged", "session": session, "points": rec["points"], **body}
        if outcome in ("thawed", "expired"):
            return {"state": outcome, "session": session, "error": rec.get("error") or outcome, **body}
        return {"state": "failed", "error": rec.get("error") or "failed", **body}

    async def _send(self, bookmark_id: str, body: dict[str, Any], until: float) -> Any:
        """POST a report, retrying retriable failures until ``until`` (monotonic); None if it never got through."""
        if self._report is None:
            return None
        attempt = 0
        while True:
            try:
                return await self._report(bookmark_id, body)
            except errors.DrlabError as exc:
                attempt += 1
                delay = backoff_s(attempt, max_s=min(1.0, self.cfg.retry_max_backoff_s))
                if not exc.retriable or time.monotonic() + delay > until:
                    log.error("bookmark_report_failed", bookmark_id=bookmark_id, state=body.get("state"),
                              error=exc.message)
                    return None
                await asyncio.sleep(delay)

    # -- local bookmarks -----------------------------------------------------------------------

    async def bookmark_now(self, kind: str) -> dict[str, Any]:
        """A local bookmark now: ``crash`` (a tag at the next batch boundary) or ``app`` (hooks
        around a freeze); returns its record (``outcome`` tagged or failed)."""
        now = time.time_ns()
        tag = f"{kind}:{stamp(now)}"
        rec = self._record(kind, tag)
        if kind == "crash":
            self._tag(rec, tag)
        elif kind == "app":
            async with self._one:
                loop = asyncio.get_running_loop()
                try:
                    await self._hooks_and_freeze(rec, app=True, freeze_by=loop.time() + self.cfg.freeze_timeout_s,
                                                 decide=_commit_now, on_frozen=None, peek=lambda: None)
                except Exception as exc:  # the freeze was released on the way out
                    rec.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            raise ValueError(f"unknown bookmark kind {kind!r}")
        log.info("bookmark_local", kind=kind, tag=tag, outcome=rec["outcome"], error=rec.get("error"),
                 freeze_ms=rec.get("freeze_ms"), **_ms("hook_ms", rec.get("hook_s")))
        return rec

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        crash_s, app_s = self.cfg.crash_consistent_interval_s, self.cfg.app_consistent_interval_s
        due = {k: loop.time() + s for k, s in (("crash", crash_s), ("app", app_s)) if s > 0}
        every = {"crash": crash_s, "app": app_s}
        while True:
            kind = min(due, key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[kind] - loop.time()))
            due[kind] = max(due[kind] + every[kind], loop.time())
            try:
                await self.bookmark_now(kind)
            except Exception as exc:  # the schedule goes on; the failure is in the log
                log.error("bookmark_failed", kind=kind, error=f"{type(exc).__name__}: {exc}")

    # -- the steps -----------------------------------------------------------------------------

    def _record(self, kind: str, tag: str, bookmark_id: str | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": kind, "tag": tag, "bookmark_id": bookmark_id, "outcome": "running",
                               "error": None, "points": {}, "t_start_ns": time.time_ns()}
        self.history.append(rec)
        return rec

    def _unprotected(self) -> list[str]:
        """Disks whose next batch would mark no valid point: not protected yet, or draining a bitmap."""
        pipes = list(self.rep.pipelines.values())
        if not pipes:
            return ["(no disk replicating)"]
        return [str(p.name) + (" (bitmap mode)" if p.state == "protected" else "") for p in pipes
                if p.state != "protected" or getattr(p, "mode", "data") == "bitmap"]

    def _tag(self, rec: dict[str, Any], tag: str) -> bool:
        """Cut every replicating disk with ``tag``; the record says what was tagged."""
        waiting = self._unprotected()
        if waiting:
            rec.update(outcome="failed", error=f"not protected yet: {', '.join(waiting)}")
            return False
        wanted = {str(p.disk_id) for p in self.rep.pipelines.values()}
        points = self.rep.bookmark(tag.encode())
        rec["t_tagged_ns"] = time.time_ns()
        rec["points"] = {d: [g, s] for d, (g, s) in sorted(points.items())}
        missing = sorted(wanted - set(points))
        if missing:
            rec.update(outcome="failed", error=f"disks {', '.join(missing)} were not tagged")
            return False
        rec["outcome"] = "tagged"
        return True

    async def _hooks_and_freeze(self, rec: dict[str, Any], *, app: bool, freeze_by: float, decide: Decide,
                                on_frozen: OnFrozen | None, peek: Callable[[], str | None]) -> None:
        """pre-freeze hook -> freeze -> (decision) -> cut and tag -> thaw -> post-thaw hook; the
        record gets the outcome: tagged, failed, thawed (aborted while frozen) or expired."""
        loop = asyncio.get_running_loop()
        waiting = self._unprotected()
        if waiting:
            rec.update(outcome="failed", error=f"not protected yet: {', '.join(waiting)}")
            return
        pre_ran = False
        try:
            if app and self.cfg.pre_freeze_hook:
                pre_ran = True
                rec["t_pre_start_ns"] = time.time_ns()
                result = await run_hook(self.cfg.pre_freeze_hook, min(self.cfg.hook_timeout_s, freeze_by - loop.time()),
                                        _hook_env("pre-freeze", rec))
                rec["t_pre_end_ns"], rec["hook_s"] = time.time_ns(), result.seconds
                if not result.ok:
                    rec.update(outcome="failed", error=f"pre-freeze hook {result.error}", hook_output=result.output)
                    log.error("pre_freeze_hook_failed", tag=rec["tag"], error=result.error, output=result.output)
                    return
            if peek() in ("abort", "gone"):
                rec.update(outcome="thawed", error="aborted before the freeze")
                return
            await self._freeze_and_tag(rec, freeze_by - loop.time(), decide, on_frozen)
        finally:
            if pre_ran and self.cfg.post_thaw_hook:
                await self._post_thaw(rec)

    async def _freeze_and_tag(self, rec: dict[str, Any], timeout_s: float, decide: Decide,
                              on_frozen: OnFrozen | None) -> None:
        guard = FreezeGuard(self.rep)
        reporting: asyncio.Task[None] | None = None
        try:
            # frozen at most until the CS's deadline and a grace (for a commit decided just before it)
            hold_s = min(self.cfg.freeze_timeout_s, max(0.0, timeout_s) + COMMIT_GRACE_S)
            if not await guard.acquire(timeout_s, hold_s):
                rec.update(outcome="failed", error=f"writes could not be frozen within {max(0.0, timeout_s):.3g} s")
                return
            rec["t_frozen_ns"] = time.time_ns()
            if on_frozen is not None:
                reporting = asyncio.create_task(on_frozen(), name="bookmark-report-frozen")
            decision = await decide(guard.remaining())
            if decision == "commit" and guard.held:
                self._tag(rec, rec["tag"])
            elif decision == "commit" or decision == "timeout":
                limit = self.cfg.freeze_timeout_s
                rec.update(outcome="expired", error=f"thawed at the freeze deadline ({limit:g} s) before the commit")
            else:
                rec.update(outcome="thawed", error=f"bookmark {decision}ed" if decision == "abort" else "bookmark gone")
        finally:
            guard.release()
            if guard.frozen_at:
                rec["t_thawed_ns"], rec["freeze_s"] = time.time_ns(), guard.held_s
                rec["freeze_ms"] = round(guard.held_s * 1000, 3)
            await cancel_and_wait([reporting] if reporting is not None and not reporting.done() else [])

    async def _post_thaw(self, rec: dict[str, Any]) -> None:
        rec["t_post_start_ns"] = time.time_ns()
        result = await run_hook(self.cfg.post_thaw_hook, self.cfg.hook_timeout_s,
                                _hook_env("post-thaw", rec) | {"DRLAB_BOOKMARK_OUTCOME": str(rec["outcome"])})
        rec["t_post_end_ns"] = time.time_ns()
        if not result.ok:  # the tag (if any) stands: the data was quiesced when it was cut
            rec["post_error"] = f"post-thaw hook {result.error}"
            log.error("post_thaw_hook_failed", tag=rec["tag"], error=result.error, output=result.output)


async def _commit_now(_timeout_s: float) -> str:
    return "commit"


def _hook_env(which: str, rec: dict[str, Any]) -> dict[str, str]:
    return {"DRLAB_HOOK": which, "DRLAB_BOOKMARK_TAG": str(rec["tag"]), "DRLAB_BOOKMARK_KIND": str(rec["kind"]),
            "DRLAB_BOOKMARK_ID": str(rec.get("bookmark_id") or "")}


def _ms(key: str, seconds: float | None) -> dict[str, float]:
    return {} if seconds is None else {key: round(seconds * 1000, 3)}
