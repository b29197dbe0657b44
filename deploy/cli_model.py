"""``drlab site|machine|policy|plan|account|audit|jobs|job``: the CS's data model from the command line,
through the admin API with the admin certificate. An account's password is read from stdin when it
is not a terminal (one line), else prompted twice without echo; never taken from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import errors
from deploy import cli_points

POLICY_FIELDS = ("rpo_threshold_s", "retention_window_s", "app_consistent_interval_s", "crash_consistent_interval_s")


def _api(args: argparse.Namespace, fn: Any) -> Any:
    from deploy.cli import _admin_api

    return _admin_api(args, fn)


def _items(args: argparse.Namespace, items: list[dict[str, Any]], cols: list[str]) -> int:
    from deploy.cli import _print_items

    return _print_items(args, items, cols)


def _all(args: argparse.Namespace, path: str, params: dict[str, Any] | None = None,
         most: int | None = None) -> list[dict[str, Any]]:
    from cs.client import all_pages

    return list(_api(args, lambda api: all_pages(api, path, params, most=most)))


def _show(args: argparse.Namespace, path: str) -> int:
    print(json.dumps(_api(args, lambda api: api.get(path)), indent=2))
    return 0


def _send(args: argparse.Namespace, method: str, path: str, body: Any, done: str) -> int:
    reply = _api(args, lambda api: api.request(method, path, json_body=body))[1]
    print(json.dumps(reply, indent=2) if args.json else done)
    return 0


# -- sites and machines -------------------------------------------------------------------------

def cmd_site_list(args: argparse.Namespace) -> int:
    return _items(args, _all(args, "/v1/sites"), ["name", "kind", "members", "description"])


def cmd_site_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "kind": args.kind, "description": args.description or ""}
    return _send(args, "POST", "/v1/sites", body, f"site {args.name} added ({args.kind})")


def cmd_site_set(args: argparse.Namespace) -> int:
    body = {k: v for k, v in (("kind", args.kind), ("description", args.description)) if v is not None}
    if not body:
        raise errors.BadRequest("give --kind and/or --description")
    return _send(args, "PATCH", f"/v1/sites/{args.name}", body, f"site {args.name} changed")


def cmd_site_remove(args: argparse.Namespace) -> int:
    return _send(args, "DELETE", f"/v1/sites/{args.name}", None, f"site {args.name} removed")


def cmd_site_assign(args: argparse.Namespace) -> int:
    body = {"members": args.ids}
    return _send(args, "POST", f"/v1/sites/{args.name}/members", body, f"{len(args.ids)} member(s) now in {args.name}")


def cmd_machine_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("site", args.site), ("policy", args.policy)) if v is not None}
    items = _all(args, "/v1/machines", params)
    for item in items:
        item["disks"] = len(item["disks"])
    return _items(args, items, ["machine_id", "name", "site", "policy", "protection_state", "disks"])


def cmd_machine_rename(args: argparse.Namespace) -> int:
    body = {"name": args.name}
    return _send(args, "PATCH", f"/v1/machines/{args.machine_id}", body, f"machine {args.machine_id}: {args.name}")


# -- policies -------------------------------------------------------------------------------------

def _policy_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {f: getattr(args, f) for f in POLICY_FIELDS if getattr(args, f) is not None}
    if args.multi_machine is not None:
        body["multi_machine_consistency"] = args.multi_machine == "yes"
    if getattr(args, "low_space_action", None) is not None:
        body["low_space_action"] = args.low_space_action
    return body


def cmd_policy_list(args: argparse.Namespace) -> int:
    return _items(args, _all(args, "/v1/policies"), ["name", *POLICY_FIELDS, "multi_machine_consistency",
                                                     "low_space_action",
                                                     "machines", "groups"])


def cmd_policy_add(args: argparse.Namespace) -> int:
    return _send(args, "POST", "/v1/policies", {"name": args.name, **_policy_body(args)}, f"policy {args.name} added")


def cmd_policy_set(args: argparse.Namespace) -> int:
    body = _policy_body(args)
    if not body:
        raise errors.BadRequest("give at least one field to change")
    return _send(args, "PATCH", f"/v1/policies/{args.name}", body, f"policy {args.name} changed")


def cmd_policy_remove(args: argparse.Namespace) -> int:
    return _send(args, "DELETE", f"/v1/policies/{args.name}", None, f"policy {args.name} removed")


def cmd_policy_assign(args: argparse.Namespace) -> int:
    body = {"machines": args.machine or [], "groups": args.group or []}
    return _send(args, "POST", f"/v1/policies/{args.name}/assign", body, f"assigned to policy {args.name}")


# -- recovery plans -------------------------------------------------------------------------------

def _plan_file(path: str) -> dict[str, Any]:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise errors.BadRequest(f"cannot read the plan file {path}: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.BadRequest("the plan file must hold a JSON object {description?, groups}")
    return body


def cmd_plan_list(args: argparse.Namespace) -> int:
    items = _all(args, "/v1/plans")
    for item in items:
        item["groups"] = len(item["groups"])
    return _items(args, items, ["name", "groups", "machines", "description"])


def cmd_plan_add(args: argparse.Namespace) -> int:
    body = {**_plan_file(args.file), "name": args.name}
    return _send(args, "POST", "/v1/plans", body, f"recovery plan {args.name} added")


def cmd_plan_set(args: argparse.Namespace) -> int:
    body = {k: v for k, v in _plan_file(args.file).items() if k != "name"}
    return _send(args, "PATCH", f"/v1/plans/{args.name}", body, f"recovery plan {args.name} changed")


def cmd_plan_remove(args: argparse.Namespace) -> int:
    return _send(args, "DELETE", f"/v1/plans/{args.name}", None, f"recovery plan {args.name} removed")


# -- accounts -------------------------------------------------------------------------------------

def cmd_account_list(args: argparse.Namespace) -> int:
    return _items(args, _all(args, "/v1/accounts"), ["name", "username", "created_ns", "updated_ns"])


def cmd_account_add(args: argparse.Namespace) -> int:
    from deploy.cli_operators import read_password

    body = {"name": args.name, "username": args.username, "password": read_password()}
    return _send(args, "POST", "/v1/accounts", body, f"account {args.name} added ({args.username})")


def cmd_account_set(args: argparse.Namespace) -> int:
    from deploy.cli_operators import read_password

    body: dict[str, Any] = {"username": args.username} if args.username else {}
    if args.password:
        body["password"] = read_password("New password: ")
    if not body:
        raise errors.BadRequest("give --username and/or --password")
    return _send(args, "PATCH", f"/v1/accounts/{args.name}", body, f"account {args.name} changed")


def cmd_account_remove(args: argparse.Namespace) -> int:
    return _send(args, "DELETE", f"/v1/accounts/{args.name}", None, f"account {args.name} removed")


# -- audit and jobs -------------------------------------------------------------------------------

def cmd_audit(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("entity", args.entity), ("entity_id", args.entity_id), ("actor", args.actor))
              if v is not None}
    items = _all(args, "/v1/audit", params, most=args.limit)
    if not args.json:
        for item in items:
            item["changes"] = ", ".join(f"{k}: {json.dumps(o)} -> {json.dumps(n)}"
                                        for k, (o, n) in sorted(item["changes"].items()))[:160]
    return _items(args, items, ["audit_id", "at_ns", "actor", "entity", "entity_id", "action", "changes"])


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("state", args.state), ("kind", args.kind)) if v is not None}
    items = _all(args, "/v1/jobs", params, most=args.limit)
    if not args.json:
        for item in items:
            item["steps"] = (item.get("steps") or [{}])[-1].get("name", "") if item.get("steps") else ""
    return _items(args, items, ["job_id", "kind", "state", "percent", "steps", "created_ns", "ended_ns", "error"])


def cmd_job(args: argparse.Namespace) -> int:
    return _show(args, f"/v1/jobs/{args.job_id}")


# -- parsers --------------------------------------------------------------------------------------

def _site_parsers(sub: Any) -> None:
    site = sub.add_parser("site", help="sites (on-prem, cloud) and their members").add_subparsers(
        dest="site_command", required=True)
    site.add_parser("list", help="sites").set_defaults(func=cmd_site_list)
    add = site.add_parser("add", help="add a site")
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=("on-prem", "cloud"))
    add.add_argument("--description", default=None)
    add.set_defaults(func=cmd_site_add)
    chg = site.add_parser("set", help="change a site")
    chg.add_argument("name")
    chg.add_argument("--kind", default=None, choices=("on-prem", "cloud"))
    chg.add_argument("--description", default=None)
    chg.set_defaults(func=cmd_site_set)
    rm = site.add_parser("remove", help="remove a site without members")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_site_remove)
    asg = site.add_parser("assign", help="put components or machines (by id) in a site")
    asg.add_argument("name")
    asg.add_argument("ids", nargs="+", metavar="ID")
    asg.set_defaults(func=cmd_site_assign)

    machine = sub.add_parser("machine", help="machines: site, policy, protection state").add_subparsers(
        dest="machine_command", required=True)
    ls = machine.add_parser("list", help="machines")
    ls.add_argument("--site", default=None)
    ls.add_argument("--policy", default=None)
    ls.set_defaults(func=cmd_machine_list)
    show = machine.add_parser("show", help="one machine")
    show.add_argument("machine_id")
    show.set_defaults(func=lambda a: _show(a, f"/v1/machines/{a.machine_id}"))
    ren = machine.add_parser("rename", help="a machine's display name")
    ren.add_argument("machine_id")
    ren.add_argument("name")
    ren.set_defaults(func=cmd_machine_rename)
    cli_points.add_machine_parser(machine)  # drlab machine points


def _policy_fields(p: Any) -> None:
    for field in POLICY_FIELDS:
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=int, default=None, metavar="SECONDS")
    p.add_argument("--multi-machine", default=None, choices=("yes", "no"), help="multi-machine consistency")
    p.add_argument("--low-space-action", default=None, choices=("prune", "pause"),
                   help="when the MT's retention volume runs low: prune the oldest points, or pause and alert")


def _policy_parsers(sub: Any) -> None:
    pol = sub.add_parser("policy", help="replication policies").add_subparsers(dest="policy_command", required=True)
    pol.add_parser("list", help="policies").set_defaults(func=cmd_policy_list)
    show = pol.add_parser("show", help="one policy")
    show.add_argument("name")
    show.set_defaults(func=lambda a: _show(a, f"/v1/policies/{a.name}"))
    add = pol.add_parser("add", help="add a policy (unset fields take the defaults)")
    add.add_argument("name")
    _policy_fields(add)
    add.set_defaults(func=cmd_policy_add)
    chg = pol.add_parser("set", help="change fields of a policy")
    chg.add_argument("name")
    _policy_fields(chg)
    chg.set_defaults(func=cmd_policy_set)
    rm = pol.add_parser("remove", help="remove a policy nothing uses")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_policy_remove)
    asg = pol.add_parser("assign", help="put protected machines and replication groups under a policy")
    asg.add_argument("name")
    asg.add_argument("--machine", action="append", metavar="MACHINE_ID")
    asg.add_argument("--group", action="append", metavar="GROUP")
    asg.set_defaults(func=cmd_policy_assign)


def _plan_parsers(sub: Any) -> None:
    plan = sub.add_parser("plan", help="recovery plans (ordered groups, pre/post actions)").add_subparsers(
        dest="plan_command", required=True)
    plan.add_parser("list", help="recovery plans").set_defaults(func=cmd_plan_list)
    show = plan.add_parser("show", help="one plan")
    show.add_argument("name")
    show.set_defaults(func=lambda a: _show(a, f"/v1/plans/{a.name}"))
    for verb, fn, text in (("add", cmd_plan_add, "add a plan"), ("set", cmd_plan_set, "replace a plan's groups")):
        p = plan.add_parser(verb, help=f"{text} from a JSON file {{description?, groups}}")
        p.add_argument("name")
        p.add_argument("--file", required=True)
        p.set_defaults(func=fn)
    rm = plan.add_parser("remove", help="remove a plan")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_plan_remove)


def _account_parsers(sub: Any) -> None:
    acc = sub.add_parser("account", help="push-install credentials (passwords encrypted at rest)").add_subparsers(
        dest="account_command", required=True)
    acc.add_parser("list", help="accounts (never their passwords)").set_defaults(func=cmd_account_list)
    add = acc.add_parser("add", help="add an account; the password is read from stdin or prompted")
    add.add_argument("name")
    add.add_argument("--username", required=True)
    add.set_defaults(func=cmd_account_add)
    chg = acc.add_parser("set", help="change the username and/or (--password) the password")
    chg.add_argument("name")
    chg.add_argument("--username", default=None)
    chg.add_argument("--password", action="store_true", help="read a new password from stdin or a prompt")
    chg.set_defaults(func=cmd_account_set)
    rm = acc.add_parser("remove", help="remove an account")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_account_remove)


def add_parsers(sub: Any) -> None:
    _site_parsers(sub)
    _policy_parsers(sub)
    _plan_parsers(sub)
    _account_parsers(sub)
    au = sub.add_parser("audit", help="the audit log, newest first")
    au.add_argument("--entity", default=None, help="a table: machines, disks, jobs, alerts, policies, ...")
    au.add_argument("--entity-id", default=None)
    au.add_argument("--actor", default=None, help="e.g. admin:NAME, mt:ID, system")
    au.add_argument("--limit", type=int, default=50)
    au.set_defaults(func=cmd_audit)
    jobs = sub.add_parser("jobs", help="jobs, newest first")
    jobs.add_argument("--state", default=None, choices=("queued", "running", "succeeded", "failed"))
    jobs.add_argument("--kind", default=None)
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=cmd_jobs)
    job = sub.add_parser("job", help="one job with its steps")
    job.add_argument("job_id")
    job.set_defaults(func=cmd_job)
