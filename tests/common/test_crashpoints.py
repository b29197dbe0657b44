"""Named crash points (common/crashpoints.py): the spec forms, the n-th hit, refusals, and every
point the code reaches is a listed one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common import crashpoints

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def test_spec_forms_parse_to_component_name_and_count() -> None:
    assert crashpoints.parse("mt.after_replica_write:20") == crashpoints.Spec("mt", "after_replica_write", 20)
    assert crashpoints.parse("after_cache_write", "ps") == crashpoints.Spec("ps", "after_cache_write", 1)
    env = {"DRLAB_MT_CRASH_AT": "before_commit:2", "DRLAB_CRASH_AT": "ps.after_upload", "OTHER": "x"}
    assert sorted(crashpoints.from_env(env)) == ["mt.before_commit:2", "ps.after_upload"]
    assert crashpoints.env_for("mt", "mid_rollback") == {"DRLAB_CRASH_AT": "mt.mid_rollback:1"}


@pytest.mark.parametrize("bad", ["after_replica_write", "mt.no_such_point", "xx.after_cache_write",
                                 "ps.after_cache_write:0", "ps.after_cache_write:two"])
def test_a_bad_spec_is_refused_not_silently_ignored(bad: str) -> None:
    with pytest.raises(ValueError, match="crash point"):
        crashpoints.parse(bad)


CHILD = """
import sys
from common import crashpoints
for i in range(1, 6):
    crashpoints.hit("ps", "after_upload")
    crashpoints.hit(sys.argv[1], sys.argv[2])
    print(i, flush=True)
sys.exit(3)
"""


def run(component: str, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "CRASH_AT" not in k}
    return subprocess.run([sys.executable, "-c", CHILD, component, name], env={**clean, **env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=30, check=False)


def test_the_process_dies_like_sigkill_at_the_nth_hit_of_its_point() -> None:
    proc = run("mt", "before_commit", crashpoints.env_for("mt", "before_commit", 3))
    assert proc.returncode == crashpoints.EXIT_CODE
    assert proc.stdout.split() == ["1", "2"], "died at the 3rd hit, not before, not after"
    legacy = run("mt", "before_commit", {"DRLAB_MT_CRASH_AT": "before_commit:2"})
    assert (legacy.returncode, legacy.stdout.split()) == (crashpoints.EXIT_CODE, ["1"])
    other = run("mt", "before_commit", {"DRLAB_CRASH_AT": "mt.mid_rollback"})
    assert (other.returncode, other.stdout.split()) == (3, ["1", "2", "3", "4", "5"]), "another point: no crash"
    assert run("mt", "before_commit", {}).returncode == 3


def test_a_typo_in_the_environment_fails_at_the_first_point_instead_of_never_crashing() -> None:
    proc = run("mt", "before_commit", {"DRLAB_CRASH_AT": "mt.before_comit"})
    assert proc.returncode == 1 and "unknown" in proc.stderr


def test_every_point_the_code_reaches_is_listed() -> None:
    calls = set()
    for path in [*REPO.glob("mt/*.py"), *REPO.glob("ps/*.py"), *REPO.glob("agent/*.py"), *REPO.glob("cs/**/*.py")]:
        text = path.read_text()
        calls |= {("mt", n) for n in re.findall(r'crash_point\("(\w+)"\)', text)}
        calls |= set(re.findall(r'crashpoints\.hit\("(\w+)", "(\w+)"\)', text))
    listed = {(c, n) for c, names in crashpoints.POINTS.items() for n in names}
    assert calls == listed, "a point reached but not listed (or listed but unreachable)"
    assert {("ps", "after_cache_write"), ("ps", "after_upload"), ("mt", "mid_rollback")} <= calls
