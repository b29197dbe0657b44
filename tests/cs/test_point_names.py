"""Point types and the named choices of a disk and of a machine (pure: cs/pointnames.py,
cs/machinepoints.py), from MT answers as mt/failover.py ``probe`` gives them."""

from __future__ import annotations

from typing import Any

import pytest

from common import errors
from cs import machinepoints as mp
from cs import pointnames as pn
from cs.machines import after_probe, first_query, parse_point


def pt(seq: int, first: int, hi: int, t: int, accuracy: str = "exact", tags: list[str] | None = None,
       **extra: Any) -> dict[str, Any]:
    return {"gen": 1, "seq": seq, "wnum_first": first, "wnum_hi": hi, "t_first_ns": t - 1, "t_last_ns": t,
            "accuracy": accuracy, "tags": list(tags or []), **extra}


@pytest.mark.parametrize(("tags", "accuracy", "types"), [
    ([], "exact", ["crash-consistent"]),
    (["crash:x"], "approximate", ["crash-consistent"]),
    (["app:x"], "exact", ["crash-consistent", "app-consistent"]),
    (["group-crash:g"], "exact", ["crash-consistent", "multi-machine"]),
    (["group-app:g"], "exact", ["crash-consistent", "app-consistent", "multi-machine"]),
    (["app:x", "group-app:g"], "none", []),  # not a valid point: resyncing
    (["APP:x", "application:y", "noколон"], "exact", ["crash-consistent"]),  # kinds are exact, case-sensitive
])
def test_point_types_come_from_tags_and_accuracy(tags: list[str], accuracy: str, types: list[str]) -> None:
    assert mp.point_types(tags, accuracy) == types
    assert mp.DiskPoint.parse(pt(1, 1, 2, 3, accuracy, tags)).public()["types"] == types


@pytest.mark.parametrize("tags", ["app:x", [1], ["x" * 4097], ["t"] * 65])
def test_malformed_tags_in_an_mt_answer_are_refused(tags: Any) -> None:
    with pytest.raises(errors.BadRequest, match="tags"):
        mp.DiskPoint.parse({**pt(1, 1, 2, 3), "tags": tags})


def test_disk_named_choices_with_staged_batches() -> None:
    answer = {"latest": pt(5, 9, 12, 50), "received": pt(7, 13, 15, 70, staged=True),
              "staged": {"batches": 3, "bytes": 3000, "pending": 2}, "oldest": pt(1, 1, 2, 10),
              "app": [pt(4, 7, 8, 40, tags=["app:a"]), pt(2, 3, 4, 20, tags=["group-app:g"])],
              "multi": [pt(2, 3, 4, 20, tags=["group-app:g"])]}
    named = pn.disk_named(answer)
    latest = named["latest"]
    assert latest["point"]["seq"] == 7 and latest["point"]["staged"] is True
    assert latest["staged"] == {"batches": 3, "bytes": 3000, "pending": 2} and latest["applies_staged_first"]
    assert named["latest_processed"]["point"]["seq"] == 5
    assert latest["point"]["wnum_hi"] >= named["latest_processed"]["point"]["wnum_hi"]
    assert named["latest_app_consistent"]["point"]["seq"] == 4
    assert named["latest_app_consistent"]["point"]["types"] == ["crash-consistent", "app-consistent"]
    assert named["latest_multi_machine"]["point"]["seq"] == 2
    assert named["window"]["oldest"]["seq"] == 1
    assert (named["window"]["oldest_t_ns"], named["window"]["newest_t_ns"]) == (10, 70)


def test_disk_named_choices_of_an_old_mt_and_of_an_empty_disk() -> None:
    named = pn.disk_named({"latest": pt(3, 1, 4, 30)})  # no named fields: nothing staged, no tags known
    assert named["latest"]["point"]["seq"] == 3 and named["latest"]["point"]["staged"] is False
    assert not named["latest"]["applies_staged_first"]
    assert named["latest_app_consistent"]["point"] is None and named["window"]["oldest"] is None
    empty = pn.disk_named({"latest": None, "received": None})
    assert empty["latest"]["point"] is None and empty["latest_processed"]["point"] is None


@pytest.mark.parametrize("answer", [{"staged": {"batches": -1}}, {"staged": [1]}, {"app": {"a": 1}},
                                    {"app": [{"gen": 1}]}, {"staged": {"bytes": True}}])
