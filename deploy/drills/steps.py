"""A drill's steps: each one timed, with what it verified; a failed step ends the drill."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from common import errors
from deploy import report


class StepFailed(errors.DrlabError):
    """A drill's check did not hold (the step says which)."""

    code = "drill_step_failed"


@dataclass
class Step:
    name: str
    verified: str = ""
    seconds: float = 0.0
    ok: bool = False


@dataclass
class Steps:
    say: Callable[[str], None] = print
    done: list[Step] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[Step]:
        """Time a step; its body sets ``verified``. Any error fails it (and is raised on)."""
        step = Step(name)
        self.done.append(step)
        self.say(f"[{len(self.done)}] {name} ...")
        started = time.monotonic()
        try:
            yield step
            step.ok = True
        except Exception as exc:
            step.verified = step.verified or f"FAILED: {exc}"
            raise
        finally:
            step.seconds = time.monotonic() - started
            mark = "ok" if step.ok else "FAILED"
            self.say(f"    {mark} in {step.seconds:.1f} s: {step.verified}")

    @property
    def ok(self) -> bool:
        return bool(self.done) and all(s.ok for s in self.done)

    def table(self) -> str:
        return report.table(["#", "step", "seconds", "ok", "verified"],
                            [[i + 1, s.name, f"{s.seconds:.1f}", "yes" if s.ok else "NO", s.verified]
                             for i, s in enumerate(self.done)])


def require(condition: bool, what: str) -> None:
    if not condition:
        raise StepFailed(what)
