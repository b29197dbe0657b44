"""`drlab machine disable`, `drlab disk exclude|include`: their flags and the summary of the job
they follow (pure rendering; the jobs themselves: tests/cs/test_release.py)."""

from __future__ import annotations

from deploy import cli
from deploy.cli_release import summary

M, D0, D1 = "m" * 32, "a" * 32, "b" * 32


def test_parsers_take_wait_and_keep_points() -> None:
    args = cli.build_parser().parse_args(["machine", "disable", M, "--keep-points", "--wait", "--timeout-s", "5"])
    assert (args.machine_id, args.keep_points, args.wait, args.timeout_s) == (M, True, True, 5.0)
    args = cli.build_parser().parse_args(["disk", "exclude", D0])
    assert (args.disk_id, args.keep_points, args.wait) == (D0, False, False)
    args = cli.build_parser().parse_args(["disk", "include", D1, "--wait"])
    assert (args.disk_id, args.wait) == (D1, True)


def test_summary_of_a_succeeded_job() -> None:
    job = {"job_id": "j", "state": "succeeded", "result": {
        "machine_id": M, "keep_points": False, "released": [D1], "protection_state": "enabling",
        "mt_release": {D1: "MT down"},
        "disks": [{"disk_id": D0, "name": "disk0", "state": "enabling"},
                  {"disk_id": D1, "name": "disk1", "state": "unprotected"}]}}
    lines = summary(job)
    assert lines[0] == f"machine {M}: enabling; released 1 disk(s) (points deleted)"
    assert lines[1].split() == [D0, "disk0", "enabling"]
    assert lines[2].split()[:3] == [D1, "disk1", "unprotected"] and lines[2].endswith("(MT: MT down)")


def test_summary_of_a_failed_job() -> None:
    assert summary({"job_id": "j", "state": "failed", "error": "disk x is not protected"}) == [
        "job j failed: disk x is not protected"]