def test_a_malformed_named_answer_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(errors.BadRequest):
        pn.disk_named({"latest": pt(1, 1, 2, 3), **answer})


def disks_answers() -> dict[str, dict[str, Any]]:
    """Two disks cut together: the bookmark g1 (W 10) on both, g2 (W 20) on disk a only (b was not
    replicating then), app:x (W 14) on both but at different W (not one cut: never a machine point)."""
    return {
        "a": {"latest": pt(6, 17, 22, 60), "received": pt(8, 23, 30, 80), "oldest": pt(1, 1, 3, 10),
              "staged": {"batches": 2, "bytes": 200, "pending": 2},
              "points": [pt(4, 9, 10, 40, tags=["group-app:g1"]), pt(5, 13, 14, 50, tags=["app:x"]),
                         pt(6, 17, 22, 60)],
              "app": [pt(6, 17, 22, 60, tags=["group-app:g2"]), pt(5, 13, 14, 50, tags=["app:x"]),
                      pt(4, 9, 10, 40, tags=["group-app:g1"])],
              "multi": [pt(6, 17, 22, 60, tags=["group-app:g2"]), pt(4, 9, 10, 40, tags=["group-app:g1"])]},
        "b": {"latest": pt(5, 19, 22, 55), "oldest": pt(1, 2, 5, 12),
              "points": [pt(3, 0, 10, 41, tags=["group-app:g1"]), pt(4, 11, 12, 45, tags=["app:x"]),
                         pt(5, 19, 22, 55)],
              "app": [pt(4, 11, 12, 45, tags=["app:x"]), pt(3, 0, 10, 41, tags=["group-app:g1"])],
              "multi": [pt(3, 0, 10, 41, tags=["group-app:g1"])]}}


def test_machine_named_choices() -> None:
    answers = disks_answers()
    windows = {d: mp.Window([mp.DiskPoint.parse(p) for p in a["points"]]) for d, a in answers.items()}
    named = pn.machine_named(answers, windows)
    assert named["latest"]["wnum"] == 22  # b's received is its latest: min(30, 22)
    assert named["latest"]["staged"] == {"batches": 2, "bytes": 200, "pending": 2}
    assert named["latest"]["applies_staged_first"]
    assert named["latest_processed"]["wnum"] == 22
    shown = named["latest_processed"]["point"]
    assert shown["wnum"] == 22 and shown["disks"]["a"]["seq"] == 6 and shown["disks"]["b"]["seq"] == 5
    app = named["latest_app_consistent"]
    assert (app["wnum"], app["tag"]) == (10, "group-app:g1")  # g2 missing on b, app:x at different W
    assert app["point"]["types"] == ["crash-consistent", "app-consistent", "multi-machine"]
    assert app["point"]["tags"] == ["group-app:g1"] and app["point"]["t_ns"] == 41
    assert named["latest_multi_machine"]["wnum"] == 10
    assert (named["window"]["oldest_wnum"], named["window"]["oldest_t_ns"]) == (5, 12)
    # listing items carry types, tags and the write range
    items = [p.public() for p in mp.listing(windows, 10)]
    by_w = {p["wnum"]: p for p in items}
    assert by_w[10]["types"] == ["crash-consistent", "app-consistent", "multi-machine"]
    assert (by_w[10]["wnum_first"], by_w[10]["wnum_hi"]) == (9, 10)
    assert by_w[14]["types"] == ["crash-consistent"]  # a's app:x alone is not the machine's


def test_no_common_tag_is_not_found_and_a_tagged_failover_goes_to_its_w() -> None:
    answers = disks_answers()
    assert pn.tagged_wnum(answers, "latest_app_consistent") == 10
    answers["b"]["multi"] = []
    with pytest.raises(errors.NotFound, match="multi-machine point common to every disk"):
        pn.tagged_wnum(answers, "latest_multi_machine")
    assert pn.common_tagged({}, mp.APP_KINDS) is None


def test_machine_failover_accepts_the_tagged_named_points() -> None:
    for name in ("latest-app-consistent", "latest-multi-machine"):
        assert parse_point({"point": name}) == name
        assert first_query(name) == {"drain": True, "named": True}
    assert after_probe("latest-app-consistent", disks_answers()) == ("failover", 10)
    answers = disks_answers()
    answers["b"]["latest"] = pt(2, 0, 8, 30)  # b has not reached the tag's W: refused as any W past latest
    with pytest.raises(errors.Conflict):
        after_probe("latest-multi-machine", answers)
