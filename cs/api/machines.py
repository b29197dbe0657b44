"""Machines: their machine-consistent recovery points and their failover (every protected disk at
one write number W; docs/PROTOCOL.md, "Machine points and failover")."""

from __future__ import annotations

from aiohttp import web

from common import errors, http
from cs import components, machine_image, machine_ops, machines, planned, validate
from cs.api import paging, spec
from cs.state import state_of

LIST_QUERY = ("limit",)


@spec.route(roles=spec.ADMIN, tags=("machines",),
            query={"limit": {"type": "integer", "minimum": 1, "maximum": machines.MAX_LIST, "default": 100}},
            response=spec.obj({"machine_id": spec.HEX_ID, "latest_wnum": spec.nullable(spec.INT),
                               "named": spec.ANY_OBJ, "disks": spec.array(spec.ANY_OBJ),
                               "items": spec.array(spec.ANY_OBJ)}))
async def get_points(request: web.Request) -> web.Response:
    """The machine's newest ``limit`` consistent points (every protected disk at one W), oldest first.

    Not a paged list: the points are asked of the MTs at each call (a probe job per disk). ``named``:
    what latest, latest-processed, latest-app-consistent, latest-multi-machine and the retention
    window give (cs/pointnames.py)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    return web.json_response(await machines.points(state_of(request), machine_id, list_limit(request)))


def list_limit(request: web.Request) -> int:
    """The ``limit`` of a points listing (the only query parameter; 400 otherwise)."""
    unknown = sorted(set(request.query) - set(LIST_QUERY))
    if unknown:
        raise errors.BadRequest(f"unknown query parameter {unknown[0][:64]!r}; known: {', '.join(LIST_QUERY)}")
    text = request.query.get("limit", "100")
    return paging.bounded_int(text, "limit", machines.MAX_LIST)


POINT = {"type": ["string", "object"]}
JOB = spec.obj({"job_id": spec.HEX_ID})


@spec.route(roles=spec.ADMIN, request=spec.obj({"point": POINT, "mode": {"enum": list(machine_ops.ROUTE_MODES)},
                                                "image": spec.BOOL}, required=()),
            response=JOB, status=202, tags=("machines",))
async def post_failover(request: web.Request) -> web.Response:
    """Fail every protected disk of the machine over to one machine-consistent point (a job).

    ``mode``: ``unplanned`` (the disks go failover-in-progress, then failed-over; commit or change
    the point later) or ``test`` (as POST .../test-failover); without a mode, a failover view only
    (no state change, not an operation: the earlier behaviour). The failover is done once every
    disk's view is made (writable over NBD); ``"image": true`` also writes each disk's image file
    (``image_path`` in the result; takes time in proportion to the data)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    body = await http.read_json(request)
    mode = machine_ops.parse_mode(body, None)
    point = machines.parse_point({k: v for k, v in body.items() if k != "mode"})
    image = validate.flag(body, "image")
    if mode is None:
        return web.json_response({"job_id": await machines.failover(state_of(request), machine_id, point, image)},
                                 status=202)
    op = "test-failover" if mode == "test" else "failover"
    return web.json_response({"job_id": await machine_ops.submit(state_of(request), op, machine_id, point, image)},
                             status=202)


async def _operation(request: web.Request, op: str, *, takes_point: bool) -> web.Response:
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    body = await http.read_json(request)
    image = validate.flag(body, "image") if op in machine_ops.IMAGE_OPS else False
    if takes_point:
        point = machines.parse_point(body)
    elif set(body) - ({"image"} if op in machine_ops.IMAGE_OPS else set()):
        raise errors.BadRequest(f"{op} takes no parameters" + (" but image" if op in machine_ops.IMAGE_OPS else ""))
    else:
        point = "latest"
    return web.json_response({"job_id": await machine_ops.submit(state_of(request), op, machine_id, point, image)},
                             status=202)


@spec.route(roles=spec.ADMIN, request=spec.obj({"point": POINT, "image": spec.BOOL}, required=()), response=JOB,
            status=202, tags=("machines",))
async def post_test_failover(request: web.Request) -> web.Response:
    """Test failover (a job): every disk's view at one machine point; the disks stay protected and
    replication keeps running. The result lists each disk's view id, NBD URL and, with
    ``"image": true``, image path."""
    return await _operation(request, "test-failover", takes_point=True)


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()), response=JOB, status=202, tags=("machines",))
async def post_cleanup(request: web.Request) -> web.Response:
    """Clean up the machine's test failover (a job): its views are dropped. 409 without one."""
    return await _operation(request, "cleanup", takes_point=False)


@spec.route(roles=spec.ADMIN, request=spec.obj({"point": POINT, "image": spec.BOOL}, required=()), response=JOB,
            status=202, tags=("machines",))
async def post_change_point(request: web.Request) -> web.Response:
    """Move the machine's failover (test or unplanned, before commit) to another machine point (a job)."""
    return await _operation(request, "change-point", takes_point=True)


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()), response=JOB, status=202, tags=("machines",))
async def post_commit(request: web.Request) -> web.Response:
    """Commit the machine's unplanned failover (a job): each view is written into its replica; the
    disks are then committed and leave their MT's and PS's settings. 409 unless failed over."""
    return await _operation(request, "commit", takes_point=False)


@spec.route(roles=spec.ADMIN, request=spec.obj({}, required=()), response=JOB, status=202, tags=("machines",))
async def post_image(request: web.Request) -> web.Response:
    """Write the image file of every disk's view of the machine's failover (test, unplanned or
    planned, before commit) as it is now (a job, cs/machine_image.py; ``image_path`` per disk in its
    result). 409 without a failover view or while an operation of the machine is going."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    if await http.read_json(request):
        raise errors.BadRequest("image takes no parameters")
    return web.json_response({"job_id": await machine_image.submit(state_of(request), machine_id)}, status=202)


@spec.route(roles=spec.ADMIN, request=spec.obj({"image": spec.BOOL}, required=()), response=JOB, status=202,
            tags=("machines",))
async def post_planned(request: web.Request) -> web.Response:
    """Planned failover (a job, cs/planned.py): the source stops taking writes, everything it wrote
    drains to the MTs, then every disk fails over to that final point — nothing is lost."""
    return await _operation(request, "planned-failover", takes_point=False)


@spec.route(roles=("agent",), request=spec.obj({"job_id": spec.HEX_ID, "wnum": spec.INT, "error": spec.STR},
                                               required=("job_id",)), response=spec.OK, tags=("machines",))
async def post_shutdown(request: web.Request) -> web.Response:
    """The agent stopped for a planned failover: its final write number (or why it could not)."""
    machine = await components.caller(request, "agent")
    outcome = planned.parse_report(await http.read_json(request, max_bytes=8192))
    await planned.report(state_of(request), machine.component_id, outcome)
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/machines/{machine_id}/points", get_points)
    app.router.add_post("/v1/machines/self/shutdown", post_shutdown)
    app.router.add_post("/v1/machines/{machine_id}/planned-failover", post_planned)
    app.router.add_post("/v1/machines/{machine_id}/failover", post_failover)
    app.router.add_post("/v1/machines/{machine_id}/test-failover", post_test_failover)
    app.router.add_post("/v1/machines/{machine_id}/cleanup-test-failover", post_cleanup)
    app.router.add_post("/v1/machines/{machine_id}/change-point", post_change_point)
    app.router.add_post("/v1/machines/{machine_id}/commit", post_commit)
    app.router.add_post("/v1/machines/{machine_id}/image", post_image)
