"""Disks: agents report theirs and their progress; the admin lists, protects, fails over, resyncs and
verifies them (the agent runs a verify and posts its result)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from common import errors, http
from cs import components, disks, jobs, machines, targets, validate, verify
from cs.api import machines as api_machines
from cs.api import paging, spec
from cs.api import release as api_release
from cs.db.models import Disk, Resync
from cs.state import state_of

RESYNC = spec.obj({"resync_id": spec.HEX_ID, "disk_id": spec.HEX_ID, "generation": spec.INT, "reason": spec.STR,
                   "state": spec.STR, "percent": spec.NUM}, required=("disk_id", "generation", "reason", "state"))
DISK = spec.obj({"disk_id": spec.HEX_ID, "machine_id": spec.HEX_ID, "name": spec.STR, "size_bytes": spec.INT,
                 "generation": spec.INT, "ps_id": spec.nullable(spec.HEX_ID), "mt_id": spec.nullable(spec.HEX_ID),
                 "state": spec.STR, "percent": spec.NUM, "last_resync": spec.nullable(RESYNC)},
                required=("disk_id", "machine_id", "name", "size_bytes", "generation", "state"))
REPORTED = spec.obj({"disks": spec.array(spec.obj({"name": spec.STR, "size_bytes": spec.INT}))})
JOB_STARTED = spec.obj({"job_id": spec.HEX_ID})


@spec.route(roles=("agent",), request=REPORTED, response=spec.obj({"disks": spec.array(spec.ANY_OBJ)}),
            tags=("disks",))
async def put_my_disks(request: web.Request) -> web.Response:
    """The agent reports its machine's disks (name, size); answers their ids and generations."""
    machine = await components.caller(request, "agent")
    reported = disks.parse_reported(await http.read_json(request))
    return web.json_response({"disks": await disks.report(state_of(request), machine.component_id, reported)})


@spec.route(roles=("agent",), request=spec.ANY_OBJ, response=spec.OK, tags=("disks",))
async def post_progress(request: web.Request) -> web.Response:
    """The agent reports the replication progress of one of its disks."""
    machine = await components.caller(request, "agent")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    values = disks.parse_progress(await http.read_json(request))
    await disks.progress(state_of(request), machine.component_id, disk_id, values)
    return web.json_response({"ok": True})


@spec.route(roles=("agent", "admin"), request=spec.obj({"reason": spec.STR}, required=()),
            response=spec.obj({"generation": spec.INT}), tags=("disks",))
async def post_resync(request: web.Request) -> web.Response:
    """The agent (its own disk) or the admin (any disk, reason ``user`` by default) asks for a
    resync: a new generation, which the agent's settings then start."""
    ident = http.require_role(request, "agent", "admin")
    machine_id = None if ident.role == "admin" else (await components.caller(request, "agent")).component_id
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    body = await http.read_json(request)
    reason = disks.parse_reason(body, "user" if machine_id is None else "unspecified")
    generation = await disks.resync(state_of(request), machine_id, disk_id, reason)
    return web.json_response({"generation": generation})


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(DISK), tags=("disks",))
async def get_disks(request: web.Request) -> web.Response:
    """Disks and their replication state, by machine and name, a page at a time."""
    http.require_role(request, "admin")
    paging.check_query(request.query, paging.PAGE_PARAMS)
    page = paging.parse(request.query)
    async with state_of(request).db.read() as session:
        rows, nxt = await paging.fetch(session, select(Disk), [Disk.machine_id, Disk.name], page)
        last = await disks.latest_resyncs(session, [d.disk_id for d in rows])
    return web.json_response({"items": [disks.disk_view(d, last.get(d.disk_id)) for d in rows], "next": nxt})


@spec.route(roles=spec.ADMIN, query=spec.PAGE_QUERY, response=spec.page_of(RESYNC), tags=("disks",))
async def get_resyncs(request: web.Request) -> web.Response:
    """The disk's resyncs (reason, mode, progress), newest generation first, a page at a time."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    paging.check_query(request.query, paging.PAGE_PARAMS)
    page = paging.parse(request.query, max_limit=disks.MAX_HISTORY)
    async with state_of(request).db.read() as session:
        if await session.get(Disk, disk_id) is None:
            raise errors.NotFound(f"no disk {disk_id}")
        rows, nxt = await paging.fetch(session, select(Resync).where(Resync.disk_id == disk_id), [Resync.generation],
                                       page, descending=True)
    return web.json_response({"items": [disks.resync_view(r) for r in rows], "next": nxt})


@spec.route(roles=spec.ADMIN, request=spec.obj({"block_bytes": spec.INT, "repair": spec.BOOL}, required=()),
            response=spec.ANY_OBJ, status=202, tags=("disks",))
async def post_verify(request: web.Request) -> web.Response:
    """Start an online verify of the disk against its replica (the agent runs it)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    params = verify.parse_request(await http.read_json(request))
    return web.json_response(await verify.request(state_of(request), disk_id, params), status=202)


