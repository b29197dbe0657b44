"""schemathesis against the CS's own OpenAPI document, on a throwaway CS (in-process, port 0, real TLS):
no operation answers 5xx, to an operator session (positive and negative cases) or to nobody at all
(then 401/403, or any 4xx on the public allow-list).

Bounded: a few examples per operation and mode, no shrinking, no example database; seeded by the
``seed`` fixture (printed; ``DRLAB_SEED=<n>`` replays a run). A 5xx fails the test with the
operation, the case (as a curl command) and the seed.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from cshelpers import Site, anonymous
from hypothesis import HealthCheck, Phase
from ophelpers import PUBLIC, call
from schemathesis import GenerationMode

from common import tls

PASSWORD = "fuzzing operator password"
OPERATOR = "fuzz-admin"
# Operations left out of the authenticated run, with the reason: they end or change the session that
# the fuzzing runs with, so later cases would test the 401 path only.
EXCLUDED = {
    ("POST", "/v1/logout"): "ends the fuzzing session",
}
SCALE = int(os.environ.get("DRLAB_FUZZ_SCALE", "1"))  # a longer hunt: DRLAB_FUZZ_SCALE=10
EXAMPLES = {GenerationMode.POSITIVE: 3 * SCALE, GenerationMode.NEGATIVE: 2 * SCALE}
ANON_EXAMPLES = 2
BUDGET_S = 60.0 * SCALE


@dataclass
class Run:
    """What one fuzzing pass saw: calls per operation, statuses, the 5xx answers."""

    seed: int
    calls: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def seen(self, status: int) -> None:
        self.calls += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _fuzz_operation(op: Any, mode: GenerationMode, examples: int, session: requests.Session, base: str,
                    run: Run, expect: Any) -> None:
    """``examples`` cases of one operation in one mode; every answer goes through ``expect``."""
    try:
        strategy = op.as_strategy(generation_mode=mode)
    except Exception as exc:  # e.g. nothing negative to generate for this operation
        run.skipped.append(f"{op.method.upper()} {op.path} {mode.value}: {type(exc).__name__}")
        return

    @hypothesis.seed(run.seed)
    @hypothesis.settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck), derandomize=False)
    @hypothesis.given(case=strategy)
    def one(case: Any) -> None:
        if time.monotonic() - run.started > BUDGET_S:
            return
        resp = case.call(base_url=base, session=session, timeout=15, verify=session.verify)
        run.seen(resp.status_code)
        problem = expect(op, resp.status_code)
        if problem:
            run.failures.append(f"{problem}: {op.method.upper()} {op.path} [{mode.value}] -> {resp.status_code} "
                                f"{resp.text[:200]!r}\n    {case.as_curl_command()}")

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        run.skipped.append(f"{op.method.upper()} {op.path} {mode.value}: unsatisfiable")


def fuzz(doc: dict[str, Any], base: str, session: requests.Session, run: Run, *, modes: dict[GenerationMode, int],
         expect: Any, exclude: dict[tuple[str, str], str]) -> None:
    """Every operation of ``doc`` but ``exclude``, in each mode, through ``session`` (blocking: run it in a thread)."""
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]  # an Err (invalid operation) raises: fine in a test
        if (op.method.upper(), op.path) in exclude:
            continue
        for mode, examples in modes.items():
            _fuzz_operation(op, mode, examples, session, base, run, expect)


def _no_5xx(op: Any, status: int) -> str:
    return "5xx" if status >= 500 else ""


def _refused(op: Any, status: int) -> str:
    if status >= 500:
        return "5xx"
    if (op.method.upper(), op.path) in PUBLIC:
        return ""
    return "" if status in (401, 403) else "not refused"


def _session(site: Site, token: str | None) -> requests.Session:
    session = requests.Session()
    session.verify = str(site.env.data_dir / "ca" / "cert.pem")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


async def _operator_token(site: Site) -> str:
    admin = tls.client_context(site.env.admin_files)
    status, body, _ = await call(site.env.url, admin, "POST", "/v1/operators",
                                 {"name": OPERATOR, "role": "admin", "password": PASSWORD})
    assert status == 201, body
    status, body, _ = await call(site.env.url, anonymous(site.env), "POST", "/v1/login",
                                 {"name": OPERATOR, "password": PASSWORD})
    assert status == 200, body
    return str(body["token"])


async def _document(site: Site) -> dict[str, Any]:
    status, doc, _ = await call(site.env.url, anonymous(site.env), "GET", "/v1/openapi.json")
    assert status == 200
    return dict(doc)


def _report(run: Run, what: str) -> None:
    took = time.monotonic() - run.started
    print(f"schemathesis {schemathesis.__version__} {what}: seed={run.seed} calls={run.calls} "
          f"took={took:.1f}s statuses={dict(sorted(run.statuses.items()))} skipped={run.skipped}")
    assert took < BUDGET_S + 15, f"the run is bounded: {took:.1f}s"
    assert not run.failures, f"DRLAB_SEED={run.seed}: " + "\n".join(run.failures)


@pytest.mark.timeout(150 * SCALE)
async def test_no_operation_answers_5xx_to_an_operator(site: Site, seed: int) -> None:
    await site.agent("m1", {"disk0": 1 << 20})  # something to find: a machine, its disk, a PS
    await site.ps()
    token = await _operator_token(site)
    doc = await _document(site)
    run = Run(seed)
    session = _session(site, token)
    try:
        await asyncio.to_thread(fuzz, doc, site.env.url, session, run, modes=EXAMPLES, expect=_no_5xx,
                                exclude=EXCLUDED)
    finally:
        session.close()
    _report(run, "operator session")
    assert run.calls >= 2 * len(doc["paths"])
    assert (await call(site.env.url, anonymous(site.env), "GET", "/v1/whoami", token=token))[0] == 200


@pytest.mark.timeout(120)
async def test_no_operation_answers_5xx_to_nobody(site: Site, seed: int) -> None:
    doc = await _document(site)
    run = Run(seed)
    session = _session(site, None)
    try:
        await asyncio.to_thread(fuzz, doc, site.env.url, session, run,
                                modes={GenerationMode.POSITIVE: ANON_EXAMPLES}, expect=_refused, exclude={})
    finally:
        session.close()
    _report(run, "no credentials")
    assert run.statuses.get(401, 0) >= len(doc["paths"])
