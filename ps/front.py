"""The PS's data port behind the threaded TLS front (common/batchfront.py; ``PSConfig.ingest_front``):
its batch route is ps/ingest.py's ``admit_batch`` then ``ingest_batch``."""

from __future__ import annotations

from common import batchfront
from common.frontproto import Limits
from ps.ingest import IngestContext, admit_batch, ingest_batch


class DataFront(batchfront.DataFront):
    """The front and the data app's unix site of one PS, started and stopped together."""

    def __init__(self, ctx: IngestContext, limits: Limits | None = None) -> None:
        route = batchfront.route_of(ctx, admit_batch, ingest_batch, "process server")
        super().__init__(route, ctx.cfg.data_dir, limits or Limits(relay_max_bytes=ctx.cfg.max_batch_bytes))