@spec.route(roles=spec.ADMIN, response=spec.ANY_OBJ, tags=("disks",))
async def get_verify(request: web.Request) -> web.Response:
    """A verify of the disk: the one named, or the last one; its state and result."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    verify_id = request.match_info.get("verify_id")
    if verify_id is not None:
        verify_id = validate.hex_id(verify_id, "verify_id")
    return web.json_response(await verify.get(state_of(request), disk_id, verify_id))


@spec.route(roles=("agent",), request=spec.ANY_OBJ, response=spec.OK, tags=("disks",))
async def post_verify_result(request: web.Request) -> web.Response:
    """The agent posts the result of a verify it ran."""
    machine = await components.caller(request, "agent")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    verify_id = validate.hex_id(request.match_info["verify_id"], "verify_id")
    body = await http.read_json(request, max_bytes=verify.MAX_RESULT_BYTES)
    await verify.post_result(state_of(request), machine.component_id, disk_id, verify_id, body)
    return web.json_response({"ok": True})


@spec.route(roles=spec.ADMIN, request=spec.obj({"policy": spec.STR, "ps_id": spec.HEX_ID, "mt_id": spec.HEX_ID,
                                                "seed": spec.ANY_OBJ}, required=(), extra=False),
            response=spec.obj({"disks": spec.array(spec.ANY_OBJ)}), tags=("disks",))
async def post_protect(request: web.Request) -> web.Response:
    """Enable protection of every disk of a machine: assign a PS and an MT, start initial replication.

    The body may name the replication policy (``{"policy": name}``, else the default one), the PS
    and MT (``ps_id``, ``mt_id``, else the CS picks by site and load) and seeds (``{"seed": {disk
    name: path}}``: existing disks the MT adopts as replicas, compared by checksum; cs/targets.py)."""
    http.require_role(request, "admin")
    machine_id = validate.hex_id(request.match_info["machine_id"], "machine_id")
    req = targets.parse(await http.read_json(request, max_bytes=65536))
    return web.json_response({"disks": await disks.protect(state_of(request), machine_id, request=req)})


@spec.route(roles=spec.ADMIN, request=spec.obj({"point": {"type": ["string", "object"]}, "image": spec.BOOL},
                                               required=()),
            response=JOB_STARTED, status=202, tags=("disks",))
async def post_failover(request: web.Request) -> web.Response:
    """Fail a disk over to a recovery point (a job; its id is returned). The job succeeds once the
    view is made (writable over NBD); ``"image": true`` also has the MT write its image file
    (``image_path`` in the result; takes time in proportion to the data)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    body = await http.read_json(request)
    point, image = jobs.parse_point(body), validate.flag(body, "image")
    return web.json_response({"job_id": await jobs.failover(state_of(request), disk_id, point, image)}, status=202)


@spec.route(roles=spec.ADMIN, tags=("disks",),
            query={"limit": {"type": "integer", "minimum": 1, "maximum": machines.MAX_LIST, "default": 100}},
            response=spec.obj({"disk_id": spec.HEX_ID, "name": spec.STR, "machine_id": spec.HEX_ID,
                               "named": spec.ANY_OBJ, "items": spec.array(spec.ANY_OBJ)}))
async def get_points(request: web.Request) -> web.Response:
    """The disk's newest ``limit`` recovery points, oldest first, and its named choices.

    Not a paged list: the points are asked of the disk's MT at each call (a probe job)."""
    http.require_role(request, "admin")
    disk_id = validate.hex_id(request.match_info["disk_id"], "disk_id")
    limit = api_machines.list_limit(request)
    return web.json_response(await machines.disk_points(state_of(request), disk_id, limit))


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/machines/self/disks", put_my_disks)
    app.router.add_post("/v1/disks/{disk_id}/progress", post_progress)
    app.router.add_post("/v1/disks/{disk_id}/resync", post_resync)
    app.router.add_get("/v1/disks", get_disks)
    app.router.add_get("/v1/disks/{disk_id}/resyncs", get_resyncs)
    app.router.add_post("/v1/disks/{disk_id}/verify", post_verify)
    app.router.add_get("/v1/disks/{disk_id}/verify", get_verify)
    app.router.add_get("/v1/disks/{disk_id}/verify/{verify_id}", get_verify)
    app.router.add_post("/v1/disks/{disk_id}/verify/{verify_id}", post_verify_result)
    app.router.add_post("/v1/machines/{machine_id}/protect", post_protect)
    app.router.add_post("/v1/disks/{disk_id}/failover", post_failover)
    api_release.add_routes(app)  # disable protection, exclude a disk
    app.router.add_get("/v1/disks/{disk_id}/points", get_points)
