"""`drlab machine points` / `drlab disk points`: the table and the named-choices summary (pure rendering)."""

from __future__ import annotations

from deploy import cli, cli_points
from deploy.cli_points import iso, render_disk, render_machine


def point(seq: int, first: int, hi: int, t: int, tags: list[str], types: list[str]) -> dict[str, object]:
    return {"gen": 1, "seq": seq, "wnum_first": first, "wnum_hi": hi, "t_first_ns": t - 1, "t_last_ns": t,
            "accuracy": "exact", "tags": tags, "types": types}


def test_iso_time() -> None:
    assert iso(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z"
    assert iso(None) == "-" and iso(True) == "-"


def test_disk_table_and_summary() -> None:
    app = point(2, 4, 6, 2_000_000_000, ["app:x"], ["crash-consistent", "app-consistent"])
    out = {"disk_id": "d" * 32, "name": "disk0", "machine_id": "m" * 32,
           "items": [point(1, 0, 3, 1_000_000_000, [], ["crash-consistent"]), app],
           "named": {"latest": {"point": {**point(3, 7, 9, 3_000_000_000, [], ["crash-consistent"]), "staged": True},
                                "staged": {"batches": 2, "bytes": 2048, "pending": 1}, "applies_staged_first": True},
                     "latest_processed": {"point": app}, "latest_app_consistent": {"point": app},
                     "latest_multi_machine": {"point": None},
                     "window": {"oldest_t_ns": 1_000_000_000, "newest_t_ns": 3_000_000_000}}}
    text = render_disk(out)
    assert "1970-01-01T00:00:02.000Z" in text and "crash,app" in text and "(none)..3" in text and "4..6" in text
    assert "staged 2 batches, 2048 bytes, 1 to apply (applies them first)" in text
    assert "latest-multi-machine:  -" in text
    assert "window (any time):     1970-01-01T00:00:01.000Z .. 1970-01-01T00:00:03.000Z" in text


def test_machine_table_and_summary() -> None:
    disk_pt = point(2, 4, 6, 2_000_000_000, ["group-app:g"], [])
    item = {"wnum": 6, "wnum_first": 4, "wnum_hi": 6, "t_ns": 2_000_000_000, "accuracy": "exact",
            "tags": ["group-app:g"], "types": ["crash-consistent", "app-consistent", "multi-machine"],
            "disks": {"a" * 32: disk_pt}}
    out = {"machine_id": "m" * 32, "disks": [{"disk_id": "a" * 32, "name": "disk0"}], "items": [item],
           "named": {"latest": {"wnum": 8, "staged": {"batches": 0, "bytes": 0, "pending": 0},
                                "applies_staged_first": False},
                     "latest_processed": {"wnum": 6, "point": item},
                     "latest_app_consistent": {"wnum": 6, "tag": "group-app:g", "point": item},
                     "latest_multi_machine": {"wnum": None, "tag": None, "point": None},
                     "window": {"oldest_wnum": 3, "oldest_t_ns": 1_000_000_000, "newest_wnum": 6}}}
    text = render_machine(out)
    assert "crash,app,multi" in text and "aaaaaaaa:1/2" in text
    assert "latest (lowest RPO):   W=8;" in text and "(applies them first)" not in text
    assert "W=6 wnum 4..6" in text and "[group-app:g]" in text and "(W 3 .. 6)" in text


def test_the_subcommands_parse() -> None:
    args = cli.build_parser().parse_args(["machine", "points", "m1", "--limit", "5", "--json"])
    assert (args.func, args.machine_id, args.limit, args.points_json) == (cli_points.cmd_machine_points, "m1", 5, True)
    args = cli.build_parser().parse_args(["disk", "points", "d1"])
    assert (args.func, args.disk_id, args.limit, args.points_json) == (cli_points.cmd_disk_points, "d1", 20, False)
