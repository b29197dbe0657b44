"""ps/release.py: when the cache of a disk this PS no longer serves may be deleted (pure)."""

from __future__ import annotations

import pytest

from ps import release
from ps.release import Decision, Refusal, decide, refusal_kind

D = "ab" * 16
FENCED = Refusal(release.FENCED, 3)
STALE = Refusal(release.STALE_GENERATION, 3)


def rule(**kw: object) -> Decision:
    args: dict[str, object] = {"settings_applied": True, "served": set(), "drained": set(), "newest_cached_gen": 3}
    args.update(kw)
    return decide(D, **args)  # type: ignore[arg-type]


def test_an_unserved_disk_the_mt_fences_or_no_longer_holds_is_released() -> None:
    assert rule(refusal=FENCED) == Decision(True, release.FENCED)
    assert rule(refusal=Refusal(release.NOT_HELD, 3)) == Decision(True, release.NOT_HELD)


def test_an_old_generation_refusal_releases_only_when_no_newer_batch_is_cached() -> None:
    assert rule(refusal=STALE) == Decision(True, release.STALE_GENERATION)
    assert rule(refusal=STALE, newest_cached_gen=4) == Decision(False, release.UNCONFIRMED)


def test_a_newer_generation_elsewhere_releases() -> None:
    assert rule(current_gen=4) == Decision(True, release.NEWER_GENERATION)
    assert rule(current_gen=3) == Decision(False, release.UNCONFIRMED)


@pytest.mark.parametrize("refusal", [None, FENCED, STALE])
def test_nothing_is_released_before_the_first_settings(refusal: Refusal | None) -> None:
    assert rule(settings_applied=False, refusal=refusal, current_gen=9) == Decision(False, release.SETTINGS_NOT_APPLIED)


@pytest.mark.parametrize("refusal", [None, FENCED, STALE])
def test_a_served_or_drained_disk_keeps_its_cache_whatever_the_mt_says(refusal: Refusal | None) -> None:
    assert rule(served={D}, refusal=refusal, current_gen=9) == Decision(False, release.SERVED)
    assert rule(drained={D}, refusal=refusal, current_gen=9) == Decision(False, release.DRAINING)


def test_merely_missing_from_the_settings_keeps_the_cache() -> None:
    assert rule() == Decision(False, release.UNCONFIRMED)
    assert rule(served={"cd" * 16}) == Decision(False, release.UNCONFIRMED)


HELD = "HTTP 404: disk ab is not held by this master target"


@pytest.mark.parametrize(("status", "code", "message", "kind"), [
    (403, "forbidden", "", release.FENCED), (409, "stale_generation", "", release.STALE_GENERATION),
    (404, "not_found", HELD, release.NOT_HELD), (404, "not_found", "HTTP 404: Not Found", None),
    (404, "bad_request", HELD, None), (409, "checksum_mismatch", "", None), (400, "tampered_seal", "", None),
    (503, "unavailable", "", None), (507, "throttled", "", None), (401, "unauthorized", "", None)])
def test_only_fenced_not_held_and_old_generation_answers_are_refusals(status: int, code: str, message: str,
                                                                      kind: str | None) -> None:
    assert refusal_kind(status, code, message) == kind
