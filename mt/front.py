"""The MT's data port behind the threaded TLS front (common/batchfront.py; ``MTConfig.ingest_front``):
its batch route is mt/ingest.py's ``admit_batch`` then ``ingest_batch``; block hashes and anything
else go to the data app on its private unix socket."""

from __future__ import annotations

from common import batchfront
from common.frontproto import Limits
from mt.ingest import IngestContext, admit_batch, ingest_batch, sealed_limit


class DataFront(batchfront.DataFront):
    """The front and the data app's unix site of one MT, started and stopped together."""

    def __init__(self, ctx: IngestContext, limits: Limits | None = None) -> None:
        route = batchfront.route_of(ctx, admit_batch, ingest_batch, "master target")
        relay = sealed_limit(ctx.cfg.max_batch_bytes)
        super().__init__(route, ctx.cfg.data_dir, limits or Limits(relay_max_bytes=relay))
